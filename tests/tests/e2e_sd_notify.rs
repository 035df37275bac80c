//! End to end: systemd's notify protocol, with a real datagram socket standing in
//! for systemd. pgcdc started with `NOTIFY_SOCKET` and `WATCHDOG_USEC` sends
//! `WATCHDOG=1` every half period, `READY=1` only once it streams (the slot is
//! active by then), and `STOPPING=1` on SIGTERM.

mod e2e_fixture;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use e2e_fixture::config_toml;
use pgcdc_tests::{slot_active_pid, state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};

/// (message, when it arrived)
type Received = Arc<Mutex<Vec<(String, Instant)>>>;

fn count(rx: &Received, message: &str, since: Instant) -> usize {
    rx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(m, at)| m.contains(message) && *at >= since)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_after_streaming_watchdog_pings_and_stopping() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY)").await?;
    let state = state_dir()?;
    let socket_path = state.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
    let received: Received = Arc::default();
    let start = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    {
        let received = received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let ready = m.contains("READY=1");
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((m, Instant::now()));
                if ready {
                    let _ = ready_tx.try_send(());
                }
            }
        });
    }
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &["public.items"], state.path(), ""))?;
    let socket_env = socket_path.display().to_string();
    let mut p = Pgcdc::spawn(
        &["run", "--config", &cfg.arg()],
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "1000000")],
    )?;

    // READY=1: the slot is held by the streaming reader when it comes.
    let got = tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await;
    ensure!(
        matches!(got, Ok(Some(()))),
        "no READY=1 within 60 s; stderr:\n{}",
        p.stderr_tail(20)
    );
    ensure!(
        slot_active_pid(&pg, "pgcdc").await.is_some(),
        "READY=1 came before the slot was streaming"
    );
    ensure!(
        p.stderr().contains("replication started"),
        "READY=1 before replication started:\n{}",
        p.stderr_tail(20)
    );

    // WATCHDOG=1 every 0.5 s (half of WATCHDOG_USEC).
    let since = Instant::now();
    wait_until_msg(Duration::from_secs(5), "4 watchdog pings", || async {
        count(&received, "WATCHDOG=1", since) >= 4
    })
    .await;
    let took = since.elapsed();
    ensure!(
        took < Duration::from_millis(2_500),
        "4 pings took {took:?}: not every 0.5 s"
    );
    ensure!(
        count(&received, "READY=1", start) == 1,
        "READY=1 sent more than once"
    );

    p.terminate()?;
    wait_until_msg(Duration::from_secs(30), "STOPPING=1 on SIGTERM", || async {
        count(&received, "STOPPING=1", since) == 1
    })
    .await;
    Ok(())
}
