//! The delivery audit: every attempt a sink makes is sent, through a bounded
//! queue, to the engine, which stores it in the state dir.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
    /// When the attempt started, RFC 3339.
    pub at: String,
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
    tx: Option<mpsc::Sender<Attempt>>,
}

impl AuditLog {
    /// A log and the receiving end the engine drains.
    pub fn channel(capacity: usize) -> (AuditLog, mpsc::Receiver<Attempt>) {
        let (tx, rx) = mpsc::channel(capacity);
        (AuditLog { tx: Some(tx) }, rx)
    }

    /// A log that records nothing (tests, sinks without audit).
    pub fn disabled() -> AuditLog {
        AuditLog { tx: None }
    }

    /// Records an attempt; waits when the queue is full (nothing is dropped while the
    /// engine runs).
    pub async fn record(&self, attempt: Attempt) {
        if let Some(tx) = &self.tx {
            if tx.send(attempt).await.is_err() {
                tracing::debug!("audit log closed; attempt not recorded (shutting down)");
            }
        }
    }
}
