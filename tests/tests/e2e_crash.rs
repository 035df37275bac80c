//! End to end under faults: pgcdc killed with SIGKILL, stopped with SIGTERM,
//! and Postgres restarted or crashed, all in the middle of a load. The stdout
//! sink gets every change at least once; the journal holds each exactly once.

mod e2e_fixture;

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{
    assert_journal_exact, config_toml, create_load_table, parse_lsn, slot_confirmed,
    start_streaming, status_json, Loader, Seen, SocketAddr,
};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};

const ROWS: u64 = 20_000;
const PER_TXN: u64 = 50;
/// 400 transactions at this pace take 8 s or more: faults land mid-load.
const PACE: Duration = Duration::from_millis(20);

struct Setup {
    pg: PgCluster,
    state: tempfile::TempDir,
    cfg: ConfigFile,
}

async fn setup() -> anyhow::Result<Setup> {
    let pg = PgCluster::new().await?;
    create_load_table(&pg, "load").await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &["public.load"], state.path(), ""))?;
    Ok(Setup { pg, state, cfg })
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_and_restart_loses_nothing_and_journals_once() -> anyhow::Result<()> {
    let Setup { pg, state, cfg } = setup().await?;
    let mut seen = Seen::default();
    let mut loader: Option<Loader> = None;
    for round in 1..=3u64 {
        let mut p = start_streaming(&pg, &cfg).await?;
        let loader = loader
            .get_or_insert_with(|| Loader::start(SocketAddr::of(&pg), "load", ROWS, PER_TXN, PACE));
        let target = ROWS * round / 4;
        let before = seen.lines;
        seen.drain_while_waiting(&mut p, &format!("load at {target} rows"), || {
            loader.progress() >= target
        })
        .await?;
        // Some output of this run, so the kill interrupts real work.
        seen.read_until_lines(&mut p, before + 1, Duration::from_secs(60))
            .await?;
        ensure!(
            loader.progress() < ROWS,
            "the load ended before kill {round}"
        );
        p.kill9()?;
        ensure!(p.wait_exit(Duration::from_secs(10)).await.is_some());
        // Lines pgcdc wrote before it died still count as delivered.
        seen.drain_for(&mut p, Duration::from_secs(1)).await?;
    }
    let loader = loader.context("loader")?;
    let mut p = start_streaming(&pg, &cfg).await?;
    loader.finish().await?;
    seen.until_all_keys(&mut p, ROWS, Duration::from_secs(240))
        .await?;
    seen.assert_all_keys(ROWS)?;
    assert_journal_exact(state.path(), ROWS)?;
    let dups = seen.ids.values().filter(|n| **n > 1).count();
    println!(
        "kill -9 x3: {} lines for {ROWS} changes, {dups} ids repeated on stdout",
        seen.lines
    );
    Ok(())
}

/// How Postgres goes away under a running pgcdc.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `pg_ctl restart` (fast shutdown: walsenders get FATAL 57P01).
    Restart,
    /// SIGKILL of the postmaster, then crash recovery.
    Crash,
}

async fn inject(pg: &mut PgCluster, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Restart => pg.restart().await?,
        Fault::Crash => {
            pg.kill9().await?;
            pg.start().await?;
        }
    }
    Ok(())
}

/// Two faults in the middle of a load while one pgcdc process runs throughout.
async fn survives(faults: [Fault; 2]) -> anyhow::Result<()> {
    let Setup { mut pg, state, cfg } = setup().await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let loader = Loader::start(SocketAddr::of(&pg), "load", ROWS, PER_TXN, PACE);
    let mut seen = Seen::default();

    for (i, fault) in faults.into_iter().enumerate() {
        let target = ROWS * (i as u64 + 1) / 3;
        seen.drain_while_waiting(&mut p, &format!("load at {target} rows"), || {
            loader.progress() >= target
        })
        .await?;
        ensure!(loader.progress() < ROWS, "the load ended before {fault:?}");
        inject(&mut pg, fault).await?;
    }

    loader.finish().await?;
    seen.until_all_keys(&mut p, ROWS, Duration::from_secs(240))
        .await?;
    ensure!(!p.has_exited(), "pgcdc must ride out Postgres restarts");
    let log = p.stderr();
    ensure!(
        log.contains("reconnecting"),
        "pgcdc must log that it reconnects; stderr:\n{}",
        p.stderr_tail(30)
    );
    assert_journal_exact(state.path(), ROWS)?;
    let dups = seen.ids.values().filter(|n| **n > 1).count();
    ensure!(
        dups == 0,
        "one pgcdc process delivers each journaled event once; {dups} repeated"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarts_are_survived_without_loss_or_duplicates() -> anyhow::Result<()> {
    survives([Fault::Restart, Fault::Restart]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_crashes_are_survived_without_loss_or_duplicates() -> anyhow::Result<()> {
    survives([Fault::Crash, Fault::Crash]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_and_confirms_what_the_journal_holds() -> anyhow::Result<()> {
    let Setup { pg, state, cfg } = setup().await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let loader = Loader::start(SocketAddr::of(&pg), "load", ROWS, PER_TXN, PACE);
    let mut seen = Seen::default();
    seen.drain_while_waiting(&mut p, "a third of the load", || {
        loader.progress() >= ROWS / 3
    })
    .await?;
    ensure!(loader.progress() < ROWS, "the load ended before SIGTERM");

    p.terminate()?;
    // Keep reading: a blocked stdout pipe must not be what delays the exit.
    let stopping = std::time::Instant::now();
    let mut exit = None;
    while stopping.elapsed() < Duration::from_secs(5) && exit.is_none() {
        seen.drain_for(&mut p, Duration::from_millis(100)).await?;
        exit = p.wait_exit(Duration::from_millis(10)).await;
    }
    let exit = exit.with_context(|| {
        format!(
            "pgcdc still runs 5 s after SIGTERM; stderr:\n{}",
            p.stderr_tail(20)
        )
    })?;
    ensure!(
        exit.code() == Some(0),
        "exit {exit:?}; stderr:\n{}",
        p.stderr_tail(20)
    );
    seen.drain_for(&mut p, Duration::from_millis(500)).await?;

    // The slot was told exactly what the journal holds durably.
    let status = status_json(&cfg).await?;
    let journal_lsn = parse_lsn(
        status["journal"]["confirmed_lsn"]
            .as_str()
            .context("journal.confirmed_lsn")?,
    )?;
    let slot_lsn = parse_lsn(
        status["source"]["slot"]["confirmed_flush_lsn"]
            .as_str()
            .context("slot.confirmed_flush_lsn")?,
    )?;
    ensure!(
        slot_lsn == journal_lsn && slot_confirmed(&pg, "pgcdc").await? == journal_lsn,
        "slot confirmed {slot_lsn:X}, journal confirmed {journal_lsn:X}"
    );
    ensure!(status["source"]["slot"]["active"] == false, "{status}");
    // Not a promise (runners stop with the batch in hand), but worth seeing.
    println!(
        "SIGTERM: journal head {}, sink cursor {}",
        status["journal"]["head"], status["sinks"][0]["cursor"]
    );
    let before_restart = seen.lines;

    let mut p = start_streaming(&pg, &cfg).await?;
    loader.finish().await?;
    seen.until_all_keys(&mut p, ROWS, Duration::from_secs(240))
        .await?;
    assert_journal_exact(state.path(), ROWS)?;
    let dups = seen.ids.values().filter(|n| **n > 1).count();
    println!("SIGTERM: {before_restart} lines before the restart, {dups} ids repeated after it");
    Ok(())
}
