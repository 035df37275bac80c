//! Transactions under HA: the producer that fences a taken-over leader.
//!
//! Without HA the producer is idempotent and nothing else writes the sink's
//! partitions. Under `[ha]`, a leader that was paused (SIGSTOP, a VM freeze) may
//! wake after a standby took over, with records still queued in its producer:
//! those would land after the new leader's read-back and reach consumers twice.
//! So under HA every leader uses the same `transactional.id` for the sink
//! (`pgcdc.<progress_topic>.<sink>`, the identity its progress records already
//! have) and, before it reads anything back, calls `init_transactions`: the broker
//! bumps the producer epoch, ends the old leader's open transaction, and refuses
//! every later write of the old producer (`PRODUCER_FENCED`). Each batch is one
//! transaction, committed before the batch counts as delivered; each progress
//! record is one too. The read-back then reads with `read_committed`, as
//! consumers must: what it sees is what they see.

use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::retry::Failure;
use super::{KafkaSink, STALL};
use crate::kafka::acks::SinkProducer;

impl KafkaSink {
    /// Under HA (an epoch is set) the producer is transactional.
    pub(super) fn transactional(&self) -> bool {
        self.epoch.is_some()
    }

    /// The same for every process of one deployment's sink, different for another
    /// sink or another progress topic.
    pub(super) fn transactional_id(&self) -> String {
        format!("pgcdc.{}.{}", self.config.progress_topic, self.name)
    }

    /// Makes this producer session the only one that may write for the sink: after
    /// this, a previous leader's producer is fenced and its open transaction ended.
    /// Idempotent per session; a no-op without HA.
    pub(super) async fn fence_others(&mut self) -> Result<(), Failure> {
        if !self.transactional() || self.txn_ready {
            return Ok(());
        }
        if let Some(check) = self.leadership.clone() {
            let still = tokio::task::spawn_blocking(move || check())
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(why) = still {
                return Err(Failure::Fenced(format!(
                    "lost leadership ({why}): no new Kafka session, which would fence the \
                     leader; nothing more is written to Kafka by this process"
                )));
            }
        }
        let producer = self.producer()?;
        let txn_id = self.transactional_id();
        blocking(move || producer.init_transactions(STALL))
            .await
            .map_err(|e| {
                Failure::Broker(format!(
                    "cannot start a transactional session ({txn_id}): {e}"
                ))
            })?;
        tracing::debug!(sink = %self.name, transactional_id = %txn_id, epoch = ?self.epoch,
            "transactional session started: earlier producers of this sink are fenced");
        self.txn_ready = true;
        Ok(())
    }

    /// The producer, with a transaction open under HA.
    pub(super) async fn writing_producer(&mut self) -> Result<Arc<SinkProducer>, Failure> {
        self.fence_others().await?;
        let producer = self.producer()?;
        if self.transactional() && !self.in_txn {
            producer
                .begin_transaction()
                .map_err(|e| self.txn_failure("begin", e))?;
            self.in_txn = true;
        }
        Ok(producer)
    }

    /// Commits the open transaction (nothing to do without one). On failure the
    /// session is ended, so what the transaction held is aborted by the next session.
    pub(super) async fn commit(&mut self) -> Result<(), Failure> {
        if !self.in_txn {
            return Ok(());
        }
        let producer = self.producer()?;
        let result = blocking(move || producer.commit_transaction(STALL)).await;
        self.in_txn = false;
        result.map_err(|e| {
            // Fenced is checked on the session itself before it is dropped: a
            // dropped one can no longer say so, and a new one would fence the leader.
            let f = match self.check_not_fenced() {
                Err(fenced) => fenced,
                Ok(()) => self.txn_failure("commit", e),
            };
            if !matches!(f, Failure::Fenced(_)) {
                self.drop_producer();
            }
            f
        })
    }

    /// Under HA: `Fenced` once a newer session of this sink exists (librdkafka then
    /// holds a fatal "fenced" error and purges what was queued). Checked before a
    /// session is replaced: a taken-over leader must never start a new session,
    /// which would fence the new leader in turn.
    pub(super) fn check_not_fenced(&self) -> Result<(), Failure> {
        let Some(p) = self.producer.as_ref().filter(|_| self.transactional()) else {
            return Ok(());
        };
        match p.client().fatal_error() {
            Some((
                RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch,
                reason,
            )) => Err(Failure::Fenced(format!(
                "lost leadership: another pgcdc's producer ({}) fenced this one; \
                 nothing more is written to Kafka by this process ({reason})",
                self.transactional_id()
            ))),
            _ => Ok(()),
        }
    }

    /// A transaction call's error: `Fenced` when a newer session of the sink took
    /// over (this process lost leadership), else a broker failure to retry.
    fn txn_failure(&self, what: &str, e: KafkaError) -> Failure {
        if is_fenced(&e) {
            Failure::Fenced(format!(
                "lost leadership: another pgcdc's producer ({}) fenced this one; \
                 nothing more is written to Kafka by this process ({e})",
                self.transactional_id()
            ))
        } else {
            Failure::Broker(format!("transaction {what}: {e}"))
        }
    }
}

/// The errors a producer gets once a newer session with its transactional id exists.
pub(super) fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
        )
    ) || e.to_string().contains("PRODUCER_FENCED")
}

/// Runs one of librdkafka's blocking transaction calls off the async workers.
async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), KafkaError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(r) => r,
        Err(_) => Err(KafkaError::Canceled),
    }
}
