//! The core end-to-end scenarios once more with the state in Postgres (`[state]
//! url`, here the source database itself): streaming, kill -9, HTTP with dead
//! letters and replay, checkpoint reset, resync. And what only a state store in
//! the source database can get wrong: its own writes must never become events,
//! never keep the slot busy, and a publication that would publish them is refused.
//! (`PGCDC_TEST_STATE=postgres` runs the other e2e files that use the fixture's
//! `config_toml` against the Postgres store too.)

mod e2e_fixture;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{
    assert_journal_exact, config_toml, create_load_table, current_wal_lsn, journal, pgcdc_output,
    slot_confirmed, start_streaming, with_pg_state, Loader, Seen, SocketAddr, PG_STATE_SCHEMA,
};
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

/// Config with one stdout sink, its state in the source database.
fn pg_config(pg: &PgCluster, tables: &[&str], state: &std::path::Path, extra: &str) -> String {
    with_pg_state(
        &config_toml(&pg.url(), tables, state, extra),
        &pg.url(),
        state,
    )
}

async fn next_events(p: &mut Pgcdc, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    while out.len() < n {
        let line = p
            .next_line(Duration::from_secs(30))
            .await
            .with_context(|| format!("only {} of {n} events: {}", out.len(), p.stderr()))?;
        out.push(serde_json::from_str(&line)?);
    }
    Ok(out)
}

/// WAL written while pgcdc idles for `window`, in bytes.
async fn idle_wal(pg: &PgCluster, window: Duration) -> anyhow::Result<u64> {
    let before = current_wal_lsn(pg).await?;
    tokio::time::sleep(window).await;
    Ok(current_wal_lsn(pg).await? - before)
}

/// The state store's own writes reach no sink, and do not loop through the slot:
/// each state commit adds WAL that the slot's keepalive would have pgcdc confirm,
/// which it would write again. Idle, pgcdc writes (almost) nothing; the slot still
/// confirms past the last change.
#[tokio::test(flavor = "multi_thread")]
async fn stream_with_state_in_the_source_database_never_sees_its_own_writes() -> anyhow::Result<()>
{
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    // No heartbeat: on an idle source nothing but pgcdc itself writes WAL.
    let cfg = ConfigFile::new(
        &pg_config(&pg, &["public.permits"], state.path(), "")
            .replace("[source]\n", "[source]\nheartbeat = \"0s\"\n"),
    )?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits VALUES (1, 'a'), (2, 'a');
         UPDATE permits SET status = 'b' WHERE id = 1;
         DELETE FROM permits WHERE id = 2;",
    )
    .await?;
    let events = next_events(&mut p, 4).await?;
    let ops: Vec<&str> = events.iter().filter_map(|e| e["op"].as_str()).collect();
    ensure!(ops == ["insert", "insert", "update", "delete"], "{ops:?}");
    let last_change = current_wal_lsn(&pg).await?;
    // The state tables exist in this database, and none of their rows was an event.
    let tables: i64 = pg
        .query_scalar(&format!(
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = '{PG_STATE_SCHEMA}'"
        ))
        .await?;
    ensure!(tables >= 8, "state tables in the source database: {tables}");
    wait_until_msg(
        Duration::from_secs(30),
        "the slot confirms past the last change",
        || async { slot_confirmed(&pg, "pgcdc").await.unwrap_or(0) >= last_change },
    )
    .await;
    // Settled; now idle for 5 s. A loop of confirmations writes hundreds of small
    // transactions a second (tens of kB of WAL a second); one a second is about 1 kB.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wal = idle_wal(&pg, Duration::from_secs(5)).await?;
    ensure!(wal < 24_000, "pgcdc wrote {wal} bytes of WAL in 5 s idle");
    if let Some(line) = p.next_line(Duration::from_secs(1)).await {
        anyhow::bail!("an event nobody made: {line}");
    }
    let head = journal(state.path())?.head()?;
    ensure!(head.pos == 4, "journal head: {head:?}");
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    println!("idle 5 s with the state in the source database: {wal} bytes of WAL");
    Ok(())
}

/// A FOR ALL TABLES publication would publish the state tables: `check` says so
/// and `run` refuses to start.
#[tokio::test(flavor = "multi_thread")]
async fn a_publication_for_all_tables_is_refused() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY); CREATE PUBLICATION pgcdc FOR ALL TABLES")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&pg_config(&pg, &["public.permits"], state.path(), ""))?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    let text = format!("{out}{err}");
    ensure!(
        code != 0 && text.contains("FOR ALL TABLES") && text.contains(PG_STATE_SCHEMA),
        "check exited {code}: {text}"
    );
    let (code, out, err) = pgcdc_output(&["run", "--config", &cfg.arg()]).await?;
    let text = format!("{out}{err}");
    ensure!(
        code != 0 && text.contains("FOR ALL TABLES"),
        "run exited {code}: {text}"
    );
    // With the usual publication (pgcdc makes it FOR TABLE), check passes the state.
    pg.batch("DROP PUBLICATION pgcdc").await?;
    let (_, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    let text = format!("{out}{err}");
    ensure!(
        text.contains(&format!("state schema {PG_STATE_SCHEMA}"))
            && !text.contains("FOR ALL TABLES"),
        "{text}"
    );
    Ok(())
}

