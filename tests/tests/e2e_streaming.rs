//! End to end: large transactions streamed before they commit
//! (`source.streaming = true`, pgoutput protocol v2). The test clusters set
//! `logical_decoding_work_mem = 64kB`, so any transaction of more than a few
//! hundred rows is streamed in blocks; pgcdc stages them in the state store
//! and journals them at their commit.
//!
//! Each test checks that the slot really streamed (`stream_bytes > 0`) and
//! spilled nothing (`spill_bytes = 0`), so each fails without the feature; and
//! what the feature promises: every change once, in order and in commit order,
//! nothing of an uncommitted or aborted (sub)transaction delivered, a kill -9
//! in the middle of a streamed transaction losing and doubling nothing.

mod e2e_fixture;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{assert_journal_exact, config_toml, journal, pgcdc_output, start_streaming};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

/// Rows of the large transaction in the happy path.
const LARGE: i64 = 60_000;

/// A cluster whose transactions stream past 64 kB of changes, with table `t`.
async fn cluster(major: u32) -> anyhow::Result<PgCluster> {
    cluster_with(major, &[]).await
}

/// [`cluster`] with more server settings.
async fn cluster_with(major: u32, settings: &[(&str, &str)]) -> anyhow::Result<PgCluster> {
    let mut builder = PgCluster::builder()
        .version(major)
        .setting("logical_decoding_work_mem", "64kB");
    for (name, value) in settings {
        builder = builder.setting(name, value);
    }
    let pg = builder.start().await?;
    pg.batch("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await?;
    Ok(pg)
}

/// Config capturing `t` to the stdout sink, with `source.streaming = true`.
fn config(pg: &PgCluster, state: &Path) -> anyhow::Result<ConfigFile> {
    let text = config_toml(&pg.url(), &["public.t"], state, "").replacen(
        "[source]\n",
        "[source]\nstreaming = true\n",
        1,
    );
    Ok(ConfigFile::new(&text)?)
}

/// `pg_stat_replication_slots` for pgcdc's slot: (spill_bytes, stream_bytes); zeros
/// before the server has reported any.
async fn slot_stats(pg: &PgCluster) -> anyhow::Result<(i64, i64)> {
    let row = pg
        .client()
        .await?
        .query_opt(
            "SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots \
             WHERE slot_name = 'pgcdc'",
            &[],
        )
        .await?;
    Ok(row.map_or((0, 0), |r| (r.get(0), r.get(1))))
}

/// Waits until the server reports streaming for the slot, then checks it spilled nothing.
async fn assert_streamed_not_spilled(pg: &PgCluster) -> anyhow::Result<()> {
    wait_until_msg(
        Duration::from_secs(30),
        "pg_stat_replication_slots.stream_bytes > 0 for slot pgcdc",
        || async { slot_stats(pg).await.is_ok_and(|(_, stream)| stream > 0) },
    )
    .await;
    let (spill, stream) = slot_stats(pg).await?;
    eprintln!("slot pgcdc: spill_bytes {spill}, stream_bytes {stream}");
    ensure!(spill == 0, "the server spilled {spill} bytes to disk");
    Ok(())
}

/// Messages of top-level transaction `xid` staged in the store (pgcdc may be running).
fn staged(state: &Path, xid: u32) -> anyhow::Result<usize> {
    Ok(journal(state)?.staged(xid, -1, 10, usize::MAX)?.len())
}

/// A connection with a transaction open; returns it and its top-level xid.
async fn open_transaction(pg: &PgCluster) -> anyhow::Result<(tokio_postgres::Client, u32)> {
    let c = pg.client().await?;
    c.batch_execute("BEGIN").await?;
    let xid: i64 = c
        .query_one("SELECT (txid_current() % 4294967296)::int8", &[])
        .await?
        .get(0);
    Ok((c, u32::try_from(xid)?))
}

/// Opens a transaction, inserts ids `from..=to` into `t` in it, and waits until
/// pgcdc has staged part of it; the transaction stays open.
async fn stage_open_transaction(
    pg: &PgCluster,
    state: &Path,
    from: i64,
    to: i64,
) -> anyhow::Result<(tokio_postgres::Client, u32)> {
    let (c, xid) = open_transaction(pg).await?;
    c.batch_execute(&insert(from, to)).await?;
    wait_until_msg(
        Duration::from_secs(30),
        "pgcdc staged part of the open transaction",
        || async { staged(state, xid).is_ok_and(|n| n > 0) },
    )
    .await;
    Ok((c, xid))
}

/// Inserts ids `from..=to` into `t`.
fn insert(from: i64, to: i64) -> String {
    format!("INSERT INTO t SELECT g, 'row ' || g FROM generate_series({from}, {to}) g")
}

/// The next `n` events on stdout as (op, id, lsn, xid).
async fn next_changes(
    p: &mut Pgcdc,
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<(String, i64, String, i64)>> {
    let lines = p.collect_lines(n, within).await;
    ensure!(
        lines.len() == n,
        "expected {n} events, got {}\nstderr:\n{}",
        lines.len(),
        p.stderr_tail(30)
    );
    lines
        .iter()
        .map(|l| {
            let e: Value =
                serde_json::from_str(l).with_context(|| format!("not JSON: {l:.200}"))?;
            let id = e["key"]["id"]
                .as_i64()
                .with_context(|| format!("no key: {l:.200}"))?;
            Ok((
                e["op"].as_str().unwrap_or_default().to_string(),
                id,
                e["lsn"].as_str().unwrap_or_default().to_string(),
                e["xid"].as_i64().unwrap_or(-1),
            ))
        })
        .collect()
}

/// Inserts `id` in its own transaction and checks it is the next event: nothing
/// else (a doubled or an aborted change) came before it.
async fn assert_next_is_marker(pg: &PgCluster, p: &mut Pgcdc, id: i64) -> anyhow::Result<()> {
    pg.batch(&insert(id, id)).await?;
    let next = next_changes(p, 1, Duration::from_secs(60)).await?;
    ensure!(
        next[0].0 == "insert" && next[0].1 == id,
        "expected the marker insert {id} next, got {:?}",
        next[0]
    );
    Ok(())
}

/// Checks `got` are inserts of exactly `ids`, in order.
fn assert_inserts(
    got: &[(String, i64, String, i64)],
    ids: impl Iterator<Item = i64>,
) -> anyhow::Result<()> {
    for (i, (want, (op, id, _, _))) in ids.zip(got).enumerate() {
        ensure!(
            op == "insert" && *id == want,
            "event {i}: expected insert {want}, got {op} {id}"
        );
    }
    Ok(())
}

/// One transaction of [`LARGE`] rows, streamed: every row once, in order, all with the
/// transaction's commit LSN; the staging is emptied afterwards, and the connection
/// never dropped (a reconnect would make the server decode the transaction again,
/// spilling it).
async fn large_transaction(major: u32) -> anyhow::Result<()> {
    let pg = cluster(major).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let started = std::time::Instant::now();
    pg.batch(&insert(1, LARGE)).await?;
    let got = next_changes(&mut p, LARGE as usize, Duration::from_secs(120)).await?;
    eprintln!(
        "PostgreSQL {major}: {LARGE} streamed rows delivered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_inserts(&got, 1..=LARGE)?;
    let (lsn, xid) = (&got[0].2, got[0].3);
    ensure!(
        got.iter().all(|c| &c.2 == lsn && c.3 == xid),
        "the transaction's events carry different commit LSNs or xids"
    );
    assert_next_is_marker(&pg, &mut p, LARGE + 1).await?;
    assert_streamed_not_spilled(&pg).await?;
    let xid = u32::try_from(xid)?;
    wait_until_msg(
        Duration::from_secs(30),
        "the committed transaction's staging is discarded",
        || async { staged(state.path(), xid).is_ok_and(|n| n == 0) },
    )
    .await;
    assert_journal_exact(state.path(), LARGE as u64 + 1)?;
    let log = p.stderr();
    ensure!(
        !log.contains("replication connection lost"),
        "the replication connection dropped:\n{}",
        p.stderr_tail(30)
    );
    p.terminate()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transaction_is_streamed_and_delivered_once_in_order() -> anyhow::Result<()> {
    large_transaction(15).await
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transaction_streamed_on_postgres_14() -> anyhow::Result<()> {
    large_transaction(14).await
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transaction_streamed_on_postgres_18() -> anyhow::Result<()> {
    large_transaction(18).await
}

/// A streamed transaction rolled back after some of it was staged delivers nothing,
/// and its staging goes.
#[tokio::test(flavor = "multi_thread")]
async fn aborted_streamed_transaction_delivers_nothing() -> anyhow::Result<()> {
    let pg = cluster(15).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let (c, xid) = stage_open_transaction(&pg, state.path(), 1, 50_000).await?;
    c.batch_execute("ROLLBACK").await?;
    wait_until_msg(
        Duration::from_secs(30),
        "the aborted transaction's staging is discarded",
        || async { staged(state.path(), xid).is_ok_and(|n| n == 0) },
    )
    .await;
    assert_next_is_marker(&pg, &mut p, 1_000_000).await?;
    assert_streamed_not_spilled(&pg).await?;
    assert_journal_exact(state.path(), 1)?;
    p.terminate()?;
    Ok(())
}

/// A streamed transaction with a savepoint rolled back: exactly the rest is
/// delivered, in order.
#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_savepoint_in_streamed_transaction_delivers_the_rest() -> anyhow::Result<()> {
    let pg = cluster(15).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let (c, xid) = open_transaction(&pg).await?;
    c.batch_execute(&insert(1, 20_000)).await?;
    c.batch_execute("SAVEPOINT a").await?;
    c.batch_execute(&insert(20_001, 40_000)).await?;
    // A nested savepoint inside the one rolled back goes with it.
    c.batch_execute("SAVEPOINT b").await?;
    c.batch_execute(&insert(40_001, 45_000)).await?;
    c.batch_execute("RELEASE SAVEPOINT b").await?;
    wait_until_msg(
        Duration::from_secs(30),
        "pgcdc staged the savepoint's rows",
        || async { staged(state.path(), xid).is_ok_and(|n| n > 0) },
    )
    .await;
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await?;
    c.batch_execute(&insert(45_001, 60_000)).await?;
    // A savepoint kept is delivered.
    c.batch_execute("SAVEPOINT c").await?;
    c.batch_execute(&insert(60_001, 61_000)).await?;
    c.batch_execute("RELEASE SAVEPOINT c; COMMIT").await?;

    let want: Vec<i64> = (1..=20_000).chain(45_001..=61_000).collect();
    let got = next_changes(&mut p, want.len(), Duration::from_secs(120)).await?;
    assert_inserts(&got, want.iter().copied())?;
    assert_next_is_marker(&pg, &mut p, 1_000_000).await?;
    assert_streamed_not_spilled(&pg).await?;
    assert_journal_exact(state.path(), want.len() as u64 + 1)?;
    p.terminate()?;
    Ok(())
}

/// kill -9 while a streamed transaction is staged and still open: nothing of it was
/// delivered; after a restart it is streamed again, and at its commit every row
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_in_the_middle_of_a_streamed_transaction() -> anyhow::Result<()> {
    const ROWS: i64 = 60_000;
    let pg = cluster(15).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // A change before, so the slot has something journaled and confirmed.
    pg.batch(&insert(0, 0)).await?;
    ensure!(next_changes(&mut p, 1, Duration::from_secs(60)).await?[0].1 == 0);

    let (c, xid) = stage_open_transaction(&pg, state.path(), 1, ROWS / 2).await?;
    p.kill9()?;
    ensure!(p.wait_exit(Duration::from_secs(10)).await.is_some());
    let early = p.collect_lines(1_000, Duration::from_secs(1)).await;
    ensure!(
        early.is_empty(),
        "pgcdc delivered {} events of a transaction not yet committed, e.g. {:.200}",
        early.len(),
        early[0]
    );

    // More of it while pgcdc is down; then pgcdc again, while it is still open.
    c.batch_execute(&insert(ROWS / 2 + 1, ROWS)).await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    wait_until_msg(
        Duration::from_secs(30),
        "the restarted pgcdc staged the open transaction again",
        || async { staged(state.path(), xid).is_ok_and(|n| n > 0) },
    )
    .await;
    // Negative check: after the staging is seen, nothing of it may be on stdout.
    let early = p.collect_lines(1, Duration::from_millis(500)).await;
    ensure!(
        early.is_empty(),
        "pgcdc delivered an event of an open transaction after its restart: {:.200}",
        early[0]
    );
    c.batch_execute("COMMIT").await?;

    let got = next_changes(&mut p, ROWS as usize, Duration::from_secs(120)).await?;
    assert_inserts(&got, 1..=ROWS)?;
    assert_next_is_marker(&pg, &mut p, ROWS + 1).await?;
    assert_streamed_not_spilled(&pg).await?;
    assert_journal_exact(state.path(), ROWS as u64 + 2)?;
    p.terminate()?;
    Ok(())
}

/// While a streamed transaction is open, the server's keepalives do not move the
/// slot's confirmed position: after a reconnect the server could no longer stream
/// the part before that position and would spill it to disk. Once it commits, the
/// position moves on.
///
/// The hold starts with the transaction's first block: before it, pgcdc knows
/// nothing of the transaction, and a keepalive sent while the server decodes its
/// first 64 kB (`logical_decoding_work_mem`) may already carry a position inside
/// it (Postgres's own subscriber confirms such a position too). So the test
/// checks the part written after a block has arrived.
#[tokio::test(flavor = "multi_thread")]
async fn keepalives_do_not_confirm_past_an_open_streamed_transaction() -> anyhow::Result<()> {
    // Keepalives asking for a reply after 1 s of silence.
    let pg = cluster_with(15, &[("wal_sender_timeout", "2s")]).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(&insert(0, 0)).await?;
    ensure!(next_changes(&mut p, 1, Duration::from_secs(60)).await?[0].1 == 0);

    let (c, _) = stage_open_transaction(&pg, state.path(), 1, 5_000).await?;
    let staged_at: String = pg.query_scalar("SELECT pg_current_wal_lsn()::text").await?;
    c.batch_execute(&insert(5_001, 10_000)).await?;
    let passed = || async {
        pg.query_scalar::<bool>(&format!(
            "SELECT COALESCE(confirmed_flush_lsn > '{staged_at}'::pg_lsn, false) \
             FROM pg_replication_slots WHERE slot_name = 'pgcdc'"
        ))
        .await
        .unwrap_or(false)
    };
    // Silence: a keepalive a second, each answered. Without the hold the slot
    // passes the second insert's start within about two of them.
    for _ in 0..12 {
        ensure!(
            !passed().await,
            "the slot was confirmed past a part of the open streamed transaction \
             written after its first block arrived ({staged_at})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.batch_execute("COMMIT").await?;
    let got = next_changes(&mut p, 10_000, Duration::from_secs(120)).await?;
    assert_inserts(&got, 1..=10_000)?;
    wait_until_msg(
        Duration::from_secs(30),
        "the slot confirmed past the committed transaction",
        passed,
    )
    .await;
    assert_streamed_not_spilled(&pg).await?;
    p.terminate()?;
    Ok(())
}

/// Two streamed transactions open at once, interleaved with small ones committed
/// meanwhile: everything arrives in commit order.
#[tokio::test(flavor = "multi_thread")]
async fn interleaved_streamed_and_small_transactions_keep_commit_order() -> anyhow::Result<()> {
    let pg = cluster(15).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let (big, _) = open_transaction(&pg).await?;
    let (other, _) = open_transaction(&pg).await?;
    big.batch_execute(&insert(1, 15_000)).await?;
    pg.batch(&insert(1_000_001, 1_000_001)).await?;
    other.batch_execute(&insert(2_000_001, 2_015_000)).await?;
    big.batch_execute(&insert(15_001, 30_000)).await?;
    pg.batch(&insert(1_000_002, 1_000_002)).await?;
    big.batch_execute("UPDATE t SET v = 'updated' WHERE id <= 10")
        .await?;
    other.batch_execute(&insert(2_015_001, 2_020_000)).await?;
    big.batch_execute("COMMIT").await?;
    pg.batch(&insert(1_000_003, 1_000_003)).await?;
    other.batch_execute("COMMIT").await?;
    pg.batch(&insert(1_000_004, 1_000_004)).await?;

    let want: Vec<(&str, i64)> = [("insert", 1_000_001), ("insert", 1_000_002)]
        .into_iter()
        .chain((1..=30_000).map(|id| ("insert", id)))
        .chain((1..=10).map(|id| ("update", id)))
        .chain([("insert", 1_000_003)])
        .chain((2_000_001..=2_020_000).map(|id| ("insert", id)))
        .chain([("insert", 1_000_004)])
        .collect();
    let got = next_changes(&mut p, want.len(), Duration::from_secs(120)).await?;
    for (i, ((op, id), (got_op, got_id, _, _))) in want.iter().zip(&got).enumerate() {
        ensure!(
            got_op == op && got_id == id,
            "event {i}: expected {op} {id}, got {got_op} {got_id}"
        );
    }
    let lsns: Vec<u64> = got
        .iter()
        .map(|c| c.2.parse::<pgcdc_schema::Lsn>().map(|l| l.0))
        .collect::<Result<_, _>>()?;
    ensure!(
        lsns.windows(2).all(|w| w[0] <= w[1]),
        "events are not in commit LSN order"
    );
    assert_next_is_marker(&pg, &mut p, 3_000_000).await?;
    assert_streamed_not_spilled(&pg).await?;
    p.terminate()?;
    Ok(())
}

/// `pgcdc check` says what streaming does on this server.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_streaming() -> anyhow::Result<()> {
    let pg = cluster(15).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "pgcdc check exited {code}: {out}\n{err}");
    ensure!(
        out.contains("source.streaming") && out.contains("64kB"),
        "pgcdc check does not report streaming with logical_decoding_work_mem: {out}"
    );
    Ok(())
}
