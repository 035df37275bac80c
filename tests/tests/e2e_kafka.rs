//! End to end: Postgres → pgcdc → Kafka-protocol broker (nisshi) → consumers.
//! The Debezium shape field by field, keys and partitions as Java clients
//! compute them, exactly once and per-key order through kill -9 and a broker
//! outage, the progress record winning over a stale local cursor, and the
//! stop when another writer's record is found.

mod e2e_fixture;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e_fixture::{pgcdc_output, spawn_run, start_streaming, stderr_with, SocketAddr};
use pgcdc_tests::kafka::{produce_foreign, read_topic, Broker, Record};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};
use serde_json::Value;

const TOPIC: &str = "portal.public.permits";

fn kafka_config(url: &str, state: &std::path::Path, brokers: &str, extra: &str) -> String {
    let text = format!(
        "[source]\nurl = \"{url}\"\ntables = [\"public.permits\"]\n\n[state]\ndir = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"kafka\"\ntype = \"kafka\"\ntables = [\"public.permits\"]\n\
         brokers = \"{brokers}\"\ntopic = \"portal.{{schema}}.{{table}}\"\n{extra}",
        state.display()
    );
    e2e_fixture::test_state(&text, url, state)
}

async fn permits_table(pg: &PgCluster) -> anyhow::Result<()> {
    pg.batch(
        "CREATE TABLE permits (id int8 PRIMARY KEY, status text NOT NULL, version int NOT NULL, \
         fee numeric(10,2), issued timestamptz)",
    )
    .await?;
    Ok(())
}

