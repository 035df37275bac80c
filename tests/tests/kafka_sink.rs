//! The Kafka sink against the real broker, without Postgres: crashes placed
//! exactly between its calls, to prove the progress record and read-back.

use std::collections::HashMap;
use std::sync::Arc;

use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};
use pgcdc_sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkContext};
use pgcdc_sinks::{AuditLog, Checkpoint, ItemResult, Outgoing, Sink};
use pgcdc_tests::kafka::{read_topic, Broker};
use serde_json::json;

const TOPIC: &str = "permits";

fn config(bootstrap: &str) -> anyhow::Result<KafkaSinkConfig> {
    Ok(serde_json::from_value(json!({
        "brokers": bootstrap,
        "topic": TOPIC,
        "create_topics": true,
        "partitions": 1,
    }))?)
}

/// A new process's sink (nothing shared with an earlier one but the broker).
fn sink(cfg: &KafkaSinkConfig) -> anyhow::Result<KafkaSink> {
    let ctx = KafkaSinkContext {
        db: "portal".into(),
        version: "test".into(),
        transformed: false,
        audit: AuditLog::disabled(),
    };
    Ok(KafkaSink::new("kafka", cfg, "sink[0]", ctx)?)
}

/// The insert of permit `n`, journaled at position `n`.
fn item(n: i64) -> Outgoing {
    let lsn = Lsn(0x1000 + n as u64);
    let mut row = pgcdc_schema::event::Row::new();
    row.insert("id".into(), json!(n));
    let event = ChangeEvent {
        id: EventId::from_position(lsn, 0),
        op: Op::Insert,
        schema: "public".into(),
        table: "permits".into(),
        key: Some(row.clone()),
        old: None,
        new: Some(row.clone()),
        trigger: None,
        lsn,
        xid: Some(7),
        commit_time: Some("2026-12-02T10:00:00Z".into()),
        unchanged_toast: vec![],
        columns: None,
        previous: None,
        origin: Default::default(),
    };
    let body = serde_json::to_value(&event).unwrap_or_default();
    Outgoing {
        event: Arc::new(event),
        body,
        part: 0,
        row: format!("public.permits{{\"id\":{n}}}"),
    }
}

fn at(n: i64) -> Checkpoint {
    Checkpoint {
        pos: n,
        event_id: if n == 0 {
            String::new()
        } else {
            item(n).event.id.to_string()
        },
        generation: 0,
    }
}

/// Delivers events `from..=to` as one batch; every one must be settled.
async fn deliver(sink: &mut KafkaSink, from: i64, to: i64) -> anyhow::Result<()> {
    let items: Vec<Outgoing> = (from..=to).map(item).collect();
    let results = sink.deliver(&items).await?;
    anyhow::ensure!(
        results.iter().all(|r| *r == ItemResult::Delivered),
        "not all delivered: {results:?}"
    );
    Ok(())
}

/// A progress record written while the sink still skips what a read-back found
/// must not name the offsets of those records: a crash after it would re-send
/// every found record between its position and those offsets.
#[tokio::test(flavor = "multi_thread")]
async fn a_progress_record_written_while_skipping_found_records_loses_none_of_them(
) -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let cfg = config(&broker.bootstrap())?;

    // Process 1 delivers 1..=10 and stops cleanly: progress record at 10.
    let mut p1 = sink(&cfg)?;
    anyhow::ensure!(p1.resume(&at(0)).await?.is_none());
    deliver(&mut p1, 1, 10).await?;
    p1.checkpoint(&at(10)).await?;
    p1.close().await?;
    drop(p1);

    // Process 2 delivers 11..=30 and is killed before any progress record.
    let mut p2 = sink(&cfg)?;
    let resumed = p2.resume(&at(10)).await?;
    anyhow::ensure!(resumed.as_ref().map(|c| c.pos) == Some(10), "{resumed:?}");
    deliver(&mut p2, 11, 30).await?;
    drop(p2);

    // Process 3 resumes at 10, finds 11..=30, passes 11..=20 (skipped), and
    // writes a progress record at 20 (here at a clean stop; a kill -9 right
    // after a periodic record leaves the same state).
    let mut p3 = sink(&cfg)?;
    let resumed = p3.resume(&at(30)).await?;
    anyhow::ensure!(resumed.as_ref().map(|c| c.pos) == Some(10), "{resumed:?}");
    deliver(&mut p3, 11, 20).await?;
    p3.checkpoint(&at(20)).await?;
    p3.close().await?;
    drop(p3);

    // Process 4 resumes at 20 and must find 21..=30 in Kafka already.
    let mut p4 = sink(&cfg)?;
    let resumed = p4.resume(&at(20)).await?;
    anyhow::ensure!(resumed.as_ref().map(|c| c.pos) == Some(20), "{resumed:?}");
    deliver(&mut p4, 21, 30).await?;
    p4.checkpoint(&at(30)).await?;
    p4.close().await?;

    let records = read_topic(&broker.bootstrap(), TOPIC)?;
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let id = r.headers.get("pgcdc-event-id").cloned().unwrap_or_default();
        *count.entry(id).or_default() += 1;
    }
    let doubled: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    anyhow::ensure!(doubled.is_empty(), "written twice: {doubled:?}");
    anyhow::ensure!(
        records.len() == 30,
        "{} records for 30 events",
        records.len()
    );
    Ok(())
}
