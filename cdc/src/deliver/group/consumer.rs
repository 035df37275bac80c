//! The Kafka side of `pgcdc deliver`: one consumer in the group, its
//! assignment, per-partition lag (from librdkafka's statistics), and offset
//! commits. Offsets are never committed automatically: only the worker commits,
//! after a batch is settled (delivered, skipped, dead-lettered or parked).
//!
//! Errors: a topic missing at start and a bad client setting are definite
//! (the worker stops with the topic or key named); a broker that goes away is
//! transient (librdkafka reconnects; the worker logs, waits and goes on, and
//! commits nothing it has not settled).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::DeliverConfig;

/// One partition's standing, as the status and metrics show it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct PartitionLag {
    /// Topic.
    pub(crate) topic: String,
    /// Partition.
    pub(crate) partition: i32,
    /// Records after the group's committed offset (-1: not known yet).
    pub(crate) lag_records: i64,
    /// Seconds since the oldest record not yet settled was written (0 when caught up).
    pub(crate) lag_seconds: f64,
}

/// What the consumer's callbacks see: the current assignment and lag.
#[derive(Default)]
pub(crate) struct GroupState {
    assigned: Mutex<HashSet<(String, i32)>>,
    /// Records behind, per partition, from librdkafka's statistics.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Timestamp (ms) of the first record not yet settled, per partition.
    pending_since: Mutex<BTreeMap<(String, i32), i64>>,
}

