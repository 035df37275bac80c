//! Kafka -> sinks, for `pgcdc deliver`: the same delivery as the journal
//! runner (plans, triggers, jq, templates, retries, batching, rate limits,
//! DLQ and parking, audit), fed from the partitions of Kafka topics that a
//! `pgcdc run` Kafka sink writes, as one member of a consumer group.
//!
//! ```text
//!  Kafka topics ─(group: cooperative-sticky)─▶ consumer ─▶ record::decode ─▶ native events
//!                                                                │ batch
//!        offsets committed ◀── after every sink settled it ◀── worker ─▶ plan ─▶ Sink ─▶ HTTP / stdout
//!                                                                │ DLQ + parking (shared state store)
//! ```
//!
//! DLQ and parking live in the state store (`[state] url`: Postgres, shared
//! by every worker), keyed by sink and row, so the worker that takes over a
//! partition parks a row's events behind its dead letter as the previous one
//! did. Replays run on the worker holding partition 0 of the first topic.

pub(crate) mod consumer;
pub(crate) mod record;
pub(crate) mod worker;

use std::sync::{Arc, OnceLock};

pub(crate) use consumer::GroupState;

/// This process's group state, for status, `/api/status` and `/metrics`
/// (unset outside `pgcdc deliver`).
pub(crate) fn group_state() -> Option<&'static Arc<GroupState>> {
    GROUP_STATE.get()
}

/// Sets the process's group state (once, at `pgcdc deliver`'s start).
pub(crate) fn set_group_state(state: Arc<GroupState>) {
    let _ = GROUP_STATE.set(state);
}

static GROUP_STATE: OnceLock<Arc<GroupState>> = OnceLock::new();
