//! `[deliver]`: `pgcdc deliver` reads its events from Kafka topics that a
//! `pgcdc run` Kafka sink (`format = "native"`) writes, as one member of a
//! Kafka consumer group, instead of from the journal.

use serde::Deserialize;

use super::{key_err, ConfigError};

/// `[deliver]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliverConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub(crate) brokers: String,
    /// Topics a pgcdc Kafka sink writes.
    pub(crate) topics: Vec<String>,
    /// The Kafka consumer group every `pgcdc deliver` of this config joins.
    pub(crate) group: String,
    /// Records taken from Kafka per batch at most (per process; every sink gets
    /// the batch, and offsets are committed after it).
    #[serde(default = "DeliverConfig::default_max_batch")]
    pub(crate) max_batch: usize,
    /// How long the group waits for a silent member before it gives its
    /// partitions to the others (a worker killed with -9), in milliseconds.
    #[serde(default = "DeliverConfig::default_session_timeout_ms")]
    pub(crate) session_timeout_ms: u32,
}

impl DeliverConfig {
    const DEFAULT_MAX_BATCH: usize = 500;
    /// Most records in one batch: bounds the memory of a batch in flight.
    const MAX_BATCH_LIMIT: usize = 10_000;

    fn default_max_batch() -> usize {
        Self::DEFAULT_MAX_BATCH
    }

    fn default_session_timeout_ms() -> u32 {
        10_000
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(key_err(
                "deliver.brokers",
                "give the bootstrap brokers, e.g. brokers = \"127.0.0.1:9092\"",
            ));
        }
        if self.topics.is_empty() {
            return Err(key_err(
                "deliver.topics",
                "list the topics a pgcdc Kafka sink writes, e.g. topics = [\"portal.public.permits\"]",
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.is_empty()
                || t.len() > 249
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            {
                return Err(key_err(
                    format!("deliver.topics[{i}]"),
                    format!("{t:?} is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"),
                ));
            }
        }
        if self.group.trim().is_empty() {
            return Err(key_err(
                "deliver.group",
                "name the Kafka consumer group the workers share, e.g. group = \"registry-delivery\"",
            ));
        }
        if self.max_batch == 0 || self.max_batch > Self::MAX_BATCH_LIMIT {
            return Err(key_err(
                "deliver.max_batch",
                format!("between 1 and {}", Self::MAX_BATCH_LIMIT),
            ));
        }
        if !(1_000..=600_000).contains(&self.session_timeout_ms) {
            return Err(key_err(
                "deliver.session_timeout_ms",
                "between 1000 and 600000 (milliseconds)",
            ));
        }
        Ok(())
    }
}
