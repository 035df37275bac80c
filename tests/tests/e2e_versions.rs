//! The version matrix: the core end-to-end scenarios, compact, against every
//! supported PostgreSQL major version (14 to 18; 15 is the distribution's, the
//! others come from `scripts/fetch-postgres`). One pgcdc per version goes through:
//!
//! 1. snapshot: `snapshot = "initial"` copies a table; the sink's view equals it;
//!    then `pgcdc resync` reads it again by watermark chunks (each a REPEATABLE
//!    READ transaction that lists the transactions its snapshot misses);
//! 2. type fidelity: one row of many types arrives with its values' meaning kept,
//!    on stdout and through the HTTP sink (with its `Idempotency-Key`);
//! 3. kill -9 in the middle of a load, restart: every row reaches the sink, and
//!    the journal holds each change exactly once.
//!
//! The full scenarios run on 15 in their own files; this one keeps CI cheap.

mod e2e_fixture;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::view::{create_tables, View};
use e2e_fixture::{
    config_toml, create_load_table, pgcdc_output, spawn_run, wait_streaming, Loader, Seen,
    SocketAddr,
};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::{json, Value};

const SNAPSHOT_ROWS: i64 = 500;
const LOAD_ROWS: u64 = 3_000;

const VALUES_TABLE: &str = "CREATE TABLE vals (id int PRIMARY KEY, n numeric, big int8, f float8,
    ts timestamptz, d date, b bytea, a int[], j jsonb, u uuid, t text, ok bool)";
const VALUES_ROW: &str =
    "INSERT INTO vals VALUES (1, 12345678901234567890.123456789, 9007199254740993,
    1.5, '2026-01-02 03:04:05.123456+00', '2026-01-02', '\\xdeadbeef', '{1,2,3}',
    '{\"a\": [1, 2.5]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'é \"quoted\"', true)";

fn config(pg: &PgCluster, state: &Path, receiver: &str) -> anyhow::Result<ConfigFile> {
    let http = format!(
        "\n[[sink]]\nname = \"hook\"\ntype = \"http\"\ntables = [\"public.vals\"]\nurl = \"{receiver}/events\"\n\
         retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}\n"
    );
    let toml = config_toml(
        &pg.url(),
        &["public.items", "public.fence", "public.vals", "public.load"],
        state,
        &http,
    )
    .replacen("tables = [", "snapshot = \"initial\"\ntables = [", 1);
    Ok(ConfigFile::new(&toml)?)
}

/// Reads stdout until the event of `table` arrives.
async fn next_of(p: &mut Pgcdc, table: &str) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = p
            .next_line(left)
            .await
            .with_context(|| format!("no {table} event; stderr:\n{}", p.stderr_tail(30)))?;
        let ev: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        if ev["table"] == table {
            return Ok(ev);
        }
    }
}

/// Each change to `public.load` is in the journal exactly once (read through
/// pgcdc's store API).
fn assert_load_journaled_once(state: &Path, rows: u64) -> anyhow::Result<()> {
    let load: Vec<_> = e2e_fixture::journal_events(state)?
        .into_iter()
        .filter(|e| &*e.table == "public.load")
        .collect();
    let events = load.len();
    let ids: HashSet<String> = load.iter().map(|e| e.event.id.to_string()).collect();
    let keys: HashSet<String> = load
        .iter()
        .filter_map(|e| serde_json::to_string(e.event.key.as_ref()?).ok())
        .collect();
    let (ids, keys) = (ids.len(), keys.len());
    let rows = rows as usize;
    ensure!(
        events == rows && ids == rows && keys == rows,
        "journal must hold each of {rows} load changes once: {events} events, {ids} ids, {keys} keys"
    );
    Ok(())
}

