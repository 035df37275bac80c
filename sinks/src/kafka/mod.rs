//! The Kafka sink: each item becomes a keyed record, delivered exactly once.
//!
//! ```text
//!  resume(): progress topic ─▶ last record of this sink ─▶ read every written
//!            partition from its recorded offset to the end ─▶ `seen` ids
//!  deliver([Outgoing]) ─▶ records (topic template, key, Debezium/native value,
//!            headers) ─▶ skip `seen` ─▶ idempotent producer ─▶ acks (partition, offset)
//!            on failure: new producer session, read-back, retry the rest, for ever
//!  checkpoint(pos) ─▶ progress record {pos, event id, topics: partitions, next offsets}
//! ```
//!
//! Exactly once for every consumer holds while pgcdc is the only writer of the
//! partitions it writes: the read-back refuses records without this sink's
//! `pgcdc-sink` header. Partition counts are recorded, and a change is refused.

mod acks;
mod config;
mod context;
pub mod progress;
mod sink;

pub use config::{check_topic_name, toml_like, Format, KafkaSinkConfig, TopicTemplate, KAFKA_KEYS};
pub use progress::{Progress, TopicProgress};
pub use sink::{KafkaSink, KafkaSinkContext, KafkaSinkError, LeadershipCheck};
