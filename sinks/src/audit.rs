//! The delivery audit: every attempt a sink makes is sent, through a bounded
//! queue, to the engine, which stores it in the state dir. A sink that settles a
//! whole batch at once (Kafka) sends one [`BatchAttempt`] for what it delivered.

mod batch;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;

pub use batch::{BatchAttempt, CorruptIds, DeliveryIds};

/// When an attempt started: UTC to the microsecond, written as RFC 3339 with six
/// fraction digits and `Z` (`2026-11-26T10:00:00.123456Z`), so stored times sort
/// as text. Every sink stamps attempts with this one type; nothing normalises later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptTime(DateTime<Utc>);

impl AttemptTime {
    /// Now, truncated to microseconds.
    pub fn now() -> AttemptTime {
        AttemptTime::from(Utc::now())
    }
}

impl From<DateTime<Utc>> for AttemptTime {
    fn from(t: DateTime<Utc>) -> Self {
        AttemptTime(t.trunc_subsecs(6))
    }
}

impl fmt::Display for AttemptTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

/// Why a string is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time, e.g. 2026-11-26T10:00:00Z")]
pub struct ParseAttemptTimeError(String);

/// Parses RFC 3339 with any offset (taken to UTC).
impl FromStr for AttemptTime {
    type Err = ParseAttemptTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| AttemptTime::from(t.with_timezone(&Utc)))
            .map_err(|_| ParseAttemptTimeError(s.to_string()))
    }
}

impl Serialize for AttemptTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AttemptTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Accepted by the destination.
    Delivered,
    /// Failed; will be retried.
    Retrying,
    /// Failed for good (definite error or retries exhausted): dead-lettered.
    Failed,
    /// Not sent: the transform yielded nothing.
    Skipped,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Delivery id (event id, `.N` for later transform outputs).
    pub event_id: String,
    /// Sink name.
    pub sink: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the attempt started.
    pub at: AttemptTime,
    /// HTTP status, if a response came.
    pub status: Option<u16>,
    /// Error text (no secrets), if it failed.
    pub error: Option<String>,
    /// Time to the response or the error, in ms.
    pub latency_ms: u64,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// Where sinks record attempts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: Option<Tx>,
}

#[derive(Debug, Clone)]
enum Tx {
    /// One queue of attempts: a batch is sent as its attempts, one per id.
    Attempts(mpsc::Sender<Attempt>),
    /// The engine's queues: batches go whole, through a short queue of their own
    /// (each holds up to a sink batch of ids).
    Split(mpsc::Sender<Attempt>, mpsc::Sender<BatchAttempt>),
}

/// The receiving ends of [`AuditLog::split`].
#[derive(Debug)]
pub struct AuditQueues {
    /// Single attempts.
    pub attempts: mpsc::Receiver<Attempt>,
    /// Whole batches.
    pub batches: mpsc::Receiver<BatchAttempt>,
}

impl AuditLog {
    /// A log and the receiving end the engine drains.
    pub fn channel(capacity: usize) -> (AuditLog, mpsc::Receiver<Attempt>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            AuditLog {
                tx: Some(Tx::Attempts(tx)),
            },
            rx,
        )
    }

    /// A log whose batches arrive whole: `capacity` attempts, `batches` batches.
    pub fn split(capacity: usize, batches: usize) -> (AuditLog, AuditQueues) {
        let (tx, attempts) = mpsc::channel(capacity);
        let (btx, batches) = mpsc::channel(batches.max(1));
        (
            AuditLog {
                tx: Some(Tx::Split(tx, btx)),
            },
            AuditQueues { attempts, batches },
        )
    }

    /// A log that records nothing (tests, sinks without audit).
    pub fn disabled() -> AuditLog {
        AuditLog { tx: None }
    }

    /// Records an attempt; waits when the queue is full (nothing is dropped while the
    /// engine runs).
    pub async fn record(&self, attempt: Attempt) {
        let sent = match &self.tx {
            None => return,
            Some(Tx::Attempts(tx) | Tx::Split(tx, _)) => tx.send(attempt).await.is_ok(),
        };
        if !sent {
            tracing::debug!("audit log closed; attempt not recorded (shutting down)");
        }
    }

    /// Records a batch settled as a whole; waits when the queue is full.
    pub async fn record_batch(&self, batch: BatchAttempt) {
        if batch.ids.is_empty() {
            return;
        }
        let sent = match &self.tx {
            None => return,
            Some(Tx::Split(_, tx)) => tx.send(batch).await.is_ok(),
            Some(Tx::Attempts(tx)) => {
                let ids = DeliveryIds::decode(batch.ids.as_bytes()).unwrap_or_default();
                let mut sent = true;
                for id in ids {
                    sent &= tx.send(batch.attempt_of(id)).await.is_ok();
                }
                sent
            }
        };
        if !sent {
            tracing::debug!("audit log closed; batch not recorded (shutting down)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_times_are_utc_microseconds_and_sort_as_text() {
        let t: AttemptTime = "2026-11-26T11:00:00.1234567+01:00"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.to_string(), "2026-11-26T10:00:00.123456Z");
        let z: AttemptTime = "2026-11-26T10:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(z.to_string(), "2026-11-26T10:00:00.000000Z");
        assert!(z < t && z.to_string() < t.to_string());
        let json = serde_json::to_string(&t).unwrap_or_default();
        assert_eq!(json, "\"2026-11-26T10:00:00.123456Z\"");
        assert!("yesterday".parse::<AttemptTime>().is_err());
    }
}
