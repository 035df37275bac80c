//! Kafka delivery benchmark: pgcdc's Kafka sink against a plain librdkafka
//! producer, both writing to the same nisshi broker in the same run.
//!
//! `BENCH_ONLY=latency` runs only the latency part, `BENCH_ONLY=throughput` only
//! the first two; `BENCH_ONLY=replay` re-produces a topic's records (see `replay`).
//!
//! 1. Journal → broker: the broker is cut off while Postgres commits `ROWS`
//!    inserts, so they wait in pgcdc's journal; then it is restored and the
//!    sink's cursor is timed from its first move to the journal head.
//! 2. Plain producer: the records pgcdc wrote (same keys, values, headers)
//!    are produced again to another topic by an rdkafka `FutureProducer` with
//!    the same settings (idempotent, acks=all, murmur2_random), all sent, then
//!    all acks awaited.
//! 3. Latency at a steady 1,000 changes/s: 10 single-row transactions every
//!    10 ms for 15 s; latency = consumer receipt − the commit time in the
//!    record (`source.ts_us`), an upper bound of commit-to-ack.
//!
//! Run: `scripts/bench-kafka` (builds pgcdc and this binary in release mode).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgcdc_tests::kafka::{read_topic, Broker};
use pgcdc_tests::{state_dir, wait_streaming, ConfigFile, PgCluster, Pgcdc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const ROWS: i64 = 100_000;
const TOPIC: &str = "bench.public.permits";

fn config(pg: &PgCluster, state: &Path, brokers: &str) -> String {
    format!(
        r#"
[source]
url = "{}"
tables = ["public.permits"]
[state]
dir = "{}"
[admin]
listen = "127.0.0.1:0"
[[sink]]
name = "kafka"
type = "kafka"
tables = ["public.permits"]
brokers = "{brokers}"
topic = "bench.{{schema}}.{{table}}"
"#,
        pg.url(),
        state.display()
    )
}

/// A session on the journal in the state dir.
fn journal(state: &Path) -> anyhow::Result<Box<dyn pgcdc::journal::StateStore>> {
    Ok(pgcdc::journal::Store::sqlite(state).open(pgcdc::journal::Access::Existing)?)
}

/// (journal head, the sink's cursor) read from the state dir.
fn journal_positions(state: &Path) -> anyhow::Result<(i64, i64)> {
    let journal = journal(state)?;
    let head = journal.head()?.pos;
    let cursor = journal
        .cursors()?
        .into_iter()
        .find(|c| c.sink == "kafka")
        .map_or(0, |c| c.pos);
    Ok((head, cursor))
}

async fn table(pg: &PgCluster) -> anyhow::Result<()> {
    pg.batch(
        "CREATE TABLE permits (id int8 PRIMARY KEY, status text, applicant text, fee numeric, \
         updated_at timestamptz DEFAULT now())",
    )
    .await?;
    Ok(())
}

/// Journal → broker changes/s, and the records pgcdc wrote.
async fn pgcdc_throughput(
    broker: &Broker,
) -> anyhow::Result<(f64, Vec<pgcdc_tests::kafka::Record>)> {
    broker.create_topic(TOPIC, 3)?;
    let pg = PgCluster::new().await?;
    table(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg, state.path(), &broker.bootstrap()))?;
    broker.cut();
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
    wait_streaming(&pg, &mut p).await?;
    pg.batch(&format!(
        "INSERT INTO permits (id, status, applicant, fee) \
         SELECT g, 'pending', 'applicant ' || g, 125.50 FROM generate_series(1, {ROWS}) g"
    ))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while journal_positions(state.path())?.0 < ROWS {
        if Instant::now() > deadline || p.has_exited() {
            bail!("the journal did not fill:\n{}", p.stderr_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.restore();
    let (mut t0, mut c0) = (None, 0);
    let t1 = loop {
        let (head, cursor) = journal_positions(state.path())?;
        if cursor > 0 && t0.is_none() {
            t0 = Some(Instant::now());
            c0 = cursor;
        }
        if cursor >= head {
            break Instant::now();
        }
        if Instant::now() > deadline || p.has_exited() {
            bail!("the sink did not catch up:\n{}", p.stderr_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let t0 = t0.context("cursor never moved")?;
    let rate = (ROWS - c0) as f64 / t1.duration_since(t0).as_secs_f64();
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    let b = broker.bootstrap();
    let records = tokio::task::spawn_blocking(move || read_topic(&b, TOPIC)).await??;
    Ok((rate, records))
}

/// The same records through a plain idempotent producer to `topic` (which
/// exists): records/s.
async fn plain_producer(
    bootstrap: &str,
    topic: &str,
    records: &[pgcdc_tests::kafka::Record],
) -> anyhow::Result<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .create()?;
    let started = Instant::now();
    let mut futures = std::collections::VecDeque::with_capacity(records.len());
    for r in records {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v);
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    futures.push_back(f);
                    break;
                }
                Err((_, back)) => {
                    // Queue full (100k records): the oldest acknowledgement makes room.
                    rec = back;
                    match futures.pop_front() {
                        Some(f) => {
                            f.await?.map_err(|(e, _)| e)?;
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
        }
    }
    for f in futures {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn latency(broker: &Broker) -> anyhow::Result<(f64, f64, f64, usize)> {
    let topic = "lat.public.permits";
    broker.create_topic(topic, 3)?;
    let pg = PgCluster::new().await?;
    table(&pg).await?;
    let state = state_dir()?;
    // Its own progress topic: the throughput run's progress record is for another journal.
    let text = config(&pg, state.path(), &broker.bootstrap())
        .replace("bench.{schema}", "lat.{schema}")
        + "progress_topic = \"lat.progress\"\n";
    let cfg = ConfigFile::new(&text)?;
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
    wait_streaming(&pg, &mut p).await?;
    // Steady state: the sink has read its progress record and is delivering.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.stderr().contains("sink runner started") {
        if Instant::now() > deadline || p.has_exited() {
            bail!("the Kafka sink did not start:\n{}", p.stderr_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A live consumer from the start of the (empty) topic.
    let bootstrap = broker.bootstrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<usize>();
    let consumer_thread = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "bench")
            .set("fetch.wait.max.ms", "5")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for part in 0..3 {
            tpl.add_partition_offset(topic, part, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let mut lat = Vec::new();
        let mut expected = usize::MAX;
        let deadline = Instant::now() + Duration::from_secs(120);
        while lat.len() < expected {
            if Instant::now() > deadline {
                bail!("only {} records arrived", lat.len());
            }
            if let Ok(n) = stop_rx.try_recv() {
                expected = n;
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let now_us = chrono::Utc::now().timestamp_micros();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                let commit_us = v["source"]["ts_us"].as_i64().context("source.ts_us")?;
                lat.push((now_us - commit_us) as f64 / 1000.0);
            }
        }
        Ok(lat)
    });
    let client = pg.client().await?;
    let stmt = client
        .prepare("INSERT INTO permits (id, status) VALUES ($1, 'approved')")
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut id: i64 = 0;
    while started.elapsed() < Duration::from_secs(15) {
        tick.tick().await;
        for _ in 0..10 {
            id += 1;
            client.execute(&stmt, &[&id]).await?;
        }
    }
    let sent = id as usize;
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    stop_tx.send(sent)?;
    let mut lat = tokio::task::spawn_blocking(move || consumer_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    lat.sort_by(f64::total_cmp);
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    let mut acked = commit_to_ack(state.path())?;
    let slow: Vec<(usize, f64)> = acked
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, l)| *l > 100.0)
        .collect();
    println!(
        "changes acked after > 100 ms: {} (positions {:?} .. {:?})",
        slow.len(),
        slow.first(),
        slow.last()
    );
    acked.sort_by(f64::total_cmp);
    println!(
        "latency commit -> ack (pgcdc's audit: batch start + latency) ({} changes): p50 {:.1} ms, p99 {:.1} ms",
        acked.len(),
        percentile(&acked, 0.5),
        percentile(&acked, 0.99)
    );
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99), offered, sent))
}

/// Commit-to-ack per change, from pgcdc's audit (attempt start + latency) and journal.
fn commit_to_ack(state: &Path) -> anyhow::Result<Vec<f64>> {
    use std::collections::HashMap;
    let journal = journal(state)?;
    let mut acks: HashMap<String, (String, u64)> = HashMap::new();
    for a in journal.audit_by_sink("kafka", "1970-01-01T00:00:00Z", 100_000_000)? {
        if a.outcome == pgcdc_sinks::AttemptOutcome::Delivered {
            acks.insert(a.event_id, (a.at.to_string(), a.latency_ms));
        }
    }
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = journal.read_after(after, 10_000)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.pos;
        for e in page {
            let (Some((at, latency_ms)), Some(commit)) = (
                acks.get(&e.event.id.to_string()),
                e.event.commit_time.as_deref(),
            ) else {
                continue;
            };
            let at = chrono::DateTime::parse_from_rfc3339(at)?.timestamp_micros();
            let commit = chrono::DateTime::parse_from_rfc3339(commit)?.timestamp_micros();
            out.push((at + *latency_ms as i64 * 1000 - commit) as f64 / 1000.0);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var("BENCH_ONLY").as_deref() == Ok("replay") {
        return replay().await;
    }
    let broker = Broker::start().await?;
    println!(
        "pgcdc Kafka delivery benchmark ({ROWS} changes, nisshi in-memory broker, 3 partitions)"
    );
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        let (p50, p99, offered, n) = latency(&broker).await?;
        println!("latency commit -> consumer receipt at {offered:.0} changes/s ({n} changes): p50 {p50:.1} ms, p99 {p99:.1} ms");
        return Ok(());
    }
    let (rate, records) = pgcdc_throughput(&broker).await?;
    println!(
        "pgcdc journal -> broker acked: {rate:>9.0} changes/s ({} records)",
        records.len()
    );
    broker.create_topic("bench.plain", 3)?;
    let plain = plain_producer(&broker.bootstrap(), "bench.plain", &records).await?;
    println!("plain rdkafka producer:        {plain:>9.0} records/s (same records, same settings)");
    println!("ratio pgcdc / plain:           {:>9.2}", rate / plain);
    if std::env::var("BENCH_ONLY").as_deref() == Ok("throughput") {
        return Ok(());
    }
    let (p50, p99, offered, n) = latency(&broker).await?;
    println!("latency commit -> consumer receipt at {offered:.0} changes/s ({n} changes): p50 {p50:.1} ms, p99 {p99:.1} ms");
    Ok(())
}

/// `BENCH_ONLY=replay`: the records of topic `BENCH_TOPIC` on the broker at
/// `BENCH_BOOTSTRAP`, produced again by the plain producer to the existing
/// topic `BENCH_DEST`; prints the records and the seconds the producer took
/// (`scripts/bench-stream`'s floor for Postgres -> Kafka: what writing these
/// records costs without reading or rendering them).
async fn replay() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let (bootstrap, topic, dest) = (
        var("BENCH_BOOTSTRAP")?,
        var("BENCH_TOPIC")?,
        var("BENCH_DEST")?,
    );
    let b = bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&b, &topic)).await??;
    let cpu = cpu_secs()?;
    let rate = plain_producer(&bootstrap, &dest, &records).await?;
    let cpu = cpu_secs()? - cpu;
    println!(
        "{} {:.2} {cpu:.2}",
        records.len(),
        records.len() as f64 / rate
    );
    Ok(())
}

/// This process's CPU time so far (user + system), from `/proc/self/stat`
/// (in the kernel's fixed user-visible tick of 1/100 s).
fn cpu_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) end with its ')'.
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let field = |i: usize| -> anyhow::Result<f64> {
        Ok(rest
            .split_whitespace()
            .nth(i)
            .context("/proc/self/stat field")?
            .parse()?)
    };
    // utime and stime, fields 14 and 15 of the line (the state, field 3, is the first here).
    Ok((field(11)? + field(12)?) / 100.0)
}
