//! End to end: the source fails over. Multi-host URLs find the new primary; a
//! PostgreSQL 17 failover slot survives a promotion with nothing lost; before 17
//! the slot is lost, and `source.on_slot_lost` decides (stop with the reason and
//! the fix, or recreate and resync every table so the sink converges); a
//! different database behind the same URL is refused.

mod e2e_fixture;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e_fixture::view::{create_tables, View};
use e2e_fixture::{
    assert_journal_exact, config_toml, create_load_table, pgcdc_output, spawn_run, stderr_with,
    Seen, SocketAddr,
};
use pgcdc_tests::{metric, state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};

/// `postgres://...@127.0.0.1:P1,127.0.0.1:P2/postgres?...&target_session_attrs=read-write`.
fn multi_host_url(clusters: &[&PgCluster]) -> String {
    let hosts: Vec<String> = clusters
        .iter()
        .map(|c| format!("127.0.0.1:{}", c.port()))
        .collect();
    format!(
        "postgres://postgres@{}/postgres?sslmode=disable&target_session_attrs=read-write",
        hosts.join(",")
    )
}

/// Writes ids `1..=rows` into `load` in small transactions, into whichever of
/// `addrs` accepts writes (the primary, then the promoted standby); idempotent.
struct FailoverLoader {
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl FailoverLoader {
    fn start(addrs: Vec<SocketAddr>, rows: u64, per_txn: u64, pace: Duration) -> FailoverLoader {
        let done = Arc::new(AtomicU64::new(0));
        let progress = done.clone();
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut from = 1u64;
            let mut at = 0usize;
            let mut client: Option<tokio_postgres::Client> = None;
            while from <= rows {
                let to = (from + per_txn - 1).min(rows);
                let sql = format!(
                    "INSERT INTO load SELECT g, 'row ' || g FROM generate_series({from}, {to}) g \
                     ON CONFLICT DO NOTHING"
                );
                let result = match &client {
                    Some(c) => c.batch_execute(&sql).await.map_err(anyhow::Error::from),
                    None => match addrs[at % addrs.len()].connect().await {
                        Ok(c) => {
                            client = Some(c);
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        progress.store(to, Ordering::SeqCst);
                        from = to + 1;
                        tokio::time::sleep(pace).await;
                    }
                    Err(e) => {
                        // Down, or read-only: try the next host.
                        client = None;
                        at += 1;
                        if Instant::now() > deadline {
                            bail!("loader gave up at row {from}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Ok(())
        });
        FailoverLoader { done, task }
    }

    fn progress(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    async fn finish(self) -> anyhow::Result<()> {
        self.task.await.context("loader panicked")?
    }
}

/// Waits until pgcdc streams from `pg` (its walsender holds slot `pgcdc` there).
async fn wait_streaming_from(pg: &PgCluster, p: &mut Pgcdc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if pgcdc_tests::slot_active_pid(pg, "pgcdc").await.is_some() {
            return Ok(());
        }
        ensure!(
            !p.has_exited(),
            "pgcdc exited; stderr:\n{}",
            p.stderr_tail(30)
        );
        ensure!(
            Instant::now() < deadline,
            "pgcdc not streaming from the new primary; stderr:\n{}",
            p.stderr_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ROWS: u64 = 4_000;

/// PostgreSQL 17: a failover slot synchronised to a physical standby; the standby is
/// promoted in the middle of a load and the old primary stopped. pgcdc, given both
/// hosts, continues on the new primary: every row reaches the sink, the journal
/// holds each once.
#[tokio::test(flavor = "multi_thread")]
async fn pg17_failover_slot_survives_promotion_with_nothing_lost() -> anyhow::Result<()> {
    let mut primary = PgCluster::builder().version(17).start().await?;
    create_load_table(&primary, "load").await?;
    let standby = primary
        .start_standby(
            "standby1",
            &[
                ("sync_replication_slots", "on"),
                ("hot_standby_feedback", "on"),
            ],
        )
        .await?;
    // The slot never gets ahead of the standby: what pgcdc journals, the standby has.
    primary
        .execute("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'")
        .await?;
    primary.execute("SELECT pg_reload_conf()").await?;
    let state = state_dir()?;
    let url = multi_host_url(&[&primary, &standby]);
    let cfg = ConfigFile::new(&config_toml(&url, &["public.load"], state.path(), ""))?;

    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "check: {out}{err}");
    ensure!(
        out.contains("sync_replication_slots")
            && out.contains("synchronized_standby_slots = 'standby1'"),
        "check must say what the standby needs and what it sees: {out}"
    );

    let mut p = spawn_run(&cfg)?;
    e2e_fixture::wait_streaming(&primary, &mut p).await?;
    let failover: bool = primary
        .query_scalar("SELECT failover FROM pg_replication_slots WHERE slot_name = 'pgcdc'")
        .await?;
    ensure!(failover, "on 17 the slot is created as a failover slot");

    // The standby's copy of the slot, synchronised by its slot sync worker; a copy still
    // temporary (not yet sync-ready) would be dropped at promotion.
    wait_until_msg(
        Duration::from_secs(60),
        "the slot synchronised to the standby",
        || async {
            match standby.client().await {
                Ok(c) => c
                    .query_opt(
                        "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgcdc' AND synced \
                     AND NOT temporary AND invalidation_reason IS NULL",
                        &[],
                    )
                    .await
                    .ok()
                    .flatten()
                    .is_some(),
                Err(_) => false,
            }
        },
    )
    .await;
    let loader = FailoverLoader::start(
        vec![SocketAddr::of(&primary), SocketAddr::of(&standby)],
        ROWS,
        20,
        Duration::from_millis(10),
    );
    let mut seen = Seen::default();
    seen.drain_while_waiting(&mut p, "half of the load", || loader.progress() >= ROWS / 2)
        .await?;
    ensure!(
        loader.progress() < ROWS,
        "the load ended before the failover"
    );

    // The primary goes away (fast shutdown: the standby receives all its WAL), the
    // standby is promoted, the loader carries on there.
    primary.stop().await?;
    standby.promote().await?;
    wait_streaming_from(&standby, &mut p).await?;
    loader.finish().await?;
    seen.until_all_keys(&mut p, ROWS, Duration::from_secs(120))
        .await?;
    seen.assert_all_keys(ROWS)?;
    ensure!(!p.has_exited(), "pgcdc must ride out the failover");
    assert_journal_exact(state.path(), ROWS)?;
    let log = p.stderr();
    ensure!(!log.contains("slot lost"), "{log}");
    println!(
        "failover on 17: {} lines for {ROWS} rows, {} ids repeated",
        seen.lines,
        seen.ids.values().filter(|n| **n > 1).count()
    );
    Ok(())
}

/// A different database (another system identifier) behind the same URL: refused
/// when pgcdc reconnects to it, and again at start.
#[tokio::test(flavor = "multi_thread")]
async fn another_system_behind_the_same_url_is_refused() -> anyhow::Result<()> {
    let mut first = PgCluster::new().await?;
    let port = first.port();
    first
        .batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &first.url(),
        &["public.permits"],
        state.path(),
        "",
    ))?;
    let mut p = spawn_run(&cfg)?;
    e2e_fixture::wait_streaming(&first, &mut p).await?;
    first
        .execute("INSERT INTO permits VALUES (1, 'new')")
        .await?;
    ensure!(p.next_line(Duration::from_secs(30)).await.is_some());

    first.stop().await?;
    let second = PgCluster::builder().port(port).start().await?;
    second
        .batch("CREATE TABLE permits (id int PRIMARY KEY, status text); CREATE PUBLICATION pgcdc FOR TABLE permits")
        .await?;
    second
        .execute("SELECT pg_create_logical_replication_slot('pgcdc', 'pgoutput')")
        .await?;
    ensure!(
        p.wait_exit(Duration::from_secs(60)).await.is_some(),
        "pgcdc must stop on reconnecting to another database; stderr:\n{}",
        p.stderr_tail(20)
    );
    let log = stderr_with(&p, &["database system", "fix"]).await;
    ensure!(
        log.contains("is database system")
            && log.contains("journal follows system")
            && log.contains("fix:"),
        "{log}"
    );

    let mut p = spawn_run(&cfg)?;
    ensure!(p
        .wait_exit(Duration::from_secs(60))
        .await
        .is_some_and(|s| !s.success()));
    let log = stderr_with(&p, &["written for database system"]).await;
    ensure!(
        log.contains("written for database system") && log.contains("fix:"),
        "{log}"
    );
    Ok(())
}

/// PostgreSQL 15 primary and physical standby, pgcdc on both hosts with `on_slot_lost`
/// as given, streaming `items` (snapshotted). The primary stops; while pgcdc finds no
/// usable host, the standby is promoted and rows are deleted, updated and inserted
/// there before any slot exists on it. Returns the running (or exited) pgcdc.
struct Lost {
    _old: PgCluster,
    standby: PgCluster,
    p: Pgcdc,
    view: View,
    cfg: ConfigFile,
    _state: tempfile::TempDir,
    /// The admin API, `http://127.0.0.1:PORT`.
    admin: String,
}

async fn lose_the_slot(on_slot_lost: &str, stopped: bool) -> anyhow::Result<Lost> {
    let primary = PgCluster::new().await?;
    create_tables(&primary, "items", 200).await?;
    let standby = primary.start_standby("standby1", &[]).await?;
    let state = state_dir()?;
    let url = multi_host_url(&[&primary, &standby]);
    let toml = config_toml(&url, &["public.items", "public.fence"], state.path(), "").replacen(
        "tables = [",
        &format!("snapshot = \"initial\"\non_slot_lost = \"{on_slot_lost}\"\ntables = ["),
        1,
    );
    let port = pgcdc_tests::free_port()?;
    let toml = toml.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let cfg = ConfigFile::new(&toml)?;
    let mut p = spawn_run(&cfg)?;
    e2e_fixture::wait_streaming(&primary, &mut p).await?;
    let mut view = View::of("items");
    view.drain_until(&mut p, Duration::from_secs(60), "the snapshot", |v| {
        v.reads >= 200
    })
    .await?;
    primary
        .execute("UPDATE items SET v = 1 WHERE id <= 50")
        .await?;
    view.fence(&primary, &mut p).await?;
    view.assert_equals_table(&primary).await?;

    let mut primary = primary;
    if stopped {
        p.terminate()?;
        ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());
    }
    primary.stop().await?;
    if !stopped {
        // pgcdc retries with backoff while no host is a primary: the changes below land
        // on the promoted standby before its next attempt.
        let _ = stderr_with(&p, &["no source host is usable"]).await;
    }
    standby.promote().await?;
    standby
        .batch(
            "DELETE FROM items WHERE id <= 20; UPDATE items SET v = 5 WHERE id BETWEEN 21 AND 40; \
             INSERT INTO items SELECT g, 9 FROM generate_series(201, 230) g",
        )
        .await?;
    if stopped {
        p = spawn_run(&cfg)?;
    }
    Ok(Lost {
        _old: primary,
        standby,
        p,
        view,
        cfg,
        _state: state,
        admin: format!("http://127.0.0.1:{port}"),
    })
}

/// Before 17 the slot does not survive a failover. `on_slot_lost = "resync"`: pgcdc
/// recreates it on the new primary and resyncs; rows deleted while no slot existed are
/// deleted at the sink too, so the sink's view converges to the table.
#[tokio::test(flavor = "multi_thread")]
async fn pg15_lost_slot_resync_converges_the_sink_to_the_table() -> anyhow::Result<()> {
    resync_converges(false).await
}

/// The same with pgcdc stopped across the failover: the loss is found at start.
#[tokio::test(flavor = "multi_thread")]
async fn pg15_lost_slot_found_at_start_resync_converges() -> anyhow::Result<()> {
    resync_converges(true).await
}

async fn resync_converges(stopped: bool) -> anyhow::Result<()> {
    // Every field bound: `..` would drop the state dir and the old primary right here.
    let Lost {
        _old,
        standby,
        mut p,
        mut view,
        cfg,
        _state,
        admin,
    } = lose_the_slot("resync", stopped).await?;
    wait_until_msg(
        Duration::from_secs(120),
        "the recovery's resyncs done",
        || async {
            match e2e_fixture::status_json(&cfg).await {
                Ok(s) => {
                    let resyncs: Vec<_> = s["resyncs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["kind"] == "resync")
                        .collect();
                    resyncs.len() == 2 && resyncs.iter().all(|r| r["state"] == "done")
                }
                Err(_) => false,
            }
        },
    )
    .await;
    standby
        .execute("UPDATE items SET v = 6 WHERE id = 100")
        .await?;
    view.fence(&standby, &mut p).await?;
    // Twice: the resync of `fence` itself journals a read of the first fence row,
    // which can end the first wait early.
    view.fence(&standby, &mut p).await?;
    view.assert_equals_table(&standby).await?;
    ensure!(!p.has_exited(), "pgcdc recovers by itself");
    let log = p.stderr();
    ensure!(
        log.contains("replication slot lost") && log.contains("deleting the rows that vanished"),
        "{log}"
    );
    ensure!(
        metric(&admin, "pgcdc_slot_lost_total").await? >= 1.0,
        "the loss is counted"
    );
    Ok(())
}

/// `on_slot_lost = "fail"` (the default): pgcdc stops, saying what happened and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn pg15_lost_slot_fail_stops_with_the_reason_and_the_fix() -> anyhow::Result<()> {
    let lost = lose_the_slot("fail", false).await?;
    let mut p = lost.p;
    ensure!(
        p.wait_exit(Duration::from_secs(90))
            .await
            .is_some_and(|s| !s.success()),
        "pgcdc must stop; stderr:\n{}",
        p.stderr_tail(20)
    );
    let log = stderr_with(&p, &["is missing", "on_slot_lost"]).await;
    ensure!(
        log.contains("replication slot pgcdc is missing")
            && log.contains("failed over to a standby")
            && log.contains("fix: set source.on_slot_lost = \"resync\""),
        "{log}"
    );
    Ok(())
}
