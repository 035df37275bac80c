//! Readiness state shared by the reader, the sink runners and `/readyz`.
//!
//! The reader and each runner hold a guard while they work; dropping it (a
//! lost connection, a stopped runner, any early return) flips readiness, so
//! no code path can forget to report that it stopped. Background tasks that
//! retry a passing error (see `supervise`) report it here until they
//! make progress again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// What `/readyz` reports on.
#[derive(Debug, Default)]
pub(crate) struct Health {
    replication: AtomicBool,
    /// `pgcdc deliver`: readiness is the Kafka brokers', not a replication stream's.
    deliver_mode: AtomicBool,
    /// `pgcdc deliver`: a broker connection is up (librdkafka's statistics).
    kafka_reachable: AtomicBool,
    /// Sink name → running.
    sinks: Mutex<BTreeMap<String, bool>>,
    /// Problems seen by the slot poller: the slot's WAL safety, sinks blocked too long.
    warnings: Mutex<Vec<String>>,
    /// The reader is paused on a full journal (`journal.max_bytes`).
    reader_paused: AtomicBool,
    /// The replication slot was found lost and pgcdc has not recovered from it.
    slot_lost: AtomicBool,
    /// Background task → why it is failing (set while it retries; see `supervise`).
    tasks: Mutex<BTreeMap<&'static str, String>>,
}

static HEALTH: LazyLock<Health> = LazyLock::new(Health::default);

/// The process's health state.
pub(crate) fn health() -> &'static Health {
    &HEALTH
}

/// Held while a replication session streams.
#[must_use = "readiness lasts as long as the guard"]
pub(crate) struct ReplicationGuard(&'static Health);

impl Drop for ReplicationGuard {
    fn drop(&mut self) {
        self.0.replication.store(false, Ordering::SeqCst);
    }
}

/// Held while a sink runner runs.
#[must_use = "readiness lasts as long as the guard"]
pub(crate) struct SinkGuard {
    health: &'static Health,
    sink: String,
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        self.health.sinks().insert(self.sink.clone(), false);
    }
}

impl Health {
    fn sinks(&self) -> MutexGuard<'_, BTreeMap<String, bool>> {
        // A panic elsewhere while holding the lock leaves a plain map: still usable.
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the replication stream connected until the guard drops.
    pub(crate) fn replication_connected(&'static self) -> ReplicationGuard {
        self.replication.store(true, Ordering::SeqCst);
        ReplicationGuard(self)
    }

    /// Whether the replication stream is connected.
    pub(crate) fn is_replication_connected(&self) -> bool {
        self.replication.load(Ordering::SeqCst)
    }

    /// Registers the configured sinks as not (yet) running.
    pub(crate) fn expect_sinks<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut sinks = self.sinks();
        for name in names {
            sinks.entry(name.to_string()).or_insert(false);
        }
    }

    /// Marks a sink's runner running until the guard drops.
    pub(crate) fn sink_running(&'static self, sink: &str) -> SinkGuard {
        self.sinks().insert(sink.to_string(), true);
        SinkGuard {
            health: self,
            sink: sink.to_string(),
        }
    }

    /// Each known sink and whether its runner runs.
    pub(crate) fn sink_states(&self) -> Vec<(String, bool)> {
        self.sinks()
            .iter()
            .map(|(name, running)| (name.clone(), *running))
            .collect()
    }

    /// Records whether the reader is paused on a full journal.
    pub(crate) fn set_reader_paused(&self, paused: bool) {
        self.reader_paused.store(paused, Ordering::SeqCst);
        crate::metrics::metrics()
            .reader_paused
            .set(i64::from(paused));
    }

    /// Records whether the replication slot is lost (see `ingest::slot_loss`).
    pub fn set_slot_lost(&self, lost: bool) {
        self.slot_lost.store(lost, Ordering::SeqCst);
    }

    /// Whether the reader is paused on a full journal.
    pub(crate) fn is_reader_paused(&self) -> bool {
        self.reader_paused.load(Ordering::SeqCst)
    }

    /// Replaces the poller's current warnings (slot WAL safety, blocked sinks).
    pub(crate) fn set_warnings(&self, warnings: Vec<String>) {
        *self.warnings.lock().unwrap_or_else(|e| e.into_inner()) = warnings;
    }

    /// Records that background task `task` fails and retries, and why.
    pub(crate) fn task_failing(&self, task: &'static str, why: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task, why.to_string());
    }

    /// Background task `task` works again.
    pub(crate) fn task_ok(&self, task: &'static str) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task);
    }

    /// `pgcdc deliver`: readiness follows the Kafka brokers from now on.
    pub(crate) fn set_deliver_mode(&self) {
        self.deliver_mode.store(true, Ordering::SeqCst);
    }

    /// `pgcdc deliver`: whether a broker connection is up.
    pub(crate) fn set_kafka_reachable(&self, up: bool) {
        self.kafka_reachable.store(up, Ordering::SeqCst);
    }

    /// Why the process is not ready; empty when it is.
    pub(crate) fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = self
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.slot_lost.load(Ordering::SeqCst) {
            reasons.push(
                "the replication slot was lost (missing on the source, or wal_status = lost): \
                 changes made meanwhile may be missing; see the log and source.on_slot_lost"
                    .to_string(),
            );
        }
        if self.is_reader_paused() {
            reasons.push(
                "the reader is paused: the journal reached journal.max_bytes (Postgres keeps the WAL); \
                 let lagging sinks catch up, shorten journal.retention or raise journal.max_bytes"
                    .to_string(),
            );
        }
        if self.deliver_mode.load(Ordering::SeqCst) {
            if !self.kafka_reachable.load(Ordering::SeqCst) {
                reasons.push(
                    "no Kafka broker is reachable (pgcdc deliver reconnects by itself and commits \
                     nothing it has not delivered; check [deliver] brokers and the brokers)"
                        .to_string(),
                );
            }
        } else if !self.is_replication_connected() {
            reasons.push(
                "the replication stream is not connected (pgcdc reconnects by itself; \
                 check that the source database is up and the logs for the error)"
                    .to_string(),
            );
        }
        for (task, why) in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            reasons.push(format!(
                "the {task} is failing and retried with backoff: {why}"
            ));
        }
        for (sink, running) in self.sink_states() {
            if !running {
                reasons.push(format!(
                    "the runner of sink {sink} is not running (see the logs for why it stopped)"
                ));
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_flip_readiness_when_dropped() {
        let h: &'static Health = Box::leak(Box::default());
        h.expect_sinks(["a", "b"]);
        assert_eq!(h.not_ready_reasons().len(), 3);
        let conn = h.replication_connected();
        let a = h.sink_running("a");
        let b = h.sink_running("b");
        assert!(h.not_ready_reasons().is_empty());
        drop(a);
        let reasons = h.not_ready_reasons();
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("sink a"), "{reasons:?}");
        drop(conn);
        assert!(!h.is_replication_connected());
        drop(b);
        assert_eq!(h.not_ready_reasons().len(), 3);
    }
}
