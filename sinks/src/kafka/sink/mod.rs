//! The Kafka sink: idempotent producer, progress records and read-back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use pgcdc_schema::debezium::{self, DebeziumSource};
use pgcdc_schema::mapping::JqProgram;
use pgcdc_schema::Op;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::config::{Format, KafkaSinkConfig, TopicTemplate};
use super::context::SinkContext;
use super::progress::{self, Progress, ReadBackError, RecordId};
use crate::{Attempt, AttemptOutcome, AuditLog, Checkpoint, ItemResult, Outgoing, Sink, SinkError};

mod topics;

/// How long a read-back or metadata request may go without an answer.
const STALL: Duration = Duration::from_secs(30);
/// Default `message.timeout.ms`: how long librdkafka retries one record before
/// the sink takes over (new producer session, read-back, retry).
const MESSAGE_TIMEOUT_MS: &str = "30000";
/// With nothing produced, the progress record still follows the cursor, at most this often.
const PROGRESS_IDLE_INTERVAL: Duration = Duration::from_secs(5);
/// While records flow, a progress record is written at most this often (each costs a
/// round trip), or after `PROGRESS_MAX_RECORDS` records: that bounds what a read-back
/// reads and keeps in memory.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
const PROGRESS_MAX_RECORDS: usize = 100_000;
/// Journal events per batch: large batches keep the producer's pipeline full.
const BATCH_SIZE: usize = 5_000;
/// Items rendered before they are handed to the producer, within a batch.
const RENDER_CHUNK: usize = 500;
/// Backoff between recovery rounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why building the sink failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// The topic template or key program is invalid.
    #[error("sink {sink}: {message}")]
    Config {
        /// Sink name.
        sink: String,
        /// What is wrong.
        message: String,
    },
}

/// Deployment facts the sink cannot read from its own config.
#[derive(Debug, Clone)]
pub struct KafkaSinkContext {
    /// Source database name (Debezium `source.db`).
    pub db: String,
    /// pgcdc's version (Debezium `source.version`).
    pub version: String,
    /// The sink has a `transform`: record values are its output, whatever `format` says.
    pub transformed: bool,
    /// Where attempts are recorded.
    pub audit: AuditLog,
}

/// One Kafka record to write for an item.
struct Rec {
    item: usize,
    id: RecordId,
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    lsn: String,
    table: String,
    op: &'static str,
}

/// Failure of one round, for the whole sink.
enum Failure {
    /// Retry after recovery.
    Transient(String),
    /// Stop the sink: an operator must act.
    Definite(String),
}

impl From<ReadBackError> for Failure {
    fn from(e: ReadBackError) -> Self {
        match e {
            ReadBackError::Transient { .. } => Failure::Transient(e.to_string()),
            ReadBackError::Definite(m) => Failure::Definite(m),
        }
    }
}

/// Delivers items as Kafka records, exactly once (see the module docs).
pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    topic: TopicTemplate,
    key: Option<JqProgram>,
    source: DebeziumSource,
    transformed: bool,
    audit: AuditLog,
    base: ClientConfig,
    /// Values of secret pass-through properties (masked in librdkafka's messages).
    masks: std::sync::Arc<Vec<String>>,
    producer: Option<FutureProducer<SinkContext>>,
    /// The last progress record written (or read at start).
    progress: Progress,
    /// The HA epoch this process leads with, carried by its progress records.
    epoch: Option<i64>,
    /// Next offsets acknowledged since `progress` was written.
    next: BTreeMap<(String, i32), i64>,
    /// Records the read-back found after the progress record, not yet met again.
    seen: HashSet<RecordId>,
    /// Something was produced since the last progress record.
    dirty: bool,
    /// Records acknowledged since the last progress record.
    since_progress: usize,
    last_progress_write: Instant,
    /// The last position the runner settled (for the final record at shutdown).
    last_at: Option<Checkpoint>,
    /// When the batch in delivery started, RFC 3339 (for audit records).
    batch_started_at: String,
    /// The same instant in Unix ms (Debezium's top-level `ts_ms`).
    batch_started_ms: i64,
}

