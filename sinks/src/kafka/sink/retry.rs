//! Retry-or-definite for the Kafka sink, decided here and nowhere else.
//!
//! Two levels, one shape ([`Disposition`]):
//! - a record the broker refused ([`record_disposition`]): a record too large or
//!   invalid is definite and dead-lettered; any other error of a record fails
//!   the round, which recovers (new producer session, read-back) and retries.
//! - a sink-wide step (a progress record, metadata, topic creation, the
//!   read-back; [`Failure::disposition`]): a broker that does not answer or
//!   fails is retried for ever with backoff; what only an operator can fix (the
//!   producer config, a topic that is missing, gone or was resized, a topic the
//!   broker refuses to create) stops the sink.
//!
//! Backoff between rounds: the shared [`Backoff`], 500 ms doubling to 10 s,
//! equal jitter.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::KafkaSink;
use crate::kafka::progress::ReadBackError;
use crate::retry::{jitter_random, Backoff, Disposition};
use crate::SinkError;

/// Backoff between recovery rounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a sink-wide step failed. Its Display is the log / error text.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// A broker request did not complete (timeout, connection, a broker error,
    /// a blocking task that failed, a topic not yet visible after its creation).
    #[error("{0}")]
    Broker(String),
    /// The read-back failed; its own kinds say whether a retry can help.
    #[error(transparent)]
    ReadBack(#[from] ReadBackError),
    /// The producer cannot be created from the sink's config.
    #[error("{0}")]
    Config(String),
    /// Kafka's topics do not fit what the sink recorded or needs: a partition
    /// count changed, a recorded topic is gone, a topic is missing and may not be
    /// created, or the broker refused to create one.
    #[error("{0}")]
    Topics(String),
    /// A progress record cannot be encoded.
    #[error("{0}")]
    Encode(String),
    /// Under HA, a newer leader's transactional producer fenced this one: this
    /// process lost leadership and must write nothing more.
    #[error("{0}")]
    Fenced(String),
}

impl Failure {
    /// Retry (with backoff, for ever) or stop the sink: the only place this is decided.
    pub(super) fn disposition(&self) -> Disposition {
        match self {
            Failure::Broker(_) | Failure::ReadBack(ReadBackError::Transient { .. }) => {
                Disposition::Retry { after: None }
            }
            Failure::ReadBack(ReadBackError::Definite(_))
            | Failure::Config(_)
            | Failure::Topics(_)
            | Failure::Encode(_)
            | Failure::Fenced(_) => Disposition::Definite,
        }
    }
}

/// A record's acknowledgement error: definite (dead-letter the item) when no
/// retry can make the broker take this record, else the round is retried.
pub(super) fn record_disposition(e: &KafkaError) -> Disposition {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord,
        ) => Disposition::Definite,
        _ => Disposition::Retry { after: None },
    }
}

/// The wait before recovery round `round` (1 = the first retry): ceilings 1 s,
/// 2 s, 4 s, 8 s, then 10 s.
pub(super) fn backoff(round: u32) -> Duration {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX).delay(round, jitter_random())
}

impl KafkaSink {
    /// After a sink-wide step failed in round `round`: a definite failure stops
    /// the sink; a passing one ends the producer session and waits out the backoff.
    pub(super) async fn retry_or_stop(
        &mut self,
        failure: Failure,
        round: u32,
        what: &'static str,
    ) -> Result<(), SinkError> {
        if failure.disposition() == Disposition::Definite {
            return Err(self.definite(failure.to_string()));
        }
        if let Err(fenced) = self.check_not_fenced() {
            return Err(self.definite(fenced.to_string()));
        }
        tracing::warn!(sink = %self.name, round, error = %failure, "{what}; retrying");
        self.drop_producer();
        tokio::time::sleep(backoff(round)).await;
        Ok(())
    }

    /// The sink's error for a definite failure.
    pub(super) fn definite(&self, message: String) -> SinkError {
        SinkError::Definite {
            sink: self.name.clone(),
            message,
        }
    }
}
