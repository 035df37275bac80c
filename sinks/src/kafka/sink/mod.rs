//! The Kafka sink: idempotent producer, progress records and read-back.
//!
//! Here the sink's state and its `Sink` calls; `records` renders an item's
//! records, `deliver` drives a batch through the producer and its recovery,
//! `resume` writes and reads the progress record, `topics` administers topics,
//! and `retry` decides retry-or-definite for all of them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcdc_schema::debezium::DebeziumSource;
use pgcdc_schema::mapping::JqProgram;
use rdkafka::ClientConfig;

use super::acks::{Acks, ProducingContext, SinkProducer};
use super::config::{KafkaSinkConfig, TopicTemplate};
use super::context::SinkContext;
use super::progress::{Progress, RecordId};
use crate::{Attempt, AttemptOutcome, AuditLog, Checkpoint, ItemResult, Outgoing, Sink, SinkError};
use retry::Failure;

mod deliver;
mod records;
mod resume;
mod retry;
mod topics;
mod transaction;

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
    producer: Option<Arc<SinkProducer>>,
    /// The last progress record written (or read at start).
    progress: Progress,
    /// The HA epoch this process leads with, carried by its progress records. With
    /// one, the producer is transactional (see `transaction.rs`).
    epoch: Option<i64>,
    /// Under HA: asks the state store whether this process still leads, before a new
    /// producer session would fence whoever does (see `transaction::fence_others`).
    leadership: Option<LeadershipCheck>,
    /// The transactional producer's `init_transactions` has run for this session.
    txn_ready: bool,
    /// A transaction is open (records or a progress record not yet committed).
    in_txn: bool,
    /// Next offsets acknowledged since `progress` was written.
    next: BTreeMap<(String, i32), i64>,
    /// Under HA: next offsets acknowledged in the open transaction, not yet in `next`.
    uncommitted: BTreeMap<(String, i32), i64>,
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
    /// The batch `submit` handed to the producer, for `settle` (at most one).
    submitted: Option<deliver::Submitted>,
    /// The last settled batch's record buffers, emptied, for the next batch.
    kept: Option<records::Recs>,
}

/// Whether this process still leads (Err: why not); blocking, called off the executor.
pub type LeadershipCheck = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl KafkaSink {
    /// Marks its progress records with the HA epoch of the process that writes them,
    /// so a record of an older leader written late never wins over a newer one.
    pub fn with_epoch(mut self, epoch: Option<i64>) -> KafkaSink {
        self.epoch = epoch;
        self
    }

    /// Under HA: the check that this process still holds the lease (Err: why not),
    /// asked before every new transactional session. A paused leader that wakes up
    /// after a takeover may not know it was fenced yet (its transaction merely timed
    /// out); its new session would fence the new leader.
    pub fn with_leadership(mut self, check: Option<LeadershipCheck>) -> KafkaSink {
        self.leadership = check;
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
            leadership: None,
            txn_ready: false,
            in_txn: false,
            next: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            seen: HashSet::new(),
            dirty: false,
            since_progress: 0,
            last_progress_write: Instant::now(),
            batch_started_at: String::new(),
            batch_started_ms: 0,
            submitted: None,
            kept: None,
            last_at: None,
        })
    }

    fn producer(&mut self) -> Result<Arc<SinkProducer>, Failure> {
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
        if self.transactional() {
            cfg.set("transactional.id", self.transactional_id());
        }
        let context = ProducingContext {
            sink: self.context(),
            acks: Arc::new(Acks::default()),
        };
        let producer: SinkProducer = cfg.create_with_context(context).map_err(|e| {
            Failure::Config(format!(
                "cannot create the Kafka producer: {}; check brokers and [sink.librdkafka]",
                self.config.redact_kafka_error(&e)
            ))
        })?;
        let producer = Arc::new(producer);
        self.producer = Some(producer.clone());
        Ok(producer)
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
            at: crate::AttemptTime::now(),
            status: None,
            error,
            latency_ms: started.elapsed().as_millis() as u64,
            outcome,
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        self.deliver_batch(items).await
    }

    /// Renders and enqueues; the broker works on the batch while the runner books
    /// the previous one. Not under HA: there a batch and the progress record that
    /// follows it are separate transactions, and a progress record written while
    /// this batch's transaction is open would commit it unsettled.
    async fn submit(&mut self, items: &[Outgoing]) -> Result<bool, SinkError> {
        if self.transactional() {
            return Ok(false);
        }
        self.submit_batch(items).await?;
        Ok(true)
    }

    async fn settle(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        self.settle_batch(items).await
    }

    async fn resume(&mut self, local: &Checkpoint) -> Result<Option<Checkpoint>, SinkError> {
        let mut round = 0u32;
        loop {
            match self.try_resume(local).await {
                Ok(cp) => return Ok(cp),
                Err(f) => {
                    round += 1;
                    self.retry_or_stop(f, round, "cannot read the progress record from Kafka yet")
                        .await?;
                }
            }
        }
    }

    fn batch_size(&self) -> usize {
        BATCH_SIZE
    }

    /// Never: without a transform the native event and Debezium's records are
    /// both rendered straight from `event`, with no JSON value in between.
    fn wants_native_body(&self) -> bool {
        false
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let Some(at) = self.last_at.clone() else {
            return Ok(());
        };
        if !self.dirty && at.pos == self.progress.pos {
            return Ok(());
        }
        // Under HA only over the session in hand: starting one now (after a failure,
        // or once taken over) would fence the leader; the next leader reads back.
        if self.transactional() && !self.txn_ready {
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
            Err(f) => {
                tracing::warn!(sink = %self.name, error = %f, "cannot write the final progress record; the next start reads back further");
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
                Err(f) => {
                    round += 1;
                    self.retry_or_stop(f, round, "cannot write the progress record")
                        .await?;
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
        self.txn_ready = false;
        self.in_txn = false;
        self.uncommitted.clear();
        if let Some(p) = self.producer.take() {
            drop(tokio::task::spawn_blocking(move || drop(p)));
        }
    }
}
