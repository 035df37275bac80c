//! File descriptors: what pgcdc needs against `RLIMIT_NOFILE`.
//!
//! ```text
//!  need = BASE (engine: journal, replication, SQL, resync, admin helpers)
//!       + per sink (its journal handles + HTTP pool / Kafka sockets)
//!  limit (soft; `run` raises it to the hard limit at start)
//!  admin connections = min(256, (limit - need) / 2)  ─▶ the admin API can never
//!                                                        starve the engine of fds
//! ```
//!
//! `pgcdc check` fails and `pgcdc run` refuses to start when the limit is below
//! `need` plus room for `ADMIN_MIN_CONNECTIONS` admin connections, naming the limit and the fix.
//! The counts are estimates with headroom, measured on a running pgcdc.
//! Any error that is EMFILE is worded the same way by [`explain`].

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::config::{Config, SinkKind};

/// The engine without sinks: stdio, the runtime, the journal writer, the audit writer,
/// the admin API's journal handle, the replication and SQL connections (reader, slot
/// poller, resync driver, at most [`crate::admin::STATUS_CONCURRENCY`] status
/// requests), the resync driver's and scheduler's journal handles, and headroom.
pub(crate) const BASE: u64 = 64;
/// One SQLite connection to the journal (the database and its WAL file).
const JOURNAL_HANDLE: u64 = 2;
/// Connections the admin API must be able to take for pgcdc to start.
pub(crate) const ADMIN_MIN_CONNECTIONS: u64 = 16;
/// The most concurrent admin API connections, whatever the limit.
pub(crate) const ADMIN_MAX_CONNECTIONS: u64 = 256;

/// The descriptors one sink needs.
fn per_sink(kind: &SinkKind) -> u64 {
    // The runner's two journal handles (reads and cursor writes).
    let runner = 2 * JOURNAL_HANDLE;
    match kind {
        SinkKind::Stdout => runner,
        // One connection per request in flight, plus DNS and an OAuth2 token client.
        SinkKind::Http(http) => runner + http.http().concurrency as u64 + 4,
        // librdkafka: per broker a socket and a wake-up pipe, for the producer and the
        // progress read-back consumer, plus each client's own queues.
        SinkKind::Kafka(kafka) => {
            let brokers = kafka.brokers.split(',').filter(|b| !b.trim().is_empty());
            runner + 12 + 6 * brokers.count() as u64
        }
    }
}

/// What pgcdc needs for this config, with the admin API's connections left out.
pub(crate) fn engine_need(config: &Config) -> u64 {
    BASE + config.sink.iter().map(|s| per_sink(&s.kind)).sum::<u64>()
}

/// The soft and hard `RLIMIT_NOFILE`.
pub(crate) fn limits() -> Option<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).ok()
}

