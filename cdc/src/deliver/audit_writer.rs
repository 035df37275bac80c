//! Drains the sinks' delivery attempts (single ones, and whole batches a sink
//! settled at once) into the audit tables, many per transaction, and prunes
//! what is past the retention once an hour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcdc_sinks::{Attempt, AuditQueues, BatchAttempt};
use tokio::sync::watch;

use crate::journal::{Access, JournalError, StateStore, Store};
use crate::supervise::{Backoff, TaskHealth};

/// Attempts written per SQLite transaction.
const BATCH: usize = 5_000;
/// Capacity of the sinks → audit queue.
pub(crate) const QUEUE_CAPACITY: usize = 8_192;
/// Capacity of the sinks → audit queue of whole batches: each holds the ids of
/// up to a sink batch (5,000 for Kafka, a few bytes each), so this bounds the
/// queue to a few MiB.
pub(crate) const BATCH_QUEUE_CAPACITY: usize = 32;

/// Runs until every sender is gone. A batch that cannot be written (EMFILE, a lock
/// held too long) is retried with backoff while the sinks wait on the bounded queue,
/// so no attempt is dropped; `/readyz` says so meanwhile. Only after `stop`, when a
/// batch still fails for [`SHUTDOWN_GRACE`], does it give up with the error.
pub(crate) async fn run(
    store: Store,
    rx: AuditQueues,
    retention: Duration,
    stop: watch::Receiver<bool>,
    status: TaskHealth,
) -> Result<(), JournalError> {
    let mut writer = Writer {
        store,
        reader: None,
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        stop,
        status,
    };
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let AuditQueues {
        mut attempts,
        mut batches,
    } = rx;
    let (mut attempts_open, mut batches_open) = (true, true);
    let mut buf = Vec::with_capacity(BATCH);
    let mut batch_buf = Vec::with_capacity(BATCH_QUEUE_CAPACITY);
    while attempts_open || batches_open {
        tokio::select! {
            n = attempts.recv_many(&mut buf, BATCH), if attempts_open => {
                if n == 0 {
                    attempts_open = false;
                    continue;
                }
                let batch: Vec<Attempt> = std::mem::take(&mut buf);
                for a in &batch {
                    crate::metrics::attempt(a);
                }
                writer.write(Pending::Attempts(batch)).await?;
            }
            n = batches.recv_many(&mut batch_buf, BATCH_QUEUE_CAPACITY), if batches_open => {
                if n == 0 {
                    batches_open = false;
                    continue;
                }
                writer.write(Pending::Batches(std::mem::take(&mut batch_buf))).await?;
            }
            _ = prune.tick() => writer.prune(retention).await,
        }
    }
    Ok(())
}

/// What one transaction writes.
enum Pending {
    Attempts(Vec<Attempt>),
    Batches(Vec<BatchAttempt>),
}

impl Pending {
    /// Delivery attempts it holds (a batch counts each of its ids).
    fn attempts(&self) -> usize {
        match self {
            Pending::Attempts(a) => a.len(),
            Pending::Batches(b) => b.iter().map(|b| b.ids.len()).sum(),
        }
    }

    fn insert(&self, reader: &mut Box<dyn StateStore>) -> Result<(), JournalError> {
        match self {
            Pending::Attempts(a) => reader.audit_insert(a),
            Pending::Batches(b) => reader.audit_insert_batches(b),
        }
    }
}

/// How long a failing batch is retried once pgcdc is stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The audit table's writer: a journal handle, opened (again) on demand.
struct Writer {
    store: Store,
    reader: Option<Box<dyn StateStore>>,
    backoff: Backoff,
    stop: watch::Receiver<bool>,
    status: TaskHealth,
}