async fn scenario(major: u32) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let pg = PgCluster::builder().version(major).start().await?;
    ensure!(
        pg.server_major().await? == major,
        "the server is not {major}"
    );
    create_tables(&pg, "items", SNAPSHOT_ROWS).await?;
    create_load_table(&pg, "load").await?;
    pg.batch(VALUES_TABLE).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path(), &rx.url())?;

    // 1. Snapshot.
    let mut p = spawn_run(&cfg)?;
    wait_streaming(&pg, &mut p).await?;
    let mut view = View::of("items");
    view.drain_until(&mut p, Duration::from_secs(60), "snapshot rows", |v| {
        v.reads >= SNAPSHOT_ROWS as u64
    })
    .await?;
    pg.execute("UPDATE items SET v = 7 WHERE id = 3").await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    let (code, out, err) =
        pgcdc_output(&["resync", "--config", &cfg.arg(), "--table", "public.items"]).await?;
    ensure!(code == 0, "PostgreSQL {major}: resync: {out}{err}");
    let reads = view.reads;
    view.drain_until(&mut p, Duration::from_secs(60), "resync rows", |v| {
        v.reads >= reads + SNAPSHOT_ROWS as u64
    })
    .await?;
    pg.execute("UPDATE items SET v = 8 WHERE id = 4").await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;

    // 2. Values, on stdout and over HTTP.
    pg.batch(VALUES_ROW).await?;
    let ev = next_of(&mut p, "vals").await?;
    let expected = json!({
        "id": 1, "n": "12345678901234567890.123456789", "big": 9007199254740993_i64, "f": 1.5,
        "ts": "2026-01-02T03:04:05.123456Z", "d": "2026-01-02", "b": "3q2+7w==", "a": [1, 2, 3],
        "j": {"a": [1, 2.5]}, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "t": "é \"quoted\"", "ok": true
    });
    ensure!(
        ev["op"] == "insert" && ev["new"] == expected,
        "PostgreSQL {major}: values changed meaning: {ev}"
    );
    wait_until_msg(Duration::from_secs(30), "the HTTP sink's request", || {
        let n = rx.requests().len();
        async move { n >= 1 }
    })
    .await;
    let req = rx.requests().into_iter().next().context("no request")?;
    let body = req.json();
    ensure!(
        body["new"] == expected && body["id"] == ev["id"],
        "HTTP body: {body}"
    );
    ensure!(
        req.header("idempotency-key").is_some_and(|k| !k.is_empty()),
        "no Idempotency-Key: {:?}",
        req.headers
    );

    // 3. kill -9 mid-load.
    let loader = Loader::start(
        SocketAddr::of(&pg),
        "load",
        LOAD_ROWS,
        50,
        Duration::from_millis(10),
    );
    let mut seen = Seen::default();
    seen.drain_while_waiting(&mut p, "a third of the load", || {
        loader.progress() >= LOAD_ROWS / 3
    })
    .await?;
    ensure!(
        loader.progress() < LOAD_ROWS,
        "the load ended before the kill"
    );
    p.kill9()?;
    ensure!(p.wait_exit(Duration::from_secs(10)).await.is_some());
    seen.drain_for(&mut p, Duration::from_secs(1)).await?;
    let mut p = spawn_run(&cfg)?;
    wait_streaming(&pg, &mut p).await?;
    loader.finish().await?;
    // Key 1 of `vals` counts as seen; `load` has its own 1..=LOAD_ROWS.
    seen.until_all_keys(&mut p, LOAD_ROWS, Duration::from_secs(120))
        .await?;
    seen.assert_all_keys(LOAD_ROWS)?;
    assert_load_journaled_once(state.path(), LOAD_ROWS)?;
    println!(
        "PostgreSQL {major}: matrix scenario in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_14() -> anyhow::Result<()> {
    scenario(14).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_15() -> anyhow::Result<()> {
    scenario(15).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_16() -> anyhow::Result<()> {
    scenario(16).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_17() -> anyhow::Result<()> {
    scenario(17).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_18() -> anyhow::Result<()> {
    scenario(18).await
}