/// Waits until `topic` holds at least `n` records; returns them.
async fn wait_records(
    brokers: &str,
    topic: &str,
    n: usize,
    p: &mut pgcdc_tests::Pgcdc,
    limit: Duration,
) -> anyhow::Result<Vec<Record>> {
    let deadline = Instant::now() + limit;
    loop {
        let b = brokers.to_string();
        let t = topic.to_string();
        let records = tokio::task::spawn_blocking(move || read_topic(&b, &t))
            .await?
            .unwrap_or_default();
        if records.len() >= n {
            return Ok(records);
        }
        if p.has_exited() {
            bail!(
                "pgcdc exited with {} of {n} records in {topic}; stderr:\n{}",
                records.len(),
                p.stderr_tail(30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {n} records in {topic} after {limit:?}; stderr:\n{}",
                records.len(),
                p.stderr_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every record of `TOPIC` once pgcdc has had 2 s more to write a duplicate, if it would.
async fn settled_records(broker: &Broker) -> anyhow::Result<Vec<Record>> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = broker.bootstrap();
    Ok(tokio::task::spawn_blocking(move || read_topic(&b, TOPIC)).await??)
}

/// Runs pgcdc until `rows` rows inserted by `insert` are in `TOPIC`, then stops it
/// with SIGTERM (a clean stop, which writes the final progress record).
async fn deliver_and_stop(
    pg: &PgCluster,
    broker: &Broker,
    cfg: &ConfigFile,
    insert: &str,
    rows: usize,
) -> anyhow::Result<()> {
    let mut p = start_streaming(pg, cfg).await?;
    pg.batch(insert).await?;
    wait_records(
        &broker.bootstrap(),
        TOPIC,
        rows,
        &mut p,
        Duration::from_secs(60),
    )
    .await?;
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    Ok(())
}

/// The `after.id` of each record, in order.
fn after_ids(records: &[Record]) -> anyhow::Result<Vec<i64>> {
    records
        .iter()
        .map(|r| json(r)?["after"]["id"].as_i64().context("after.id"))
        .collect()
}

fn json(r: &Record) -> anyhow::Result<Value> {
    serde_json::from_str(
        r.value
            .as_deref()
            .context("tombstone where a value was expected")?,
    )
    .context("record value is not JSON")
}

/// Kafka's Java `murmur2` (used by `murmur2_random`), for partition agreement.
fn murmur2(data: &[u8]) -> i32 {
    let seed: u32 = 0x9747_b28c;
    let m: u32 = 0x5bd1_e995;
    let r = 24;
    let len = data.len() as u32;
    let mut h: u32 = seed ^ len;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(m);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(m);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(m);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

fn java_partition(key: &str, partitions: i32) -> i32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

#[tokio::test(flavor = "multi_thread")]
async fn debezium_records_keys_headers_partitions_and_tombstones() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&kafka_config(
        &pg.url(),
        state.path(),
        &broker.bootstrap(),
        "create_topics = true\npartitions = 3\ntombstones = true\nserver_name = \"portal\"\n",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits VALUES (1, 'pending', 1, 12.50, '2026-11-26 10:00:00+00'), \
         (2, 'pending', 1, NULL, NULL), (3, 'pending', 1, NULL, NULL); \
         UPDATE permits SET status = 'approved', version = 2 WHERE id = 1; \
         DELETE FROM permits WHERE id = 2;",
    )
    .await?;
    // 3 inserts + 1 update + 1 delete + its tombstone.
    let records = wait_records(
        &broker.bootstrap(),
        TOPIC,
        6,
        &mut p,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(records.len() == 6, "expected 6 records, got {records:#?}");
    let xid: i64 = pg.query_scalar("SELECT txid_current()::int8").await?;

    for r in &records {
        let key = r.key.as_deref().context("record without key")?;
        ensure!(
            r.partition == java_partition(key, 3),
            "key {key} is in partition {} but Java's murmur2 puts it in {}",
            r.partition,
            java_partition(key, 3)
        );
        for h in ["pgcdc-event-id", "pgcdc-lsn", "pgcdc-table", "pgcdc-op"] {
            ensure!(r.headers.contains_key(h), "record lacks header {h}: {r:?}");
        }
        ensure!(r.headers["pgcdc-table"] == "public.permits");
    }
    let by_key = |k: &str| -> Vec<&Record> {
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some(k))
            .collect()
    };
    // Key 1: insert then update, in order, in one partition.
    let one = by_key("{\"id\":1}");
    ensure!(one.len() == 2, "key 1: {one:?}");
    let ins = json(one[0])?;
    let upd = json(one[1])?;
    ensure!(
        ins["op"] == "c" && upd["op"] == "u",
        "ops: {} {}",
        ins["op"],
        upd["op"]
    );
    ensure!(ins["before"].is_null());
    ensure!(ins["after"]["id"] == 1 && ins["after"]["status"] == "pending");
    ensure!(
        ins["after"]["fee"] == "12.50",
        "numeric as string: {}",
        ins["after"]["fee"]
    );
    ensure!(
        ins["after"]["issued"] == "2026-11-26T10:00:00Z",
        "timestamptz: {}",
        ins["after"]["issued"]
    );
    ensure!(upd["after"]["status"] == "approved" && upd["after"]["version"] == 2);
    let src = &upd["source"];
    ensure!(src["connector"] == "postgresql", "source: {src}");
    ensure!(src["name"] == "portal");
    ensure!(src["db"] == "postgres");
    ensure!(src["schema"] == "public" && src["table"] == "permits");
    ensure!(src["snapshot"] == "false");
    ensure!(
        src["txId"].as_i64().is_some_and(|x| x > 0 && x < xid),
        "txId: {}",
        src["txId"]
    );
    ensure!(
        src["lsn"].as_u64().is_some_and(|l| l > 0),
        "lsn: {}",
        src["lsn"]
    );
    ensure!(
        src["ts_ms"].as_i64().is_some_and(|t| t > 1_700_000_000_000),
        "ts_ms: {}",
        src["ts_ms"]
    );
    ensure!(upd["ts_ms"].as_i64() >= src["ts_ms"].as_i64());
    ensure!(upd.get("transaction").is_some_and(Value::is_null));
    ensure!(one[1].headers["pgcdc-op"] == "update");
    // The event id header is the native event's id; the LSN header is the commit LSN.
    ensure!(one[1].headers["pgcdc-lsn"].contains('/'));
    // Key 2: insert, delete (before = key), then a tombstone with the same key.
    let two = by_key("{\"id\":2}");
    ensure!(two.len() == 3, "key 2: {two:?}");
    let del = json(two[1])?;
    ensure!(
        del["op"] == "d" && del["after"].is_null() && del["before"]["id"] == 2,
        "delete: {del}"
    );
    ensure!(
        two[2].value.is_none(),
        "no tombstone after the delete: {:?}",
        two[2]
    );
    ensure!(two[2].headers["pgcdc-event-id"] == two[1].headers["pgcdc-event-id"]);

    // What an independent client (confluent-kafka, librdkafka from its wheel) sees.
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kafka_consume.py"
        ))
        .args([&broker.bootstrap(), TOPIC])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "kafka_consume.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        lines.len() == 6,
        "confluent-kafka saw {} records",
        lines.len()
    );
    let ops: Vec<String> = lines
        .iter()
        .filter(|l| l["key"] == "{\"id\":1}")
        .map(|l| l["op"].as_str().unwrap_or("").to_string())
        .collect();
    ensure!(ops == ["c", "u"], "confluent-kafka, key 1 ops: {ops:?}");
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    Ok(())
}

const ROWS: i64 = 10_000;
const UPDATES_PER_ROW: i64 = 4;
/// Rows per transaction: 10k inserts + 40k updates = 50k changes in 500 transactions.
const PER_TXN: i64 = 100;

/// Inserts `ROWS` permits, then updates each `UPDATES_PER_ROW` times (version 1..=5).
fn start_load(addr: SocketAddr, pace: Duration) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    load_part(addr, pace, true, 0..UPDATES_PER_ROW)
}