/// Raises the soft limit to the hard one (as most servers do at start); returns
/// (before, after), or `None` when the limits cannot be read or changed.
pub fn raise_soft_limit() -> Option<(u64, u64)> {
    let (soft, hard) = limits()?;
    if soft >= hard {
        return Some((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some((soft, hard))
}

/// The fix, for messages.
fn fix(want: u64) -> String {
    format!(
        "raise it to at least {want}: `ulimit -n {want}` in the shell that starts pgcdc, \
         LimitNOFILE={want} in its systemd unit, or the container runtime's nofile ulimit"
    )
}

/// Whether `limit` (what `run` will have: the hard limit) suffices; `Ok` says how
/// much is used, `Err` names the limit and the fix. `soft` is only reported.
pub(crate) fn judge(config: &Config, soft: u64, hard: u64) -> Result<String, String> {
    let need = engine_need(config);
    let want = need + 2 * ADMIN_MIN_CONNECTIONS;
    let sinks = config.sink.len();
    if hard < want {
        return Err(format!(
            "the open-files limit is {hard} but pgcdc needs about {want} for {sinks} sink(s) \
             ({BASE} for the engine, {} for the sinks, {} for the admin API); {}",
            need - BASE,
            2 * ADMIN_MIN_CONNECTIONS,
            fix(want)
        ));
    }
    let raised = if soft < hard {
        format!(" (`pgcdc run` raises the soft limit {soft} to the hard limit at start)")
    } else {
        String::new()
    };
    Ok(format!(
        "limit {hard}, pgcdc needs about {want} for {sinks} sink(s); admin API takes up to {} \
         connections{raised}",
        admin_connections(need, hard)
    ))
}

/// The admin API's connection cap for a limit: half of what the engine leaves, so
/// admin requests (each may open a journal handle or a SQL connection) cannot take
/// the descriptors the engine needs.
pub(crate) fn admin_connections(need: u64, limit: u64) -> u64 {
    (limit.saturating_sub(need) / 2).clamp(1, ADMIN_MAX_CONNECTIONS)
}

/// The admin API's connection cap for this config and the current limit.
pub(crate) fn admin_connection_cap(config: &Config) -> usize {
    let limit = limits().map_or(1024, |(soft, _)| soft);
    usize::try_from(admin_connections(engine_need(config), limit)).unwrap_or(1)
}

/// `run`: refuses when the (already raised) limit is too low for the config.
pub(crate) fn ensure_enough(config: &Config) -> anyhow::Result<()> {
    let Some((soft, _)) = limits() else {
        return Ok(());
    };
    // After `raise_soft_limit` the soft limit is what pgcdc has.
    judge(config, soft, soft)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("not enough file descriptors: {e}"))
}

/// Whether the process is out of descriptors: listing its own fds fails with EMFILE
/// (or the listing shows it at the limit).
fn exhausted() -> bool {
    let limit = limits().map_or(u64::MAX, |(soft, _)| soft);
    match std::fs::read_dir("/proc/self/fd") {
        Err(e) => is_emfile(&e),
        // The listing's own descriptor is among them.
        Ok(dir) => dir.count() as u64 >= limit,
    }
}

/// EMFILE or ENFILE.
pub(crate) fn is_emfile(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// An error message, with the fd limit and the fix added when the cause is running
/// out of descriptors: the OS's "Too many open files", or SQLite's "unable to open
/// database file" while the process is at its limit.
pub fn explain(message: String) -> String {
    let emfile = message.contains("Too many open files") || message.contains("os error 24");
    // SQLite does not pass the errno on; the process's own state tells.
    let sqlite_emfile = message.contains("unable to open database file") && exhausted();
    if !(emfile || sqlite_emfile) {
        return message;
    }
    let limit = limits().map_or_else(|| "?".to_string(), |(soft, _)| soft.to_string());
    format!("{message}: too many open files (limit {limit}): raise it with ulimit -n / LimitNOFILE")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sinks: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://u@127.0.0.1:1/db\"\ntables = [\"public.t\"]\n\
             [state]\ndir = \"/tmp/x\"\n{sinks}"
        );
        Config::parse(&text, std::path::Path::new("t.toml"), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn need_grows_with_sinks_and_the_limit_is_named() {
        let one = config("[[sink]]\nname = \"a\"\ntype = \"stdout\"\ntables = [\"public.t\"]\n");
        let many: String = (0..400)
            .map(|i| {
                format!(
                    "[[sink]]\nname = \"s{i}\"\ntype = \"http\"\ntables = [\"public.t\"]\n\
                     url = \"http://127.0.0.1:1/\"\n"
                )
            })
            .collect();
        let many = config(&many);
        assert!(engine_need(&many) > 400 * 10);
        assert!(judge(&one, 1024, 1024).is_ok());
        let Err(err) = judge(&many, 1024, 1024) else {
            panic!("400 http sinks fit in 1024 descriptors")
        };
        assert!(err.contains("limit is 1024"), "{err}");
        assert!(
            err.contains("ulimit -n") && err.contains("LimitNOFILE"),
            "{err}"
        );
        let ok = judge(&one, 256, 4096).unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.contains("raises the soft limit 256"), "{ok}");
    }

    #[test]
    fn admin_cap_leaves_the_engine_its_descriptors() {
        assert_eq!(admin_connections(100, 1_000_000), ADMIN_MAX_CONNECTIONS);
        assert_eq!(admin_connections(100, 200), 50);
        assert_eq!(admin_connections(300, 200), 1);
    }

    #[test]
    fn emfile_messages_name_the_limit_and_the_fix() {
        let m = explain("accept: Too many open files (os error 24)".to_string());
        assert!(m.contains("too many open files (limit "), "{m}");
        assert!(m.contains("ulimit -n / LimitNOFILE"), "{m}");
        let other = explain("connection refused".to_string());
        assert_eq!(other, "connection refused");
    }
}
