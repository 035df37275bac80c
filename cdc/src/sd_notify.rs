//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`), without a crate: one
//! datagram per message to the socket named by `NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`).
//!
//! ```text
//!  start ─▶ WATCHDOG=1 every WATCHDOG_USEC/2 (from the start: a slow preflight is not a hang)
//!    └─▶ ready ─▶ READY=1                         shutdown ─▶ STOPPING=1
//! ```
//!
//! Ready is the caller's [`Readiness`]: replication started; under `[ha]` also a
//! healthy standby (state database reachable, lease observed), so a standby is
//! a started service too and systemd can supervise it with `Type=notify`. Under
//! `[ha]` one task serves the whole process, standby and leader alike: its
//! pings go on across role changes.
//!
//! The pings come from a task on the engine's runtime, so a wedged runtime stops
//! them and systemd restarts pgcdc. A lost replication connection does not: pgcdc
//! reconnects by itself, and `/readyz` reports it. Without `NOTIFY_SOCKET` nothing
//! is sent; a send that fails is logged once and never stops pgcdc.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio::sync::watch;

/// How often readiness is checked until it is reached.
const READY_POLL: Duration = Duration::from_millis(100);

/// Where and how to notify, from the environment systemd sets.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
    /// A failure was logged already.
    warned: std::sync::atomic::AtomicBool,
}

impl Notifier {
    /// `None` without `NOTIFY_SOCKET`; a socket that cannot be used is logged and ignored.
    pub(crate) fn from_env() -> Option<Notifier> {
        let name = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())?;
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match Self::open(&name, watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET is set but cannot be used; systemd will not hear that pgcdc is ready");
                None
            }
        }
    }

    fn open(name: &str, watchdog: Option<Duration>) -> std::io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => SocketAddr::from_pathname(name)?,
        };
        let socket = UnixDatagram::unbound()?;
        // A full socket buffer (systemd busy) must not block the runtime.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            watchdog,
            warned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, message, "cannot notify systemd (NOTIFY_SOCKET); further failures are not logged");
            }
        }
    }
}

/// Half of `WATCHDOG_USEC` when the watchdog is meant for this process (`WATCHDOG_PID`
/// unset or ours), as sd_watchdog_enabled(3) says.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// When the process is ready, and what `STATUS=` then says (None: not yet).
pub(crate) type Readiness = fn() -> Option<&'static str>;

/// Ready once replication has started (a single pgcdc, or a leader).
pub(crate) fn streaming() -> Option<&'static str> {
    crate::health::health()
        .is_replication_connected()
        .then_some("streaming changes and delivering")
}

/// Sends watchdog pings from now on, `READY=1` once `ready` says so, and
/// `STOPPING=1` when `shutdown` turns true. Returns at once without `NOTIFY_SOCKET`.
pub(crate) async fn run(mut shutdown: watch::Receiver<bool>, ready_when: Readiness) {
    let Some(n) = Notifier::from_env() else {
        return;
    };
    let mut ping = n.watchdog.map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut ready = false;
    let mut poll = tokio::time::interval(READY_POLL);
    loop {
        tokio::select! {
            _ = async { ping.as_mut()?.tick().await; Some(()) }, if ping.is_some() => {
                n.send("WATCHDOG=1");
            }
            _ = poll.tick(), if !ready => {
                if let Some(status) = ready_when() {
                    ready = true;
                    n.send(&format!("READY=1\nSTATUS={status}"));
                    tracing::info!(status, "told systemd pgcdc is ready");
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    n.send("STOPPING=1\nSTATUS=shutting down");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_half_of_usec_for_this_process_only() {
        let d = |u: Option<&str>, p: Option<&str>| watchdog_interval(u, p, 42);
        assert_eq!(d(Some("2000000"), None), Some(Duration::from_secs(1)));
        assert_eq!(d(Some("2000000"), Some("42")), Some(Duration::from_secs(1)));
        assert_eq!(d(Some("2000000"), Some("7")), None);
        assert_eq!(d(None, None), None);
        assert_eq!(d(Some("0"), None), None);
        assert_eq!(d(Some("x"), None), None);
    }

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let n = Notifier::open(&path.display().to_string(), None).unwrap_or_else(|e| panic!("{e}"));
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgcdc-unit-{}", std::process::id());
        let addr =
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let rx = UnixDatagram::bind_addr(&addr).unwrap_or_else(|e| panic!("{e}"));
        let n = Notifier::open(&format!("@{name}"), None).unwrap_or_else(|e| panic!("{e}"));
        n.send("WATCHDOG=1");
        let len = rx.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