/// The inserts (if `inserts`), then update rounds `rounds`, in one task.
fn load_part(
    addr: SocketAddr,
    pace: Duration,
    inserts: bool,
    rounds: std::ops::Range<i64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let client = addr.connect().await?;
        for from in (1..=ROWS).step_by(PER_TXN as usize).filter(|_| inserts) {
            let to = from + PER_TXN - 1;
            client
                .batch_execute(&format!(
                    "INSERT INTO permits SELECT g, 'pending', 1, NULL, NULL FROM generate_series({from}, {to}) g"
                ))
                .await?;
            tokio::time::sleep(pace).await;
        }
        for round in rounds {
            for from in (1..=ROWS).step_by(PER_TXN as usize) {
                let to = from + PER_TXN - 1;
                client
                    .batch_execute(&format!(
                        "UPDATE permits SET version = version + 1, status = 'v{round}' \
                         WHERE id BETWEEN {from} AND {to}"
                    ))
                    .await?;
                tokio::time::sleep(pace).await;
            }
        }
        Ok(())
    })
}

/// Every (id, version) exactly once, and per key in version order (offset order).
fn assert_exactly_once_in_order(records: &[Record]) -> anyhow::Result<()> {
    let mut versions: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut partition_of: HashMap<i64, i32> = HashMap::new();
    for r in records {
        let v = json(r)?;
        let id = v["after"]["id"].as_i64().context("after.id")?;
        let version = v["after"]["version"].as_i64().context("after.version")?;
        versions.entry(id).or_default().push(version);
        let p = *partition_of.entry(id).or_insert(r.partition);
        ensure!(
            p == r.partition,
            "key {id} in partitions {p} and {}",
            r.partition
        );
    }
    ensure!(
        versions.len() as i64 == ROWS,
        "{} keys of {ROWS}",
        versions.len()
    );
    let expected: Vec<i64> = (1..=UPDATES_PER_ROW + 1).collect();
    let bad: BTreeMap<i64, &Vec<i64>> = versions
        .iter()
        .filter(|(_, v)| **v != expected)
        .map(|(k, v)| (*k, v))
        .take(5)
        .collect();
    ensure!(
        bad.is_empty(),
        "keys not seen exactly once per version in order (expected {expected:?}): {bad:?}"
    );
    Ok(())
}

/// A broker with `TOPIC` in `partitions`, a cluster with the permits table,
/// and a config for them with `extra` sink lines.
async fn load_setup(
    partitions: i32,
    extra: &str,
) -> anyhow::Result<(Broker, PgCluster, tempfile::TempDir, ConfigFile)> {
    let broker = Broker::start().await?;
    broker.create_topic(TOPIC, partitions)?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&kafka_config(
        &pg.url(),
        state.path(),
        &broker.bootstrap(),
        extra,
    ))?;
    Ok((broker, pg, state, cfg))
}

const TOTAL: usize = (ROWS * (UPDATES_PER_ROW + 1)) as usize;

