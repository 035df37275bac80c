//! End to end: the Kafka sink audits a batch the broker took as one row, and
//! `pgcdc audit --event` still answers for every event it delivered (and for
//! no event it did not).

mod e2e_fixture;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e_fixture::{journal, journal_events, pgcdc_output, start_streaming};
use pgcdc_sinks::AttemptOutcome;
use pgcdc_tests::kafka::{read_topic, Broker};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};
use serde_json::Value;

const TOPIC: &str = "portal.public.permits";
const ROWS: usize = 6_000;

/// (rows of single attempts, rows of batches, ids in the batches) in the audit store.
async fn audit_rows(pg: &PgCluster, state: &std::path::Path) -> anyhow::Result<(i64, i64, i64)> {
    let single = "SELECT COUNT(*) FROM audit";
    let batches = "SELECT COUNT(*), COALESCE(SUM(events), 0) FROM audit_batch";
    if e2e_fixture::pg_state_url(state).is_some() {
        let schema = e2e_fixture::PG_STATE_SCHEMA;
        let client = pg.client().await?;
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .await?;
        let s = client.query_one(single, &[]).await?;
        let b = client
            .query_one(&batches.replace("SUM(events)", "SUM(events)::int8"), &[])
            .await?;
        return Ok((s.get(0), b.get(0), b.get(1)));
    }
    let conn = rusqlite::Connection::open(state.join("audit.db"))?;
    let s = conn.query_row(single, [], |r| r.get(0))?;
    let (n, ids) = conn.query_row(batches, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((s, n, ids))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_delivered_event_is_audited_from_one_row_per_batch() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE permits (id int8 PRIMARY KEY, status text NOT NULL); \
         CREATE TABLE notes (id int8 PRIMARY KEY)",
    )
    .await?;
    let state = state_dir()?;
    let text = format!(
        "[source]\nurl = \"{url}\"\ntables = [\"public.permits\", \"public.notes\"]\n\n\
         [state]\ndir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"kafka\"\ntype = \"kafka\"\ntables = [\"public.permits\"]\n\
         brokers = \"{}\"\ntopic = \"portal.{{schema}}.{{table}}\"\n\
         create_topics = true\npartitions = 3\n",
        state.path().display(),
        broker.bootstrap(),
        url = pg.url(),
    );
    let cfg = ConfigFile::new(&e2e_fixture::test_state(&text, &pg.url(), state.path()))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // A change the sink does not take, between the ones it does.
    pg.batch(&format!(
        "INSERT INTO permits SELECT g, 'new' FROM generate_series(1, {half}) g; \
         INSERT INTO notes VALUES (1); \
         INSERT INTO permits SELECT g, 'new' FROM generate_series({half} + 1, {ROWS}) g;",
        half = ROWS / 2
    ))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let b = broker.bootstrap();
        let n = tokio::task::spawn_blocking(move || read_topic(&b, TOPIC))
            .await?
            .map(|r| r.len())
            .unwrap_or_default();
        if n >= ROWS {
            break;
        }
        if p.has_exited() || Instant::now() > deadline {
            bail!("{n} of {ROWS} records; stderr:\n{}", p.stderr_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A clean stop: the audit writer drains its queue before pgcdc exits.
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));

    let events = journal_events(state.path())?;
    ensure!(events.len() == ROWS + 1, "{} journal events", events.len());
    let store = journal(state.path())?;
    let mut note = None;
    for e in &events {
        let id = e.event.id.to_string();
        let got = store.audit_by_event(&id)?;
        if &*e.event.table == "notes" {
            ensure!(
                got.is_empty(),
                "a change the sink never took is audited: {got:?}"
            );
            note = Some(id);
            continue;
        }
        ensure!(
            got.len() == 1
                && got[0].sink == "kafka"
                && got[0].event_id == id
                && got[0].outcome == AttemptOutcome::Delivered,
            "audit of {id}: {got:?}"
        );
    }
    // One row per batch, not per record.
    let (single, batches, ids) = audit_rows(&pg, state.path()).await?;
    ensure!(
        single == 0 && ids == ROWS as i64 && (1..=ROWS as i64 / 100).contains(&batches),
        "audit rows: {single} single, {batches} batches holding {ids} ids"
    );
    let by_sink = store.audit_by_sink("kafka", "2000-01-01T00:00:00Z", 100_000)?;
    ensure!(by_sink.len() == ROWS, "{} attempts by sink", by_sink.len());

    // The CLI answers for an event from the middle of a batch, and not for the note.
    let middle = events[ROWS / 3].event.id.to_string();
    let (code, out, err) = pgcdc_output(&[
        "audit",
        "--config",
        &cfg.arg(),
        "--event",
        &middle,
        "--json",
    ])
    .await?;
    ensure!(code == 0, "audit failed: {err}");
    let attempts: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        attempts.len() == 1
            && attempts[0]["outcome"] == "delivered"
            && attempts[0]["sink"] == "kafka"
            && attempts[0]["event_id"] == middle.as_str(),
        "audit of {middle}: {out}"
    );
    let note = note.context("the notes change is in the journal")?;
    let (code, out, err) =
        pgcdc_output(&["audit", "--config", &cfg.arg(), "--event", &note, "--json"]).await?;
    ensure!(code == 0, "audit failed: {err}");
    ensure!(
        out.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "audit of {note}: {out}"
    );
    Ok(())
}