impl GroupState {
    /// The partitions this worker holds now.
    pub(crate) fn assigned(&self) -> HashSet<(String, i32)> {
        self.assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Notes the timestamp of the oldest record of a batch being handled.
    pub(crate) fn pending(&self, topic: &str, partition: i32, timestamp_ms: i64) {
        if let Ok(mut p) = self.pending_since.lock() {
            p.entry((topic.to_owned(), partition))
                .or_insert(timestamp_ms);
        }
    }

    /// A partition is settled up to its last record read.
    pub(crate) fn settled(&self, topic: &str, partition: i32) {
        if let Ok(mut p) = self.pending_since.lock() {
            p.remove(&(topic.to_owned(), partition));
        }
    }

    /// Every assigned partition with its lag.
    pub(crate) fn lags(&self) -> Vec<PartitionLag> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let lag = self.lag.lock().map(|l| l.clone()).unwrap_or_default();
        let pending = self
            .pending_since
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let mut out: Vec<PartitionLag> = self
            .assigned()
            .into_iter()
            .map(|(topic, partition)| {
                let key = (topic.clone(), partition);
                let lag_records = lag.get(&key).copied().unwrap_or(-1);
                let lag_seconds = pending
                    .get(&key)
                    .map(|since| ((now_ms - since).max(0) as f64) / 1000.0)
                    .unwrap_or(0.0);
                PartitionLag {
                    topic,
                    partition,
                    lag_records,
                    lag_seconds,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }
}

/// The consumer's context: follows the assignment and the statistics.
pub(crate) struct GroupContext {
    pub(crate) state: Arc<GroupState>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        crate::health::health().set_kafka_reachable(up);
        let Ok(mut lag) = self.state.lag.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            for (id, p) in topic.partitions {
                // -1 is librdkafka's "internal" partition; only assigned ones have a lag.
                if id >= 0 && p.consumer_lag >= 0 {
                    lag.insert((name.clone(), id), p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error (librdkafka retries by itself)");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            tracing::info!(partitions = ?revoked, "partitions revoked");
            if let Ok(mut a) = self.state.assigned.lock() {
                for p in &revoked {
                    a.remove(p);
                }
            }
            if let Ok(mut l) = self.state.lag.lock() {
                for p in &revoked {
                    l.remove(p);
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions(tpl);
                tracing::info!(partitions = ?assigned, "partitions assigned");
                if let Ok(mut a) = self.state.assigned.lock() {
                    a.extend(assigned);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// The group's consumer.
pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

/// `pgcdc check`: the brokers answer and every topic exists (nothing joins the group).
pub(crate) async fn check(config: &DeliverConfig) -> anyhow::Result<String> {
    let consumer = Arc::new(client(config, Arc::default())?);
    check_topics(&consumer, &config.topics, &config.brokers).await?;
    Ok(format!(
        "{} topic(s) on {}, group {}",
        config.topics.len(),
        config.brokers,
        config.group
    ))
}

/// Joins the group (after checking that every topic exists).
pub(crate) async fn connect(
    config: &DeliverConfig,
    state: Arc<GroupState>,
) -> anyhow::Result<Arc<GroupConsumer>> {
    let consumer = Arc::new(client(config, state)?);
    check_topics(&consumer, &config.topics, &config.brokers).await?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| anyhow::anyhow!("deliver.topics: cannot subscribe: {e}"))?;
    tracing::info!(group = %config.group, topics = ?config.topics, "joined the consumer group");
    Ok(consumer)
}

/// The group's consumer, not yet subscribed.
fn client(config: &DeliverConfig, state: Arc<GroupState>) -> anyhow::Result<GroupConsumer> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 5).max(500).to_string(),
        )
        .set("statistics.interval.ms", "2000")
        // Bounds what librdkafka prefetches per partition (memory).
        .set("queued.max.messages.kbytes", "16384")
        .set("allow.auto.create.topics", "false")
        .set("client.id", "pgcdc-deliver");
    client
        .create_with_context(GroupContext { state })
        .map_err(|e| anyhow::anyhow!("deliver.brokers: cannot create the Kafka consumer: {e}"))
}

/// Every topic must exist: a missing one is a typo or a sink that never ran,
/// and waiting on it silently would look like an idle pipeline.
async fn check_topics(
    consumer: &Arc<GroupConsumer>,
    topics: &[String],
    brokers: &str,
) -> anyhow::Result<()> {
    const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
    let c = Arc::clone(consumer);
    let metadata = tokio::task::spawn_blocking(move || c.fetch_metadata(None, METADATA_TIMEOUT))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "deliver.brokers: cannot reach the Kafka brokers {brokers} within {METADATA_TIMEOUT:?}: {e}; \
                 check the address and that the brokers run"
            )
        })?;
    let present: HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    for (i, topic) in topics.iter().enumerate() {
        if !present.contains(topic.as_str()) {
            anyhow::bail!(
                "deliver.topics[{i}]: topic {topic:?} does not exist on {brokers}; it is written by \
                 the `pgcdc run` Kafka sink (create it, or set create_topics = true there and let \
                 pgcdc run first), or fix the name"
            );
        }
    }
    Ok(())
}

/// Commits `offsets` (next offset to read, per partition) for the partitions
/// still assigned; a failure is passing (the next batch commits again, or the
/// next owner re-delivers with the same ids).
pub(crate) async fn commit(
    consumer: &Arc<GroupConsumer>,
    state: &GroupState,
    offsets: &BTreeMap<(String, i32), i64>,
) {
    let assigned = state.assigned();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in offsets {
        if assigned.contains(&(topic.clone(), *partition)) {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(%topic, partition, error = %e, "cannot list an offset to commit");
            }
        }
    }
    if tpl.count() == 0 {
        return;
    }
    let c = Arc::clone(consumer);
    match tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync)).await {
        Ok(Ok(())) => {
            for (topic, partition) in offsets.keys() {
                state.settled(topic, *partition);
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "offset commit failed; the records are settled and will be committed with the next batch (or delivered again, with the same ids, by the partition's next owner)")
        }
        Err(e) => tracing::warn!(error = %e, "offset commit task failed"),
    }
}

/// The whole group's lag per partition, read from Kafka (committed offsets
/// against the high watermarks), for `pgcdc status` outside the workers.
pub(crate) async fn group_lag(config: &DeliverConfig) -> anyhow::Result<Vec<PartitionLag>> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in &config.topics {
            let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
        let mut out = Vec::new();
        for e in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            out.push(PartitionLag {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                lag_records: (high - from).max(0),
                lag_seconds: 0.0,
            });
        }
        Ok(out)
    })
    .await?
}
