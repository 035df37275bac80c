//! End to end: online resync (watermark chunks) while writers update, delete
//! and insert rows: the stdout sink's view equals the table; a targeted resync
//! reaches only its sink; kill -9 mid-resync resumes at the chunk; cancel works.

mod e2e_fixture;

use std::time::Duration;

use anyhow::ensure;
use e2e_fixture::view::{create_tables, View, Writer};
use e2e_fixture::{
    config_toml, config_toml_sqlite, hold_synchronous_commits, pgcdc_output,
    release_synchronous_commits, spawn_run, start_streaming, status_json,
};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

/// Rows in the resynced table (several chunks of 2000).
const ROWS: i64 = 10_000;

/// A `--where` that is true for every row and slows the chunk SELECT down.
const SLOW_WHERE: &str = "(SELECT true FROM pg_sleep(0.0001 + 0 * id))";

fn tables() -> [&'static str; 2] {
    ["public.items", "public.fence"]
}

async fn resync_state(cfg: &ConfigFile) -> anyhow::Result<Value> {
    let s = status_json(cfg).await?;
    Ok(s["resyncs"].get(0).cloned().unwrap_or(Value::Null))
}

/// Reads stdout until the newest resync is `done` (checked every 200 lines or 0.5 s).
async fn until_done(view: &mut View, p: &mut Pgcdc, cfg: &ConfigFile) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let r = resync_state(cfg).await?;
        if r["state"] == "done" {
            return Ok(());
        }
        ensure!(r["state"] != "failed", "resync failed: {r}");
        ensure!(std::time::Instant::now() < deadline, "resync not done: {r}");
        let mut n = 0;
        view.drain_until(p, Duration::from_secs(30), "stdout", |_| {
            n += 1;
            n > 200
        })
        .await
        .or_else(|e| if p.has_exited() { Err(e) } else { Ok(()) })?;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_during_writes_equals_table_and_reaches_only_its_sink() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", ROWS).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let extra = format!(
        "[[sink]]\nname = \"other\"\ntype = \"http\"\nurl = \"{}\"\n",
        rx.url()
    );
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &tables(), state.path(), &extra))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut view = View::of("items");

    let writer = Writer::start(&pg, "items", ROWS + 500).await?;
    // The `where` sleeps a little per row: each chunk's SELECT then takes about 0.2 s,
    // so many writes commit inside its watermark window, after the SELECT's snapshot.
    // Without the window's filtering those rows would reach the sink stale.
    let (code, out, err) = pgcdc_output(&[
        "resync",
        "--config",
        &cfg.arg(),
        "--table",
        "public.items",
        "--sink",
        "out",
        "--where",
        SLOW_WHERE,
    ])
    .await?;
    ensure!(code == 0, "resync: {out}{err}");
    // A second request for the same table and sink is refused while the first runs.
    let (code, _, err) = pgcdc_output(&[
        "resync",
        "--config",
        &cfg.arg(),
        "--table",
        "public.items",
        "--sink",
        "out",
    ])
    .await?;
    ensure!(
        code != 0 && err.contains("already"),
        "duplicate accepted: {err}"
    );
    until_done(&mut view, &mut p, &cfg).await?;
    let writes = writer.stop().await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    ensure!(view.reads > 0, "no read events");
    let r = resync_state(&cfg).await?;
    ensure!(r["chunks"].as_i64().unwrap_or(0) >= ROWS / 2_000, "{r}");
    eprintln!(
        "resync: {} reads, {writes} concurrent writes, {r}",
        view.reads
    );

    // The http sink got the streamed changes but none of the targeted read events.
    wait_until_msg(
        Duration::from_secs(60),
        "the http sink sees the fence",
        || async { rx.requests().iter().any(|r| r.json()["table"] == "fence") },
    )
    .await;
    let reads = rx
        .requests()
        .iter()
        .filter(|r| r.json()["op"] == "read")
        .count();
    ensure!(
        reads == 0,
        "sink 'other' received {reads} read events of a resync for 'out'"
    );

    // Read event ids are stable per (resync, table, key) and look like R<id>-<hash>.
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_resync_resumes_at_the_chunk_and_stays_exact() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", 2 * ROWS).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &tables(), state.path(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut view = View::of("items");
    let writer = Writer::start(&pg, "items", 2 * ROWS).await?;
    // Through the admin API this time (the port is ephemeral: read it from the log).
    let (code, out, err) =
        pgcdc_output(&["resync", "--config", &cfg.arg(), "--table", "public.items"]).await?;
    ensure!(code == 0, "resync: {out}{err}");
    // Kill once a few chunks are journaled.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = resync_state(&cfg).await?;
        if r["chunks"].as_i64().unwrap_or(0) >= 2 {
            ensure!(r["state"] == "running", "finished before the kill: {r}");
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "no progress: {r}");
        let mut n = 0;
        let _ = view
            .drain_until(&mut p, Duration::from_millis(300), "", |_| {
                n += 1;
                n > 100
            })
            .await;
    }
    p.kill9()?;
    let _ = p.wait_exit(Duration::from_secs(10)).await;
    // Drain what the dead process printed.
    while let Some(line) = p.next_line(Duration::from_millis(200)).await {
        view.apply(&line)?;
    }
    let before = resync_state(&cfg).await?;
    let mut p = spawn_run(&cfg)?;
    until_done(&mut view, &mut p, &cfg).await?;
    writer.stop().await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    let after = resync_state(&cfg).await?;
    // Resumed, not restarted: chunks before the kill were not read again.
    ensure!(
        after["chunks"].as_i64() <= Some(2 * ROWS / 2_000 + 1),
        "before kill {before}, after {after}"
    );
    let log = p.stderr();
    ensure!(log.contains("resync running"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_resync() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", 10).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &tables(), state.path(), ""))?;
    // Stopped pgcdc: the request waits in the journal; cancel it there.
    let mut p = start_streaming(&pg, &cfg).await?;
    p.terminate()?;
    let _ = p.wait_exit(Duration::from_secs(20)).await;
    let (code, out, err) =
        pgcdc_output(&["resync", "--config", &cfg.arg(), "--table", "public.items"]).await?;
    ensure!(code == 0, "{out}{err}");
    let (code, out, err) = pgcdc_output(&[
        "resync",
        "--config",
        &cfg.arg(),
        "--table",
        "public.items",
        "--cancel",
    ])
    .await?;
    ensure!(code == 0 && out.contains("cancelled"), "{out}{err}");
    ensure!(resync_state(&cfg).await?["state"] == "cancelled");
    let (code, _, err) =
        pgcdc_output(&["resync", "--config", &cfg.arg(), "--table", "public.nope"]).await?;
    ensure!(code != 0 && err.contains("source.tables"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_and_status_shows_its_next_run() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", 50).await?;
    let state = state_dir()?;
    let extra = "\n[[schedule]]\ncron = \"*/2 * * * * *\"\ntime_zone = \"Europe/Berlin\"\n\
                 resync = { table = \"public.items\", sink = \"out\", where = \"id <= 40\" }\n";
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &tables(), state.path(), extra))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let s = status_json(&cfg).await?;
    let next = s["schedules"][0]["next_run"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        chrono::DateTime::parse_from_rfc3339(&next).is_ok(),
        "no next run in status: {s}"
    );
    let mut view = View::of("items");
    // Only rows matching `where` are read.
    view.drain_until(
        &mut p,
        Duration::from_secs(60),
        "40 rows read by the schedule",
        |v| v.rows.len() == 40,
    )
    .await?;
    ensure!(
        view.rows.keys().all(|id| *id <= 40),
        "{:?}",
        view.rows.keys().last()
    );
    let log = p.stderr();
    ensure!(log.contains("scheduled resync queued"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_starts_and_cancels_a_running_resync() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", ROWS).await?;
    let state = state_dir()?;
    let port = pgcdc_tests::free_port()?;
    let toml = config_toml(&pg.url(), &tables(), state.path(), "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = ConfigFile::new(&toml)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // Mutations need the token: the one pgcdc generated, as the CLI prints it.
    let token = e2e_fixture::admin_token(&cfg).await?;
    let body = serde_json::json!({ "table": "public.items", "where": SLOW_WHERE }).to_string();
    let r = http
        .post(format!("{base}/api/resync"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await?;
    let (code, text) = (r.status().as_u16(), r.text().await?);
    ensure!(
        code == 200 && text.contains("\"state\":\"pending\""),
        "{code} {text}"
    );
    let r = http
        .post(format!("{base}/api/resync"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 409, "a duplicate must be refused");
    let mut view = View::of("items");
    view.drain_until(&mut p, Duration::from_secs(60), "the first chunk", |v| {
        v.reads > 0
    })
    .await?;
    let r = http
        .delete(format!("{base}/api/resync/public.items"))
        .bearer_auth(&token)
        .send()
        .await?;
    let (code, text) = (r.status().as_u16(), r.text().await?);
    ensure!(code == 200 && text.contains("cancelled"), "{code} {text}");
    // The chunk in hand may still land; then nothing more.
    view.drain_until(&mut p, Duration::from_secs(3), "", |_| false)
        .await
        .ok();
    let reads = view.reads;
    view.drain_until(&mut p, Duration::from_secs(3), "", |_| false)
        .await
        .ok();
    let r = resync_state(&cfg).await?;
    ensure!(r["state"] == "cancelled", "{r}");
    ensure!(
        view.reads == reads && reads < ROWS as u64,
        "reads went on after cancel: {reads} then {}",
        view.reads
    );
    Ok(())
}

/// Sets `v = 7` on row `id` in a transaction that waits for the standby, and
/// reads until pgcdc has delivered it (while the table still shows the old row).
async fn held_update(
    pg: &PgCluster,
    view: &mut View,
    p: &mut Pgcdc,
    id: i64,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>> {
    // pgoutput describes a table (Relation message) with its first change in a
    // session, and pgcdc looks its catalog up once that change is visible: so
    // the table is described before, by a change that commits at once.
    pg.execute(&format!("UPDATE items SET v = v WHERE id = {id}"))
        .await?;
    view.fence(pg, p).await?;
    let writer = pg.client().await?;
    writer.batch_execute("SET synchronous_commit = on").await?;
    let sql = format!("UPDATE items SET v = 7 WHERE id = {id}");
    let update = tokio::spawn(async move { writer.batch_execute(&sql).await });
    view.drain_until(p, Duration::from_secs(60), "the held update", |v| {
        v.rows.get(&id) == Some(&7)
    })
    .await?;
    let visible: i32 = pg
        .query_scalar(&format!("SELECT v FROM items WHERE id = {id}"))
        .await?;
    ensure!(visible == 0, "the held update is already visible");
    Ok(update)
}

/// Rows of the table the held-update test resyncs: three chunks.
const HELD_ROWS: i64 = 6_000;

/// A `where` that makes each chunk's SELECT take about 2 s.
const SLOWER_WHERE: &str = "(SELECT true FROM pg_sleep(0.001 + 0 * id))";

/// A transaction the stream carried before a chunk's low watermark but that the
/// chunk's SELECT did not see yet (its commit waits for a synchronous standby)
/// must not leave the row it changed stale: the window drops that row too, and
/// the resync finishes while the transaction still waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_not_yet_visible_to_the_chunk_select_leaves_no_stale_row() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", HELD_ROWS).await?;
    hold_synchronous_commits(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml_sqlite(&pg.url(), &tables(), state.path(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut view = View::of("items");
    let (code, out, err) = pgcdc_output(&[
        "resync",
        "--config",
        &cfg.arg(),
        "--table",
        "public.items",
        "--where",
        SLOWER_WHERE,
    ])
    .await?;
    ensure!(code == 0, "resync: {out}{err}");
    view.drain_until(&mut p, Duration::from_secs(60), "the first chunk", |v| {
        v.reads > 0
    })
    .await?;
    // The second chunk's SELECT runs: this update commits inside its window, on a
    // row of the third chunk, whose SELECT then runs before the update is visible.
    let update = held_update(&pg, &mut view, &mut p, HELD_ROWS - 10).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while resync_state(&cfg).await?["state"] != "done" {
        ensure!(
            std::time::Instant::now() < deadline,
            "the resync did not finish while the update waited: {}",
            resync_state(&cfg).await?
        );
        let _ = view
            .drain_until(&mut p, Duration::from_millis(300), "", |_| false)
            .await;
    }
    ensure!(!update.is_finished(), "the update stopped waiting");
    release_synchronous_commits(&pg).await?;
    update.await??;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    ensure!(
        p.stderr().contains("their rows are left to the stream"),
        "the third chunk's SELECT did not miss the update: {}",
        p.stderr_tail(20)
    );
    ensure!(
        view.reads >= HELD_ROWS as u64 - 1,
        "read events: {}",
        view.reads
    );
    Ok(())
}

/// The same, with the transaction committed before the resync started: the
/// reader did not remember its keys, so the chunk is read again until the
/// transaction is visible.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_unseen_and_older_than_the_resync_makes_the_chunk_wait() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    create_tables(&pg, "items", 100).await?;
    hold_synchronous_commits(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml_sqlite(&pg.url(), &tables(), state.path(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut view = View::of("items");
    let update = held_update(&pg, &mut view, &mut p, 5).await?;
    let (code, out, err) =
        pgcdc_output(&["resync", "--config", &cfg.arg(), "--table", "public.items"]).await?;
    ensure!(code == 0, "resync: {out}{err}");
    let _ = view
        .drain_until(&mut p, Duration::from_secs(3), "", |_| false)
        .await;
    let r = resync_state(&cfg).await?;
    ensure!(
        r["state"] != "done",
        "the chunk was read while the update waited: {r}"
    );
    release_synchronous_commits(&pg).await?;
    update.await??;
    until_done(&mut view, &mut p, &cfg).await?;
    view.fence(&pg, &mut p).await?;
    view.assert_equals_table(&pg).await?;
    ensure!(view.reads == 100, "read events: {}", view.reads);
    Ok(())
}