/// kill -9 mid-load, twice: every change reaches stdout, the journal (in Postgres)
/// holds each exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_loses_nothing_and_journals_once() -> anyhow::Result<()> {
    const ROWS: u64 = 10_000;
    let pg = PgCluster::new().await?;
    create_load_table(&pg, "load").await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&pg_config(&pg, &["public.load"], state.path(), ""))?;
    let mut seen = Seen::default();
    let mut loader: Option<Loader> = None;
    for round in 1..=2u64 {
        let mut p = start_streaming(&pg, &cfg).await?;
        let loader = loader.get_or_insert_with(|| {
            Loader::start(
                SocketAddr::of(&pg),
                "load",
                ROWS,
                50,
                Duration::from_millis(20),
            )
        });
        let target = ROWS * round / 3;
        let before = seen.lines;
        seen.drain_while_waiting(&mut p, &format!("load at {target} rows"), || {
            loader.progress() >= target
        })
        .await?;
        seen.read_until_lines(&mut p, before + 1, Duration::from_secs(60))
            .await?;
        ensure!(
            loader.progress() < ROWS,
            "the load ended before kill {round}"
        );
        p.kill9()?;
        ensure!(p.wait_exit(Duration::from_secs(10)).await.is_some());
        seen.drain_for(&mut p, Duration::from_secs(1)).await?;
    }
    let loader = loader.context("loader")?;
    let mut p = start_streaming(&pg, &cfg).await?;
    loader.finish().await?;
    seen.until_all_keys(&mut p, ROWS, Duration::from_secs(240))
        .await?;
    seen.assert_all_keys(ROWS)?;
    assert_journal_exact(state.path(), ROWS)?;
    Ok(())
}

/// HTTP delivery with a trigger (row state fills `.old`), a definite failure that
/// parks its row in the DLQ, the CLI listing and replaying it in order; then a
/// checkpoint reset re-delivers, and a resync sends the table's rows.
#[tokio::test(flavor = "multi_thread")]
async fn http_dlq_replay_checkpoint_and_resync() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::FailFor {
        status: 400,
        when: Arc::new(|body: &Value| body["id"] == 3),
    });
    let state = state_dir()?;
    let extra = format!(
        "[[trigger]]\nname = \"approved\"\ntable = \"public.permits\"\n\
         when = '.old.status != \"approved\" and .new.status == \"approved\"'\n\n\
         [[sink]]\nname = \"hook\"\ntype = \"http\"\nevents = [\"approved\"]\nurl = \"{}\"\n\
         transform = '{{id: .new.id, was: .old.status}}'\n\
         retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}\n",
        rx.url()
    );
    let cfg = ConfigFile::new(&pg_config(&pg, &["public.permits"], state.path(), &extra))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits VALUES (3, 'pending'), (4, 'pending');
         UPDATE permits SET status = 'approved';
         UPDATE permits SET status = 'revoked';
         UPDATE permits SET status = 'approved';",
    )
    .await?;
    let delivered = |id: i64| {
        rx.requests()
            .iter()
            .map(|r| r.json())
            .filter(|b| b["id"] == id)
            .map(|b| b["was"].clone())
            .collect::<Vec<_>>()
    };
    wait_until_msg(
        Duration::from_secs(30),
        "row 4's two transitions",
        || async { delivered(4).len() >= 2 },
    )
    .await;
    ensure!(
        delivered(4) == [Value::from("pending"), Value::from("revoked")],
        ".old from the row state: {:?}",
        delivered(4)
    );
    let dlq = || async {
        let (code, out, err) = pgcdc_output(&[
            "dlq",
            "list",
            "--config",
            &cfg.arg(),
            "--sink",
            "hook",
            "--json",
        ])
        .await?;
        ensure!(code == 0, "dlq list: {err}");
        Ok::<Value, anyhow::Error>(serde_json::from_str(&out)?)
    };
    wait_until_msg(Duration::from_secs(30), "row 3 in the DLQ", || async {
        dlq().await.ok().and_then(|v| v.as_array().map(Vec::len)) == Some(2)
    })
    .await;
    let states: Vec<String> = dlq()
        .await?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state"].as_str().map(str::to_string))
        .collect();
    ensure!(states == ["dead", "parked"], "{states:?}");
    rx.set_mode(Mode::Ok);
    let (code, _, err) = pgcdc_output(&[
        "dlq",
        "replay",
        "--config",
        &cfg.arg(),
        "--sink",
        "hook",
        "--all",
    ])
    .await?;
    ensure!(code == 0, "replay: {err}");
    wait_until_msg(Duration::from_secs(30), "row 3 replayed", || async {
        delivered(3).len() >= 3
    })
    .await;
    ensure!(
        delivered(3)[1..] == [Value::from("pending"), Value::from("revoked")],
        "row 3 in order: {:?}",
        delivered(3)
    );

    // Back to the start of the journal: the hook gets all four transitions again.
    let before = rx.requests().len();
    let (code, out, err) = pgcdc_output(&[
        "checkpoint",
        "reset",
        "--config",
        &cfg.arg(),
        "--sink",
        "hook",
        "--time",
        "2000-01-01T00:00:00Z",
    ])
    .await?;
    ensure!(code == 0, "reset: {out}{err}");
    wait_until_msg(
        Duration::from_secs(30),
        "the hook's re-delivery",
        || async { rx.requests().len() >= before + 4 },
    )
    .await;

    // A resync of the table: its two rows come as read events on stdout.
    while p.next_line(Duration::from_millis(200)).await.is_some() {}
    let (code, out, err) = pgcdc_output(&[
        "resync",
        "--config",
        &cfg.arg(),
        "--table",
        "public.permits",
        "--sink",
        "out",
    ])
    .await?;
    ensure!(code == 0, "resync: {out}{err}");
    let reads = next_events(&mut p, 2).await?;
    ensure!(
        reads.iter().all(|e| e["op"] == "read"),
        "resync events: {reads:?}"
    );
    let status = e2e_fixture::status_json(&cfg).await?;
    ensure!(
        status.to_string().contains("done"),
        "status after the resync: {status}"
    );
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    Ok(())
}