/// Waits for the load's `TOTAL` changes in `TOPIC` and checks them: every one
/// exactly once (after 2 s more for a duplicate to show up), per key in order.
async fn all_changes_once_in_order(
    broker: &Broker,
    p: &mut pgcdc_tests::Pgcdc,
) -> anyhow::Result<()> {
    wait_records(
        &broker.bootstrap(),
        TOPIC,
        TOTAL,
        p,
        Duration::from_secs(240),
    )
    .await?;
    let records = settled_records(broker).await?;
    assert_exactly_once_in_order(&records)?;
    ensure!(
        records.len() == TOTAL,
        "{} records for {TOTAL} changes",
        records.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_load_every_change_exactly_once_in_key_order() -> anyhow::Result<()> {
    let (broker, pg, _state, cfg) = load_setup(3, "").await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let load = start_load(SocketAddr::of(&pg), Duration::from_millis(15));
    for round in 1..=3usize {
        // Let some records through, then kill mid-delivery.
        wait_records(
            &broker.bootstrap(),
            TOPIC,
            round * TOTAL / 6,
            &mut p,
            Duration::from_secs(120),
        )
        .await?;
        p.kill9()?;
        ensure!(p.wait_exit(Duration::from_secs(10)).await.is_some());
        p = start_streaming(&pg, &cfg).await?;
    }
    load.await??;
    all_changes_once_in_order(&broker, &mut p).await?;
    let resumed = stderr_with(&p, &["resuming from the progress record"]).await;
    ensure!(
        resumed.contains("resuming from the progress record"),
        "no resume logged:\n{resumed}"
    );
    Ok(())
}

/// librdkafka's local queue holds fewer records than a batch hands over: the
/// sink waits for room (backpressure) instead of failing the records it refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_queue_smaller_than_a_batch_slows_delivery_without_failing_it(
) -> anyhow::Result<()> {
    let (broker, pg, _state, cfg) = load_setup(
        3,
        "[sink.librdkafka]\n\"queue.buffering.max.messages\" = 100\n",
    )
    .await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // Written before pgcdc reads it: a backlog, delivered in full batches.
    load_part(
        SocketAddr::of(&pg),
        Duration::ZERO,
        true,
        0..UPDATES_PER_ROW,
    )
    .await??;
    all_changes_once_in_order(&broker, &mut p).await?;
    let log = p.stderr();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Kafka delivery failed"))
        .take(5)
        .collect();
    ensure!(
        failed.is_empty(),
        "records the full queue refused were failed and retried instead of waiting for room:\n{}",
        failed.join("\n")
    );
    Ok(())
}

/// A record over librdkafka's `message.max.bytes`, refused as it is handed
/// over, is dead-lettered with the reason; its row's later change in the same
/// batch is parked behind it, and the other rows are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_for_the_producer_is_dead_lettered_and_the_rest_delivered(
) -> anyhow::Result<()> {
    let (broker, pg, _state, cfg) =
        load_setup(3, "[sink.librdkafka]\n\"message.max.bytes\" = 100000\n").await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits VALUES (1, 'pending', 1, NULL, NULL); \
         INSERT INTO permits VALUES (2, repeat('x', 200000), 1, NULL, NULL); \
         UPDATE permits SET status = 'approved', version = 2 WHERE id = 2; \
         INSERT INTO permits VALUES (3, 'pending', 1, NULL, NULL);",
    )
    .await?;
    let records = wait_records(
        &broker.bootstrap(),
        TOPIC,
        2,
        &mut p,
        Duration::from_secs(60),
    )
    .await?;
    let ids = after_ids(&records)?;
    ensure!(
        ids.len() == 2 && !ids.contains(&2),
        "records of ids {ids:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let dlq = loop {
        let (_, out, _) =
            pgcdc_output(&["dlq", "list", "--config", &cfg.arg(), "--sink", "kafka"]).await?;
        if out.contains("permits") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ensure!(
        dlq.lines().filter(|l| l.contains("permits")).count() == 2
            && dlq.to_lowercase().contains("too large"),
        "the large row is not dead-lettered with its reason:\n{dlq}\nstderr:\n{}",
        p.stderr_tail(20)
    );
    // The sink goes on: a later row arrives, and row 2 never reached Kafka.
    pg.batch("INSERT INTO permits VALUES (4, 'pending', 1, NULL, NULL);")
        .await?;
    wait_records(
        &broker.bootstrap(),
        TOPIC,
        3,
        &mut p,
        Duration::from_secs(60),
    )
    .await?;
    let records = settled_records(&broker).await?;
    let ids = after_ids(&records)?;
    ensure!(
        ids.len() == 3 && !ids.contains(&2),
        "row 2's later change went ahead of its dead letter: records of ids {ids:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_mid_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let (broker, pg, state, _) = load_setup(2, "").await?;
    // Records time out inside the outage, so pgcdc's own recovery runs (new producer
    // session, read-back from the progress record), not only librdkafka's retries.
    let cfg = ConfigFile::new(&kafka_config(
        &pg.url(),
        state.path(),
        &broker.bootstrap(),
        "[sink.librdkafka]\n\"message.timeout.ms\" = 2000\n",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // Inserts and two update rounds before the outage, two more during it, so
    // changes are journaled and their deliveries time out while Kafka is away.
    load_part(SocketAddr::of(&pg), Duration::from_millis(5), true, 0..2).await??;
    wait_records(
        &broker.bootstrap(),
        TOPIC,
        TOTAL / 5,
        &mut p,
        Duration::from_secs(120),
    )
    .await?;
    broker.cut();
    let load = load_part(
        SocketAddr::of(&pg),
        Duration::from_millis(5),
        false,
        2..UPDATES_PER_ROW,
    );
    // The reader keeps journaling while Kafka is away.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ensure!(
        !p.has_exited(),
        "pgcdc exited during the outage:\n{}",
        p.stderr_tail(30)
    );
    broker.restore();
    load.await??;
    all_changes_once_in_order(&broker, &mut p).await?;
    // The cut lands either while records are in flight or while their progress
    // record is: each path says so in its own words, and each retries.
    let log = stderr_with(&p, &["Kafka"]).await;
    ensure!(
        log.contains("Kafka delivery failed") || log.contains("cannot write the progress record"),
        "the outage went unnoticed:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_local_cursor_loses_to_the_progress_record() -> anyhow::Result<()> {
    let (broker, pg, state, cfg) = load_setup(1, "").await?;
    deliver_and_stop(
        &pg,
        &broker,
        &cfg,
        "INSERT INTO permits SELECT g, 'pending', 1, NULL, NULL FROM generate_series(1, 500) g",
        500,
    )
    .await?;
    // The local cursor goes back to the start, as a restored backup of the state dir would.
    let moved = pgcdc::journal::testing::restore_cursor(state.path(), "kafka", 0)?;
    ensure!(moved, "no cursor row for sink kafka");
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits SELECT g, 'pending', 1, NULL, NULL FROM generate_series(501, 600) g",
    )
    .await?;
    wait_records(
        &broker.bootstrap(),
        TOPIC,
        600,
        &mut p,
        Duration::from_secs(60),
    )
    .await?;
    let records = settled_records(&broker).await?;
    ensure!(
        records.len() == 600,
        "{} records for 600 inserts: the stale cursor re-sent",
        records.len()
    );
    let log = stderr_with(&p, &["local cursor is stale"]).await;
    ensure!(
        log.contains("local cursor is stale"),
        "no stale-cursor notice:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_record_in_a_written_partition_stops_pgcdc() -> anyhow::Result<()> {
    let (broker, pg, _state, cfg) = load_setup(1, "").await?;
    deliver_and_stop(
        &pg,
        &broker,
        &cfg,
        "INSERT INTO permits VALUES (1, 'pending', 1, NULL, NULL)",
        1,
    )
    .await?;
    produce_foreign(
        &broker.bootstrap(),
        TOPIC,
        "{\"id\":1}",
        "{\"not\":\"pgcdc\"}",
    )?;
    let mut p = spawn_run(&cfg)?;
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("pgcdc did not stop on the foreign record")?;
    ensure!(!status.success());
    let log = stderr_with(&p, &["did not write", "only writer"]).await;
    ensure!(
        log.contains(TOPIC) && log.contains("did not write") && log.contains("only writer"),
        "error does not say what was found and what to do:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_is_named_unless_create_topics() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&kafka_config(
        &pg.url(),
        state.path(),
        &broker.bootstrap(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO permits VALUES (1, 'pending', 1, NULL, NULL)")
        .await?;
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("pgcdc did not stop on the missing topic")?;
    ensure!(!status.success());
    let log = stderr_with(&p, &["does not exist", "create_topics"]).await;
    ensure!(
        log.contains(&format!("topic {TOPIC} does not exist"))
            && log.contains("create_topics = true"),
        "error does not name the topic and the fix:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_the_broker_and_refuses_managed_options() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    broker.create_topic("fixed.topic", 2)?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    let state = state_dir()?;
    let text = kafka_config(&pg.url(), state.path(), &broker.bootstrap(), "")
        .replace("portal.{schema}.{table}", "fixed.topic");
    let cfg = ConfigFile::new(&text)?;
    let (code, out, err) = e2e_fixture::pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "check failed ({code}):\n{out}\n{err}");
    ensure!(
        out.contains("ok    sink kafka: Kafka reachable")
            && out.contains("topic fixed.topic has 2 partition(s)"),
        "check output:\n{out}"
    );
    broker.cut();
    let (code, out, _) = e2e_fixture::pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(
        code == 1,
        "check with the broker cut off exited {code}:\n{out}"
    );
    ensure!(
        out.contains("FAIL  sink kafka") && out.contains("brokers"),
        "check output:\n{out}"
    );
    broker.restore();

    let managed = ConfigFile::new(&format!(
        "{text}\n[sink.librdkafka]\n\"enable.idempotence\" = false\n"
    ))?;
    let (code, _, err) = e2e_fixture::pgcdc_output(&["check", "--config", &managed.arg()]).await?;
    ensure!(
        code == 2,
        "a managed librdkafka option was accepted ({code})"
    );
    ensure!(
        err.contains("sink[0].librdkafka.\"enable.idempotence\"")
            && err.contains("managed by pgcdc"),
        "error does not name the key:\n{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_reset_while_stopped_wins_over_the_progress_record() -> anyhow::Result<()> {
    let (broker, pg, _state, cfg) = load_setup(1, "").await?;
    deliver_and_stop(
        &pg,
        &broker,
        &cfg,
        "INSERT INTO permits SELECT g, 'pending', 1, NULL, NULL FROM generate_series(1, 50) g",
        50,
    )
    .await?;
    // Stopped: rewind the sink to the start of the journal.
    let (code, out, err) = e2e_fixture::pgcdc_output(&[
        "checkpoint",
        "reset",
        "--config",
        &cfg.arg(),
        "--sink",
        "kafka",
        "--time",
        "2000-01-01T00:00:00Z",
    ])
    .await?;
    ensure!(code == 0, "reset: {out}{err}");
    let mut p = start_streaming(&pg, &cfg).await?;
    // The operator asked for the 50 again: 100 records, the second 50 a re-send.
    let records = wait_records(
        &broker.bootstrap(),
        TOPIC,
        100,
        &mut p,
        Duration::from_secs(60),
    )
    .await?;
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.headers["pgcdc-event-id"].as_str())
        .collect();
    ensure!(
        ids[..50] == ids[50..100],
        "the re-send is not the same 50 events in order"
    );
    let log = stderr_with(&p, &["checkpoint was reset"]).await;
    ensure!(
        log.contains("checkpoint was reset"),
        "no reset notice:\n{log}"
    );
    Ok(())
}

/// The Debezium defaults end to end, as Debezium's PostgreSQL connector writes them:
/// snapshot marks, per-change `source.lsn` and `sequence`, `before` null for an
/// update under the default identity and the key for a delete, a tombstone after a
/// delete without asking, truncates skipped, jsonb as Postgres' text, a null key for
/// a table without a primary key, `incremental` for resync rows; and a second sink
/// with the opt-ins (`debezium-schema`, `before = "known"`, `truncates`, no tombstones).
#[tokio::test(flavor = "multi_thread")]
async fn debezium_defaults_match_debeziums_connector() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE docs (id int8 PRIMARY KEY, status text NOT NULL, doc jsonb); \
         CREATE TABLE nopk (a int, b text); ALTER TABLE nopk REPLICA IDENTITY FULL; CREATE TABLE zeta (id int PRIMARY KEY); \
         INSERT INTO docs VALUES (1, 'draft', '{\"b\": [1, 2], \"a\": {\"x\": \"y\"}}'), (2, 'draft', NULL); \
         INSERT INTO zeta VALUES (1);",
    )
    .await?;
    let state = state_dir()?;
    let text = format!(
        "[source]\nurl = \"{url}\"\nsnapshot = \"initial\"\ntables = [\"public.docs\", \"public.nopk\", \"public.zeta\"]\n\n\
         [state]\ndir = \"{dir}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[trigger]]\nname = \"statusChanged\"\ntable = \"public.docs\"\nwhen = '.old.status != .new.status'\n\n\
         [[sink]]\nname = \"dbz\"\ntype = \"kafka\"\ntables = [\"public.docs\", \"public.nopk\", \"public.zeta\"]\n\
         brokers = \"{brokers}\"\ntopic = \"dbz.{{schema}}.{{table}}\"\ncreate_topics = true\n\n\
         [[sink]]\nname = \"dbzs\"\ntype = \"kafka\"\ntables = [\"public.docs\", \"public.nopk\", \"public.zeta\"]\n\
         brokers = \"{brokers}\"\ntopic = \"dbzs.{{schema}}.{{table}}\"\ncreate_topics = true\n\
         format = \"debezium-schema\"\nbefore = \"known\"\ntruncates = true\ntombstones = false\n",
        url = pg.url(),
        dir = state.path().display(),
        brokers = broker.bootstrap(),
    );
    let cfg = ConfigFile::new(&text)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let b = broker.bootstrap();
    // The snapshot: docs (first table) rows 1 and 2, zeta (last table) its one row
    // (nopk, without a primary key, cannot be snapshotted in chunks: its snapshot fails).
    let zeta = wait_records(&b, "dbz.public.zeta", 1, &mut p, Duration::from_secs(60)).await?;
    // A first transaction, so the next one's sequence has a last commit.
    pg.batch("INSERT INTO nopk VALUES (2, 'second')").await?;
    pg.batch(
        "BEGIN; UPDATE docs SET status = 'final' WHERE id = 1; \
         UPDATE docs SET doc = '{\"k\": \"v\\n\", \"n\": 1.50}' WHERE id = 2; COMMIT; \
         DELETE FROM docs WHERE id = 1; TRUNCATE nopk; INSERT INTO nopk VALUES (3, 'third');",
    )
    .await?;
    // docs: 2 reads, 2 updates, a delete and its tombstone; nopk: 2 inserts.
    let docs = wait_records(&b, "dbz.public.docs", 6, &mut p, Duration::from_secs(60)).await?;
    let nopk = wait_records(&b, "dbz.public.nopk", 2, &mut p, Duration::from_secs(60)).await?;

    // Snapshot marks, as Debezium's relational snapshot sets them.
    let marks: Vec<String> = docs
        .iter()
        .chain(zeta.iter())
        .filter_map(|r| json(r).ok())
        .filter(|v| v["op"] == "r")
        .map(|v| format!("{}:{}", v["after"], v["source"]["snapshot"]))
        .collect();
    // The tables are copied one after the other (in the order their snapshots were
    // queued): one row is the snapshot's first, one its last, and docs' rows open and
    // close docs' part.
    ensure!(marks.len() == 3, "snapshot rows: {marks:?}");
    let count = |m: &str| {
        marks
            .iter()
            .filter(|x| x.ends_with(&format!(":\"{m}\"")))
            .count()
    };
    ensure!(count("first") == 1 && count("last") == 1, "{marks:?}");
    ensure!(
        marks[0].ends_with(":\"first\"") || marks[0].ends_with(":\"first_in_data_collection\""),
        "docs' first row: {marks:?}"
    );
    ensure!(
        marks[1].ends_with(":\"last\"") || marks[1].ends_with(":\"last_in_data_collection\""),
        "docs' last row: {marks:?}"
    );
    // jsonb as Postgres' own text of it.
    let snap1 = json(&docs[0])?;
    let doc_text: String = pg
        .query_scalar("SELECT '{\"b\": [1, 2], \"a\": {\"x\": \"y\"}}'::jsonb::text")
        .await?;
    ensure!(
        snap1["after"]["doc"] == doc_text.as_str(),
        "jsonb: {} vs {doc_text}",
        snap1["after"]["doc"]
    );

    // The two updates of one transaction: each its own LSN, below the commit LSN.
    let updates: Vec<(&Record, Value)> = docs
        .iter()
        .filter_map(|r| json(r).ok().map(|v| (r, v)))
        .filter(|(_, v)| v["op"] == "u")
        .collect();
    ensure!(updates.len() == 2, "updates: {}", updates.len());
    let (r1, u1) = &updates[0];
    let (_, u2) = &updates[1];
    let lsn1 = u1["source"]["lsn"].as_u64().context("lsn")?;
    let lsn2 = u2["source"]["lsn"].as_u64().context("lsn")?;
    let commit: pgcdc_schema::Lsn = r1.headers["pgcdc-lsn"].parse()?;
    ensure!(
        lsn1 < lsn2 && lsn2 < commit.0,
        "change LSNs {lsn1} {lsn2}, commit {}",
        commit.0
    );
    let seq: Vec<Option<String>> =
        serde_json::from_str(u1["source"]["sequence"].as_str().context("sequence")?)?;
    ensure!(
        seq.len() == 2 && seq[1] == Some(lsn1.to_string()),
        "sequence {seq:?}"
    );
    let last_commit: u64 = seq[0].as_deref().context("no last commit LSN")?.parse()?;
    // The previous transaction (the nopk insert) committed before these changes.
    let prev: pgcdc_schema::Lsn = nopk
        .iter()
        .find(|r| json(r).is_ok_and(|v| v["after"]["a"] == 2))
        .context("nopk insert")?
        .headers["pgcdc-lsn"]
        .parse()?;
    ensure!(
        prev.0 < last_commit && last_commit <= lsn1,
        "last commit {last_commit}, previous commit {}, change {lsn1}",
        prev.0
    );
    // Default identity: an update has no before, even though a trigger watches
    // `.old.status` (pgcdc remembers it); the jsonb update is text.
    ensure!(
        u1["before"].is_null() && u2["before"].is_null(),
        "before: {} {}",
        u1["before"],
        u2["before"]
    );
    ensure!(
        u2["after"]["doc"] == "{\"k\": \"v\\n\", \"n\": 1.50}",
        "jsonb: {}",
        u2["after"]["doc"]
    );
    // The delete: the key as before, then a tombstone, by default.
    let del_at = docs
        .iter()
        .position(|r| json(r).is_ok_and(|v| v["op"] == "d"))
        .context("no delete")?;
    let del = json(&docs[del_at])?;
    ensure!(
        del["before"] == serde_json::json!({"id": 1}),
        "delete before: {}",
        del["before"]
    );
    let tomb = docs
        .get(del_at + 1)
        .context("no tombstone after the delete")?;
    ensure!(
        tomb.value.is_none() && tomb.key == docs[del_at].key,
        "tombstone: {tomb:?}"
    );
    // nopk: no truncate record, null keys.
    for r in &nopk {
        let v = json(r)?;
        ensure!(v["op"] != "t", "a truncate was written: {v}");
        ensure!(
            r.key.is_none(),
            "a table without a primary key has a null key: {r:?}"
        );
    }

    // The opt-in sink: schemas, truncates, pgcdc's old row, no tombstone.
    let sdocs = wait_records(&b, "dbzs.public.docs", 5, &mut p, Duration::from_secs(60)).await?;
    let snopk = wait_records(&b, "dbzs.public.nopk", 3, &mut p, Duration::from_secs(60)).await?;
    ensure!(
        sdocs.iter().all(|r| r.value.is_some()),
        "tombstones = false wrote one"
    );
    let first = json(&sdocs[0])?;
    ensure!(
        first["schema"]["name"] == "pgcdc.public.docs.Envelope",
        "schema: {}",
        first["schema"]
    );
    let key: Value = serde_json::from_str(sdocs[0].key.as_deref().context("key")?)?;
    ensure!(
        key["payload"] == serde_json::json!({"id": 1})
            && key["schema"]["name"] == "pgcdc.public.docs.Key",
        "key: {key}"
    );
    let upd = sdocs
        .iter()
        .filter_map(|r| json(r).ok())
        .find(|v| v["payload"]["op"] == "u")
        .context("no update")?;
    ensure!(
        upd["payload"]["before"]["status"] == "draft",
        "before = known: {}",
        upd["payload"]["before"]
    );
    ensure!(
        snopk
            .iter()
            .filter_map(|r| json(r).ok())
            .any(|v| v["payload"]["op"] == "t"),
        "truncates = true wrote no truncate"
    );

    // A primary key change: a delete of the old key, its tombstone, a create of the
    // new key, with Debezium's key headers.
    pg.batch("UPDATE docs SET id = 3 WHERE id = 2").await?;
    let docs = wait_records(&b, "dbz.public.docs", 9, &mut p, Duration::from_secs(60)).await?;
    let moved = &docs[6..9];
    let (d, c) = (json(&moved[0])?, json(&moved[2])?);
    ensure!(
        d["op"] == "d"
            && d["before"] == serde_json::json!({"id": 2})
            && moved[0].key.as_deref() == Some("{\"id\":2}"),
        "key change, delete: {d}"
    );
    ensure!(
        moved[0]
            .headers
            .get("__debezium.newkey")
            .map(String::as_str)
            == Some("{\"id\":3}"),
        "{:?}",
        moved[0].headers
    );
    ensure!(
        moved[1].value.is_none() && moved[1].key == moved[0].key,
        "key change, tombstone: {:?}",
        moved[1]
    );
    ensure!(
        c["op"] == "c"
            && c["before"].is_null()
            && c["after"]["id"] == 3
            && moved[2].key.as_deref() == Some("{\"id\":3}"),
        "key change, create: {c}"
    );
    ensure!(
        moved[2]
            .headers
            .get("__debezium.oldkey")
            .map(String::as_str)
            == Some("{\"id\":2}"),
        "{:?}",
        moved[2].headers
    );

    // A resync's rows are Debezium's incremental snapshot rows.
    let (code, out, err) = pgcdc_output(&[
        "resync",
        "--config",
        &cfg.arg(),
        "--table",
        "public.docs",
        "--sink",
        "dbz",
    ])
    .await?;
    ensure!(code == 0, "resync: {out}{err}");
    let docs = wait_records(&b, "dbz.public.docs", 10, &mut p, Duration::from_secs(60)).await?;
    let last = json(docs.last().context("no record")?)?;
    ensure!(
        last["op"] == "r" && last["source"]["snapshot"] == "incremental",
        "resync row: {last}"
    );
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    Ok(())
}