impl KafkaSink {
    /// Marks its progress records with the HA epoch of the process that writes them,
    /// so a record of an older leader written late never wins over a newer one.
    pub fn with_epoch(mut self, epoch: Option<i64>) -> KafkaSink {
        self.epoch = epoch;
        self
    }

    /// Builds the sink; nothing connects until `resume`.
    pub fn new(
        name: &str,
        config: &KafkaSinkConfig,
        key_prefix: &str,
        ctx: KafkaSinkContext,
    ) -> Result<KafkaSink, KafkaSinkError> {
        let err = |message: String| KafkaSinkError::Config {
            sink: name.to_string(),
            message,
        };
        let topic = TopicTemplate::parse(&config.topic).map_err(err)?;
        let key = config
            .key
            .as_deref()
            .map(|src| JqProgram::compile(&format!("{key_prefix}.key"), src))
            .transpose()
            .map_err(|e| err(e.to_string()))?;
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.brokers)
            .set("client.id", format!("pgcdc-{name}"));
        for (k, v) in &config.librdkafka {
            base.set(k, v.to_string());
        }
        Ok(KafkaSink {
            name: name.to_string(),
            config: config.clone(),
            topic,
            key,
            source: DebeziumSource {
                name: config.server_name.clone(),
                db: ctx.db,
                version: ctx.version,
            },
            transformed: ctx.transformed,
            audit: ctx.audit,
            masks: std::sync::Arc::new(config.secret_values()),
            base,
            producer: None,
            progress: Progress::default(),
            epoch: None,
            next: BTreeMap::new(),
            seen: HashSet::new(),
            dirty: false,
            since_progress: 0,
            last_progress_write: Instant::now(),
            batch_started_at: String::new(),
            batch_started_ms: 0,
            last_at: None,
        })
    }

    fn producer(&mut self) -> Result<FutureProducer<SinkContext>, Failure> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let mut cfg = self.base.clone();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("allow.auto.create.topics", "false");
        if cfg.get("message.timeout.ms").is_none() && cfg.get("delivery.timeout.ms").is_none() {
            cfg.set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
        }
        let producer: FutureProducer<SinkContext> =
            cfg.create_with_context(self.context()).map_err(|e| {
                Failure::Definite(format!(
                    "cannot create the Kafka producer: {}; check brokers and [sink.librdkafka]",
                    self.config.redact_kafka_error(&e)
                ))
            })?;
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// The records of one item (its tombstone too, after a delete when configured).
    fn records(&self, index: usize, item: &Outgoing) -> Result<Vec<Rec>, String> {
        let event = &item.event;
        let topic = self
            .topic
            .render(&event.schema, &event.table, event.trigger.as_deref());
        super::config::check_topic_name(&topic)?;
        let key = match &self.key {
            None => event
                .key
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()
                .map_err(|e| e.to_string())?,
            Some(program) => {
                let input = serde_json::to_value(&**event).map_err(|e| e.to_string())?;
                // jq may block up to `[jq] timeout_ms` (it runs in pgcdc's sandbox).
                let out = off_executor(|| program.run(&input)).map_err(|e| e.to_string())?;
                let first = out
                    .into_iter()
                    .next()
                    .ok_or("the key program yielded nothing")?;
                Some(serde_json::to_vec(&first).map_err(|e| e.to_string())?)
            }
        };
        let value = if !self.transformed && self.config.format == Format::Debezium {
            debezium::to_vec(event, &self.source, self.batch_started_ms)
        } else {
            serde_json::to_vec(&item.body)
        }
        .map_err(|e| e.to_string())?;
        let id = item.delivery_id();
        let mut recs = vec![Rec {
            item: index,
            id: (id.clone(), false),
            topic: topic.clone(),
            key: key.clone(),
            value: Some(value),
            lsn: event.lsn.to_string(),
            table: event.qualified_table(),
            op: event.op.as_str(),
        }];
        if self.config.tombstones && event.op == Op::Delete && key.is_some() {
            recs.push(Rec {
                item: index,
                id: (id, true),
                topic,
                key,
                value: None,
                lsn: event.lsn.to_string(),
                table: event.qualified_table(),
                op: event.op.as_str(),
            });
        }
        Ok(recs)
    }

    async fn write_progress(&mut self, record: &Progress) -> Result<(), Failure> {
        let producer = self.producer()?;
        let value = serde_json::to_vec(record).map_err(|e| Failure::Definite(e.to_string()))?;
        let delivery = producer
            .send_result(
                FutureRecord::to(&self.config.progress_topic)
                    .key(self.name.as_bytes())
                    .payload(&value),
            )
            .map_err(|(e, _)| Failure::Transient(format!("progress record: {e}")))?;
        match delivery.await {
            Ok(Ok(_)) => {
                self.last_progress_write = Instant::now();
                Ok(())
            }
            Ok(Err((e, _))) => Err(Failure::Transient(format!("progress record: {e}"))),
            Err(_) => Err(Failure::Transient(
                "progress record: producer closed".into(),
            )),
        }
    }

    /// Produces `recs[pending]` in order; one result per pending record.
    async fn send(
        &mut self,
        recs: &[Rec],
        pending: &[usize],
    ) -> Result<Vec<Result<(i32, i64), KafkaError>>, Failure> {
        let futures = self.enqueue(recs, pending).await?;
        Ok(self.await_all(futures).await)
    }

    /// Hands `recs[pending]` to the producer, in order (new topics registered first).
    async fn enqueue(
        &mut self,
        recs: &[Rec],
        pending: &[usize],
    ) -> Result<Vec<Option<DeliveryFuture>>, Failure> {
        // Only topics not yet in the progress record (almost always none) are collected.
        let topics: BTreeSet<String> = pending
            .iter()
            .map(|&i| &recs[i].topic)
            .filter(|t| !self.progress.topics.contains_key(*t))
            .cloned()
            .collect();
        self.register_topics(topics).await?;
        let producer = self.producer()?;
        let mut futures = Vec::with_capacity(pending.len());
        for &i in pending {
            let r = &recs[i];
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header {
                    key: progress::H_EVENT_ID,
                    value: Some(r.id.0.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_LSN,
                    value: Some(r.lsn.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_TABLE,
                    value: Some(r.table.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_OP,
                    value: Some(r.op.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_SINK,
                    value: Some(self.name.as_bytes()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&r.topic).headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            futures.push(match producer.send_result(record) {
                Ok(f) => Some(f),
                Err((e, _)) => {
                    // The queue is full or the producer failed: the round fails and recovers.
                    tracing::debug!(sink = %self.name, error = %e, "enqueue failed");
                    None
                }
            });
        }
        Ok(futures)
    }

    /// The acknowledgements of enqueued records, in order.
    async fn await_all(
        &self,
        futures: Vec<Option<DeliveryFuture>>,
    ) -> Vec<Result<(i32, i64), KafkaError>> {
        let enqueued = Instant::now();
        let mut out = Vec::with_capacity(futures.len());
        for f in futures {
            out.push(match f {
                None => Err(KafkaError::Canceled),
                Some(f) => match f.await {
                    Ok(Ok(d)) => Ok((d.partition, d.offset)),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
            });
        }
        tracing::debug!(sink = %self.name, records = out.len(), acks_ms = enqueued.elapsed().as_millis() as u64, "batch acknowledged");
        out
    }

    /// After a failed round: which of `failed` the broker has anyway (read back
    /// from the last progress record's offsets).
    async fn recover(&mut self) -> Result<HashSet<RecordId>, Failure> {
        let base = self.base.clone();
        let record = self.progress.clone();
        let name = self.name.clone();
        let ctx = self.context();
        let found = tokio::task::spawn_blocking(move || {
            let consumer = progress::consumer(&base, ctx)?;
            progress::read_written(&consumer, &record, &name, STALL)
        })
        .await
        .map_err(|e| Failure::Transient(e.to_string()))??;
        for (tp, next) in found.next {
            let e = self.next.entry(tp).or_insert(next);
            *e = (*e).max(next);
        }
        Ok(found.ids)
    }

    fn audit_attempt(
        &self,
        item: &Outgoing,
        attempt: u32,
        started: Instant,
        outcome: AttemptOutcome,
        error: Option<String>,
    ) -> Attempt {
        Attempt {
            event_id: item.delivery_id(),
            sink: self.name.clone(),
            attempt,
            at: chrono::Utc::now().to_rfc3339(),
            status: None,
            error,
            latency_ms: started.elapsed().as_millis() as u64,
            outcome,
        }
    }

    fn definite(&self, message: String) -> SinkError {
        SinkError::Definite {
            sink: self.name.clone(),
            message,
        }
    }
}

/// Errors that no retry can fix for this record: it goes to the DLQ.
/// Runs `f` (a jq evaluation) without holding up the executor thread's other tasks.
fn off_executor<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn is_record_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

fn backoff(round: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << round.min(8));
    exp.min(BACKOFF_MAX)
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        let started = Instant::now();
        let now = chrono::Utc::now();
        self.batch_started_at = now.to_rfc3339();
        self.batch_started_ms = now.timestamp_millis();
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut recs = Vec::with_capacity(items.len());
        // Round 1 renders and enqueues chunk by chunk, so the broker works on the first
        // records while the rest are rendered.
        let mut pending = Vec::with_capacity(items.len());
        let mut futures = Vec::with_capacity(items.len());
        let mut enqueue_error: Option<String> = None;
        let mut skipped = 0usize;
        for chunk in (0..items.len()).collect::<Vec<_>>().chunks(RENDER_CHUNK) {
            let from = recs.len();
            for &i in chunk {
                match self.records(i, &items[i]) {
                    Ok(r) => recs.extend(r),
                    Err(error) => results[i] = Some(ItemResult::DeadLettered { error }),
                }
            }
            // Records a read-back found were written before a crash: not again.
            let chunk_pending: Vec<usize> = (from..recs.len())
                .filter(|&i| !self.seen.remove(&recs[i].id))
                .collect();
            skipped += recs.len() - from - chunk_pending.len();
            if enqueue_error.is_none() {
                match self.enqueue(&recs, &chunk_pending).await {
                    Ok(f) => futures.extend(f),
                    Err(Failure::Definite(m)) => return Err(self.definite(m)),
                    Err(Failure::Transient(m)) => enqueue_error = Some(m),
                }
            }
            pending.extend(chunk_pending);
        }
        if skipped > 0 {
            tracing::info!(sink = %self.name, skipped, "skipping records already in Kafka (found by the read-back)");
        }
        let mut first_round = Some((self.await_all(futures).await, enqueue_error));
        let mut round = 0u32;
        while !pending.is_empty() {
            round += 1;
            let mut failed = Vec::new();
            let mut last_error = String::new();
            let sent = match first_round.take() {
                Some((mut outcomes, error)) => {
                    // Records after an enqueue failure were never handed over.
                    if let Some(m) = &error {
                        last_error = m.clone();
                    }
                    while outcomes.len() < pending.len() {
                        outcomes.push(Err(KafkaError::Canceled));
                    }
                    Ok(outcomes)
                }
                None => self.send(&recs, &pending).await,
            };
            match sent {
                Err(Failure::Definite(m)) => return Err(self.definite(m)),
                Err(Failure::Transient(m)) => {
                    failed = pending.clone();
                    last_error = m;
                }
                Ok(outcomes) => {
                    for (&i, outcome) in pending.iter().zip(outcomes) {
                        match outcome {
                            Ok((partition, offset)) => {
                                let e = self
                                    .next
                                    .entry((recs[i].topic.clone(), partition))
                                    .or_insert(0);
                                *e = (*e).max(offset + 1);
                                self.dirty = true;
                                self.since_progress += 1;
                            }
                            Err(e) if is_record_error(&e) => {
                                results[recs[i].item] = Some(ItemResult::DeadLettered {
                                    error: format!("Kafka refused the record: {e}"),
                                });
                            }
                            Err(e) => {
                                if last_error.is_empty() || !matches!(e, KafkaError::Canceled) {
                                    last_error = e.to_string();
                                }
                                failed.push(i);
                            }
                        }
                    }
                }
            }
            if failed.is_empty() {
                break;
            }
            tracing::warn!(sink = %self.name, round, failed = failed.len(), error = %last_error,
                "Kafka delivery failed; will start a new producer session, read back what reached the broker, and retry");
            let mut retrying = BTreeSet::new();
            for &i in &failed {
                if retrying.insert(recs[i].item) {
                    let a = self.audit_attempt(
                        &items[recs[i].item],
                        round,
                        started,
                        AttemptOutcome::Retrying,
                        Some(last_error.clone()),
                    );
                    self.audit.record(a).await;
                }
            }
            tokio::time::sleep(backoff(round)).await;
            // A new idempotent session; what the old one had in flight is settled by the read-back.
            self.drop_producer();
            match self.recover().await {
                Ok(found) => {
                    pending = failed
                        .into_iter()
                        .filter(|&i| !found.contains(&recs[i].id))
                        .collect();
                    self.dirty = true;
                }
                Err(Failure::Definite(m)) => return Err(self.definite(m)),
                Err(Failure::Transient(m)) => {
                    tracing::warn!(sink = %self.name, error = %m, "read-back failed; retrying");
                    pending = failed;
                }
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, r) in results.into_iter().enumerate() {
            let r = r.unwrap_or(ItemResult::Delivered);
            let (outcome, error) = match &r {
                ItemResult::DeadLettered { error } => (AttemptOutcome::Failed, Some(error.clone())),
                _ => (AttemptOutcome::Delivered, None),
            };
            let a = self.audit_attempt(&items[i], round.max(1), started, outcome, error);
            self.audit.record(a).await;
            out.push(r);
        }
        Ok(out)
    }

    async fn resume(&mut self, local: &Checkpoint) -> Result<Option<Checkpoint>, SinkError> {
        let mut round = 0u32;
        loop {
            match self.try_resume(local).await {
                Ok(cp) => return Ok(cp),
                Err(Failure::Definite(m)) => return Err(self.definite(m)),
                Err(Failure::Transient(m)) => {
                    round += 1;
                    tracing::warn!(sink = %self.name, round, error = %m, "cannot read the progress record from Kafka yet; retrying");
                    self.drop_producer();
                    tokio::time::sleep(backoff(round)).await;
                }
            }
        }
    }

    fn batch_size(&self) -> usize {
        BATCH_SIZE
    }

    fn wants_native_body(&self) -> bool {
        self.config.format == Format::Native
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let Some(at) = self.last_at.clone() else {
            return Ok(());
        };
        if !self.dirty && at.pos == self.progress.pos {
            return Ok(());
        }
        // One attempt: a restart reads back whatever this record would have covered.
        let record = self.progress_at(&at);
        match self.write_progress(&record).await {
            Ok(()) => {
                self.progress = record;
                self.next.clear();
                self.dirty = false;
                tracing::info!(sink = %self.name, pos = at.pos, "final progress record written");
            }
            Err(Failure::Transient(m) | Failure::Definite(m)) => {
                tracing::warn!(sink = %self.name, error = %m, "cannot write the final progress record; the next start reads back further");
            }
        }
        Ok(())
    }

    async fn checkpoint(&mut self, at: &Checkpoint) -> Result<(), SinkError> {
        self.last_at = Some(at.clone());
        // The local cursor may run ahead of the progress record: on restart the record
        // wins, and the read-back skips what was written since (see module docs).
        let due = if self.dirty {
            self.last_progress_write.elapsed() >= PROGRESS_INTERVAL
                || self.since_progress >= PROGRESS_MAX_RECORDS
        } else {
            at.pos != self.progress.pos
                && self.last_progress_write.elapsed() >= PROGRESS_IDLE_INTERVAL
        };
        if !due {
            return Ok(());
        }
        let record = self.progress_at(at);
        let mut round = 0u32;
        loop {
            match self.write_progress(&record).await {
                Ok(()) => break,
                Err(Failure::Definite(m)) => return Err(self.definite(m)),
                Err(Failure::Transient(m)) => {
                    round += 1;
                    tracing::warn!(sink = %self.name, round, error = %m, "cannot write the progress record; retrying");
                    self.drop_producer();
                    tokio::time::sleep(backoff(round)).await;
                }
            }
        }
        self.progress = record;
        self.next.clear();
        self.dirty = false;
        self.since_progress = 0;
        Ok(())
    }
}

impl KafkaSink {
    fn context(&self) -> SinkContext {
        SinkContext {
            sink: self.name.clone(),
            masks: self.masks.clone(),
        }
    }

    /// Ends the producer session. Dropping a producer purges and flushes for up to
    /// 500 ms, so that happens off the async workers.
    fn drop_producer(&mut self) {
        if let Some(p) = self.producer.take() {
            drop(tokio::task::spawn_blocking(move || drop(p)));
        }
    }

    /// The progress record for `at`: the last one plus the offsets acknowledged since.
    fn progress_at(&self, at: &Checkpoint) -> Progress {
        let mut record = self.progress.clone();
        record.version = 1;
        record.epoch = self.epoch;
        record.pos = at.pos;
        record.event_id = at.event_id.clone();
        record.generation = at.generation;
        for ((topic, partition), next) in &self.next {
            if let Some(tp) = record.topics.get_mut(topic) {
                tp.next.insert(*partition, *next);
            }
        }
        record
    }

    async fn try_resume(&mut self, local: &Checkpoint) -> Result<Option<Checkpoint>, Failure> {
        let topic = self.config.progress_topic.clone();
        let partitions = match self.partition_count(&topic).await? {
            Some(n) => n,
            None => {
                self.create_topic(&topic, 1, true).await?;
                self.partition_count(&topic).await?.ok_or_else(|| {
                    Failure::Transient(format!("progress topic {topic} not visible after creation"))
                })?
            }
        };
        let base = self.base.clone();
        let name = self.name.clone();
        let ctx = self.context();
        let stored = tokio::task::spawn_blocking(move || {
            let consumer = progress::consumer(&base, ctx)?;
            progress::read_progress(&consumer, &topic, partitions, &name, STALL)
        })
        .await
        .map_err(|e| Failure::Transient(e.to_string()))??;
        let Some(stored) = stored else {
            tracing::info!(sink = %self.name, progress_topic = %self.config.progress_topic, "no progress record yet: starting from the local cursor");
            // The first record written (at the first topic's registration) says so too.
            self.progress.pos = local.pos;
            self.progress.event_id = local.event_id.clone();
            self.progress.generation = local.generation;
            return Ok(None);
        };
        for (t, tp) in &stored.topics {
            match self.partition_count(t).await? {
                Some(n) if n == tp.partitions => {}
                Some(n) => {
                    return Err(Failure::Definite(format!(
                        "topic {t} has {n} partitions, but had {} when pgcdc started writing it: keys \
                         now map to other partitions, so per-key order and the read-back would break. \
                         Restore the partition count, or write to a new topic (change `topic`) and \
                         delete this sink's progress record",
                        tp.partitions
                    )))
                }
                None => {
                    return Err(Failure::Definite(format!(
                        "topic {t}, which this sink's progress record lists, no longer exists; \
                         re-create it, or delete the sink's progress record (a null value for key \
                         {:?} in {}) to start over",
                        self.name, self.config.progress_topic
                    )))
                }
            }
        }
        let reset = stored.generation < local.generation;
        self.progress = stored;
        let found = self.recover().await?;
        if reset {
            // An operator reset the checkpoint after this record: re-send from there,
            // records already in Kafka included. The offsets stay, for later read-backs.
            tracing::info!(sink = %self.name, from = local.pos, recorded = self.progress.pos,
                "the checkpoint was reset after the last progress record; resuming at the reset position");
            self.progress.pos = local.pos;
            self.progress.event_id = local.event_id.clone();
            self.progress.generation = local.generation;
            self.dirty = true;
            return Ok(None);
        }
        tracing::info!(sink = %self.name, pos = self.progress.pos, found = found.len(),
            "resuming from the progress record; records found after it will not be written again");
        self.seen = found;
        self.dirty = !self.next.is_empty();
        Ok(Some(Checkpoint {
            pos: self.progress.pos,
            event_id: self.progress.event_id.clone(),
            generation: self.progress.generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcdc_schema::{ChangeEvent, EventId, Lsn};
    use serde_json::json;
    use std::sync::Arc;

    fn sink(extra: &str, transformed: bool) -> KafkaSink {
        let text = format!("brokers = \"127.0.0.1:1\"\n{extra}");
        let value: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Boolean(false));
        let config: KafkaSinkConfig =
            serde::Deserialize::deserialize(value).unwrap_or_else(|e| panic!("{e}"));
        let ctx = KafkaSinkContext {
            db: "portal".into(),
            version: "test".into(),
            transformed,
            audit: AuditLog::disabled(),
        };
        KafkaSink::new("k", &config, "sink[0]", ctx).unwrap_or_else(|e| panic!("{e}"))
    }

    fn item(op: Op, body: serde_json::Value) -> Outgoing {
        let row = |v: serde_json::Value| v.as_object().cloned();
        let event = ChangeEvent {
            id: EventId::from_position(Lsn(0x10), 2),
            op,
            schema: "public".into(),
            table: "permits".into(),
            key: row(json!({"id": 7})),
            old: row(json!({"id": 7})),
            new: (op != Op::Delete)
                .then(|| row(json!({"id": 7, "status": "approved"})))
                .flatten(),
            trigger: Some("permitApproved".into()),
            lsn: Lsn(0x10),
            xid: Some(5),
            commit_time: Some("2026-11-26T10:00:00Z".into()),
            unchanged_toast: vec![],
        };
        Outgoing {
            event: Arc::new(event),
            body,
            part: 0,
            row: "public.permits{\"id\":7}".into(),
        }
    }

    fn text(b: &Option<Vec<u8>>) -> String {
        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
    }

    #[test]
    fn default_record_is_debezium_keyed_by_primary_key() {
        let s = sink("topic = \"portal.{schema}.{table}\"\n", false);
        let recs = s
            .records(0, &item(Op::Update, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].topic, "portal.public.permits");
        assert_eq!(text(&recs[0].key), "{\"id\":7}");
        let v: serde_json::Value = serde_json::from_str(&text(&recs[0].value)).unwrap_or_default();
        assert_eq!(v["op"], "u");
        assert_eq!(v["source"]["db"], "portal");
        assert_eq!(recs[0].id, ("0000000000000010-00000002".to_string(), false));
    }

    #[test]
    fn key_program_trigger_topic_and_tombstone() {
        let s = sink(
            "topic = \"permits.{trigger}\"\nkey = '.new.status // .key.id'\ntombstones = true\n",
            false,
        );
        let recs = s
            .records(0, &item(Op::Update, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs[0].topic, "permits.permitApproved");
        assert_eq!(text(&recs[0].key), "\"approved\"");
        let recs = s
            .records(0, &item(Op::Delete, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 2, "a delete is followed by a tombstone");
        assert_eq!(text(&recs[1].key), "7");
        assert!(recs[1].value.is_none());
        assert!(recs[1].id.1);
    }

    #[test]
    fn native_format_and_transform_output_are_sent_as_given() {
        let s = sink("format = \"native\"\n", false);
        let body = json!({"id": "0000000000000010-00000002", "op": "update"});
        let recs = s
            .records(0, &item(Op::Update, body.clone()))
            .unwrap_or_default();
        assert_eq!(text(&recs[0].value), body.to_string());
        assert!(s.wants_native_body());
        let t = sink("", true);
        assert!(!t.wants_native_body());
        let recs = t
            .records(0, &item(Op::Update, json!({"registryId": 7})))
            .unwrap_or_default();
        assert_eq!(text(&recs[0].value), "{\"registryId\":7}");
    }
}
