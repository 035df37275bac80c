//! End to end: systemd's notify protocol, with a real datagram socket standing in
//! for systemd. pgcdc started with `NOTIFY_SOCKET` and `WATCHDOG_USEC` sends
//! `WATCHDOG=1` every half period, `READY=1` only once it streams (the slot is
//! active by then), and `STOPPING=1` on SIGTERM. Under `[ha]` a standby is ready
//! once it has read the lease, pings while it stands by, and goes on pinging
//! (with no second `READY=1`) when it takes over.

mod e2e_fixture;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use e2e_fixture::config_toml;
use e2e_fixture::ha::{holder_pid, wait_leader};
use pgcdc_tests::{
    free_port, slot_active_pid, state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc,
};

/// (message, when it arrived)
type Received = Arc<Mutex<Vec<(String, Instant)>>>;

fn count(rx: &Received, message: &str, since: Instant) -> usize {
    rx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(m, at)| m.contains(message) && *at >= since)
        .count()
}

/// Collects what arrives at a datagram socket standing in for systemd's; the
/// receiver hears of each READY=1.
fn fake_systemd(
    socket_path: &std::path::Path,
) -> anyhow::Result<(Received, tokio::sync::mpsc::Receiver<()>)> {
    let socket = tokio::net::UnixDatagram::bind(socket_path)?;
    let received: Received = Arc::default();
    let (ready_tx, ready_rx) = tokio::sync::mpsc::channel::<()>(1);
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
    Ok((received, ready_rx))
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_after_streaming_watchdog_pings_and_stopping() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY)").await?;
    let state = state_dir()?;
    let socket_path = state.path().join("notify.sock");
    let start = Instant::now();
    let (received, mut ready_rx) = fake_systemd(&socket_path)?;
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

#[tokio::test(flavor = "multi_thread")]
async fn an_ha_standby_is_ready_and_pings_and_keeps_pinging_as_the_leader() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY)").await?;
    pg.batch("CREATE DATABASE state").await?;
    let state = state_dir()?;
    let state_url = pg.url().replace("/postgres?", "/state?");
    let config = || -> anyhow::Result<ConfigFile> {
        Ok(ConfigFile::new(&format!(
            "[source]\nurl = \"{}\"\ntables = [\"public.items\"]\n\n[state]\ndir = \"{}\"\n\
             url = \"{state_url}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n\
             [ha]\nenabled = true\nrenew = \"300ms\"\nlease_timeout = \"3s\"\n\n\
             [[sink]]\nname = \"out\"\ntype = \"stdout\"\n",
            pg.url(),
            state.path().display(),
            free_port()?
        ))?)
    };
    // A leads (not under the fake systemd).
    let a_cfg = config()?;
    let a = Pgcdc::spawn(&["run", "--config", &a_cfg.arg()], &[])?;
    let mut procs = vec![a];
    let (_, epoch) = wait_leader(&a_cfg, &mut procs, 0, Duration::from_secs(60)).await?;
    pgcdc_tests::wait_streaming(&pg, &mut procs[0]).await?;

    // B stands by under it: READY=1 while a standby, then pings every 0.5 s.
    let socket_path = state.path().join("notify-b.sock");
    let (received, mut ready_rx) = fake_systemd(&socket_path)?;
    let b_cfg = config()?;
    let socket_env = socket_path.display().to_string();
    let b = Pgcdc::spawn(
        &["run", "--config", &b_cfg.arg()],
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "1000000")],
    )?;
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await;
    ensure!(
        matches!(got, Ok(Some(()))),
        "the standby sent no READY=1 within 30 s; stderr:\n{}",
        b.stderr_tail(20)
    );
    let (holder, _) = e2e_fixture::ha::leader(&a_cfg)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    ensure!(
        holder_pid(&holder) == Some(procs[0].pid()),
        "READY=1 came from the leader, not a standby"
    );
    ensure!(
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(m, _)| m.contains("READY=1") && m.contains("standing by")),
        "READY=1 does not say it stands by"
    );
    let since = Instant::now();
    wait_until_msg(Duration::from_secs(5), "4 pings of the standby", || async {
        count(&received, "WATCHDOG=1", since) >= 4
    })
    .await;
    let took = since.elapsed();
    ensure!(took < Duration::from_millis(2_500), "4 pings took {took:?}");

    // A dies; B takes over and goes on pinging, without a second READY=1.
    procs[0].kill9()?;
    ensure!(procs[0].wait_exit(Duration::from_secs(10)).await.is_some());
    procs[0] = b;
    wait_leader(&b_cfg, &mut procs, epoch, Duration::from_secs(30)).await?;
    pgcdc_tests::wait_streaming(&pg, &mut procs[0]).await?;
    let since = Instant::now();
    wait_until_msg(
        Duration::from_secs(5),
        "4 pings of the new leader",
        || async { count(&received, "WATCHDOG=1", since) >= 4 },
    )
    .await;
    ensure!(
        count(&received, "READY=1", start) == 1,
        "READY=1 sent more than once"
    );
    procs[0].terminate()?;
    wait_until_msg(Duration::from_secs(30), "STOPPING=1 on SIGTERM", || async {
        count(&received, "STOPPING=1", since) == 1
    })
    .await;
    Ok(())
}