impl Writer {
    /// Writes `batch`, retrying until it is written (or pgcdc stops and it still fails).
    async fn write(&mut self, batch: Pending) -> Result<(), JournalError> {
        // Shared with each try's blocking task, so a retry needs no copy.
        let batch = Arc::new(batch);
        let mut failing_since: Option<Instant> = None;
        loop {
            let (reader, store, b) = (self.reader.take(), self.store.clone(), batch.clone());
            let (reader, result) = tokio::task::spawn_blocking(move || {
                let mut reader = match reader {
                    Some(r) => r,
                    None => match store.open(Access::Create) {
                        Ok(r) => r,
                        Err(e) => return (None, Err(e)),
                    },
                };
                let result = b.insert(&mut reader);
                (Some(reader), result)
            })
            .await
            .map_err(|e| JournalError::Task(format!("audit: {e}")))?;
            let e = match result {
                Ok(()) => {
                    self.reader = reader;
                    self.backoff.reset();
                    self.status.ok();
                    return Ok(());
                }
                // A fresh handle next time: the failure may have left this one unusable.
                Err(e) => e,
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if *self.stop.borrow() && since.elapsed() >= SHUTDOWN_GRACE {
                return Err(e);
            }
            let wait = self.backoff.next_delay();
            let why = crate::fd_limit::explain(e.to_string());
            self.status.failing(&format!(
                "{} delivery attempts wait to be recorded: {why}",
                batch.attempts()
            ));
            tracing::warn!(attempts = batch.attempts(), error = %why, retry_in_ms = wait.as_millis() as u64, "cannot write delivery attempts to the audit table; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Removes attempts past the retention; a failure waits for the next round.
    async fn prune(&mut self, retention: Duration) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
        let cutoff = cutoff.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let n = reader.audit_prune(&cutoff);
            (reader, n)
        })
        .await;
        match outcome {
            Ok((reader, n)) => {
                self.reader = Some(reader);
                match n {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "pruned audit records past retention"),
                    Err(e) => {
                        tracing::warn!(error = %crate::fd_limit::explain(e.to_string()), "cannot prune the audit table; trying again in an hour")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "audit prune task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::health;
    use pgcdc_sinks::AttemptOutcome;

    fn attempt(id: &str) -> Attempt {
        Attempt {
            event_id: id.to_string(),
            sink: "hook".to_string(),
            attempt: 1,
            // Now: an older time would be pruned (retention 1 h) by the first prune tick.
            at: pgcdc_sinks::AttemptTime::now(),
            status: Some(200),
            error: None,
            latency_ms: 1,
            outcome: AttemptOutcome::Delivered,
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_written_is_retried_not_dropped() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A file where the state dir should be: the journal cannot be opened until it goes.
        let dir = tmp.path().join("state");
        std::fs::write(&dir, b"in the way").unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = pgcdc_sinks::AuditLog::split(8, 1);
        let (_stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            Store::sqlite(&dir),
            rx,
            Duration::from_secs(3600),
            stop,
            TaskHealth::new("audit writer (test)"),
        ));
        tx.record(attempt("e1")).await;
        let failing = || {
            health()
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("audit writer (test)") && r.contains("1 delivery attempts"))
        };
        until("/readyz names the failing audit writer", failing).await;
        std::fs::remove_file(&dir).unwrap_or_else(|e| panic!("{e}"));
        until("the failure clears once the batch is written", || {
            !failing()
        })
        .await;
        drop(tx);
        task.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let reader = Store::sqlite(&dir)
            .open(Access::Existing)
            .unwrap_or_else(|e| panic!("{e}"));
        let stored = reader
            .audit_by_event("e1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored.len(), 1, "{stored:?}");
    }

    /// A batch goes in as one row and still answers for each of its events.
    #[tokio::test]
    async fn a_batch_is_one_row_that_answers_for_each_event() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("state");
        let (log, rx) = pgcdc_sinks::AuditLog::split(8, 1);
        let (_stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            Store::sqlite(&dir),
            rx,
            Duration::from_secs(3600),
            stop,
            TaskHealth::new("audit writer (batch test)"),
        ));
        let mut ids = pgcdc_sinks::DeliveryIds::default();
        for seq in 0..3u32 {
            ids.push(&format!("0000000000000010-{seq:08X}"));
        }
        log.record(Attempt {
            outcome: AttemptOutcome::Retrying,
            ..attempt("0000000000000010-00000001")
        })
        .await;
        log.record_batch(pgcdc_sinks::BatchAttempt {
            sink: "hook".into(),
            attempt: 2,
            at: pgcdc_sinks::AttemptTime::now(),
            latency_ms: 7,
            outcome: AttemptOutcome::Delivered,
            ids,
        })
        .await;
        drop(log);
        task.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let reader = Store::sqlite(&dir)
            .open(Access::Existing)
            .unwrap_or_else(|e| panic!("{e}"));
        let stored = reader
            .audit_by_event("0000000000000010-00000001")
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<_> = stored.iter().map(|a| (a.attempt, a.outcome)).collect();
        assert_eq!(
            got,
            [
                (1, AttemptOutcome::Retrying),
                (2, AttemptOutcome::Delivered)
            ],
            "{stored:?}"
        );
        let all = reader
            .audit_by_sink("hook", "2000-01-01T00:00:00Z", 100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(reader
            .audit_by_event("0000000000000010-00000003")
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
    }
}
