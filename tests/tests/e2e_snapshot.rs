//! End to end: the initial snapshot (`source.snapshot = "initial"`) of a table
//! while writers update, delete and insert rows: the stdout sink's view equals
//! the table; kill -9 mid-snapshot: the rest is read with watermarks, still
//! exact.

mod e2e_fixture;

use std::time::{Duration, Instant};

use anyhow::ensure;
use e2e_fixture::view::{create_tables, View, Writer};
use e2e_fixture::{config_toml, spawn_run, start_streaming, status_json};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};

/// Rows in the snapshotted table. The issue asks for 100k; 20k keeps the test
/// fast in a debug build and still spans ten chunks.
const SNAPSHOT_ROWS: i64 = 20_000;

fn config(pg: &PgCluster, state: &std::path::Path) -> anyhow::Result<ConfigFile> {
    let toml = config_toml(&pg.url(), &["public.items", "public.fence"], state, "")
        .replace("tables = [", "snapshot = \"initial\"\ntables = [");
    Ok(ConfigFile::new(&toml)?)
}

/// Snapshot resyncs' states from `pgcdc status --json`.
async fn snapshot_states(cfg: &ConfigFile) -> anyhow::Result<Vec<String>> {
    let s = status_json(cfg).await?;
    Ok(s["resyncs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "snapshot")
        .map(|r| r["state"].as_str().unwrap_or("?").to_string())
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_while_writers_run_equals_table() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", SNAPSHOT_ROWS).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    // Writers run before, during and after the copy.
    let writer = Writer::start(&pg, "items", SNAPSHOT_ROWS + 500).await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut view = View::of("items");
    view.drain_until(&mut p, Duration::from_secs(120), "snapshot rows", |v| {
        v.reads >= SNAPSHOT_ROWS as u64 / 2
    })
    .await?;
    let writes = writer.stop().await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    let states = snapshot_states(&cfg).await?;
    ensure!(
        states.iter().all(|s| s == "done") && states.len() == 2,
        "{states:?}"
    );
    let log = p.stderr();
    ensure!(log.contains("initial snapshot journaled"), "{log}");
    eprintln!(
        "snapshot: {} read events, {writes} concurrent writes",
        view.reads
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_snapshot_resumes_with_watermarks_and_stays_exact() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", 3 * SNAPSHOT_ROWS).await?;
    let state = state_dir()?;
    let cfg = config(&pg, state.path())?;
    let writer = Writer::start(&pg, "items", 3 * SNAPSHOT_ROWS).await?;
    let mut p = spawn_run(&cfg)?;
    // Kill as soon as the first chunk is journaled (polling the journal directly).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ensure!(
            Instant::now() < deadline,
            "no snapshot chunk; stderr:\n{}",
            p.stderr_tail(20)
        );
        let chunks: i64 = e2e_fixture::journal(state.path())
            .and_then(|j| Ok(j.resyncs(1000)?))
            .map(|all| {
                all.iter()
                    .filter(|r| r.kind == "snapshot")
                    .map(|r| r.chunks)
                    .sum()
            })
            .unwrap_or(0);
        if chunks >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.kill9()?;
    let _ = p.wait_exit(Duration::from_secs(10)).await;
    let mut view = View::of("items");
    while let Some(line) = p.next_line(Duration::from_millis(200)).await {
        view.apply(&line)?;
    }
    let states = snapshot_states(&cfg).await?;
    ensure!(
        states.iter().any(|s| s != "done"),
        "the copy finished before the kill: {states:?}"
    );

    let mut p = start_streaming(&pg, &cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let states = snapshot_states(&cfg).await?;
        if states.iter().all(|s| s == "done") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "snapshot not finished: {states:?}"
        );
        let mut n = 0;
        view.drain_until(&mut p, Duration::from_secs(30), "stdout", |_| {
            n += 1;
            n > 500
        })
        .await
        .or_else(|e| if p.has_exited() { Err(e) } else { Ok(()) })?;
    }
    writer.stop().await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    let log = p.stderr();
    ensure!(
        log.contains("resync running") && log.contains("snapshot"),
        "{log}"
    );
    ensure!(
        !log.contains("initial snapshot journaled"),
        "copied again after restart: {log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_rows_seed_old_for_the_first_update() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", 10).await?;
    let state = state_dir()?;
    // The trigger reads `.old.v`, so the journal remembers `v` per row; with the default
    // REPLICA IDENTITY, Postgres sends no old row: `.old` comes from the snapshot's rows.
    let extra =
        "\n[[trigger]]\nname = \"changed\"\ntable = \"public.items\"\nwhen = '.old.v != .new.v'\n";
    let toml = config_toml(
        &pg.url(),
        &["public.items", "public.fence"],
        state.path(),
        extra,
    )
    .replace("tables = [", "snapshot = \"initial\"\ntables = [");
    let cfg = ConfigFile::new(&toml)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut view = View::of("items");
    view.drain_until(&mut p, Duration::from_secs(60), "10 snapshot rows", |v| {
        v.reads == 10
    })
    .await?;
    pg.batch("UPDATE items SET v = 7 WHERE id = 3").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ensure!(Instant::now() < deadline, "no update event");
        if let Some(line) = p.next_line(Duration::from_millis(200)).await {
            let e: serde_json::Value = serde_json::from_str(&line)?;
            if e["op"] == "update" {
                ensure!(e["old"]["v"] == 0 && e["new"]["v"] == 7, "{e}");
                return Ok(());
            }
        }
    }
}
