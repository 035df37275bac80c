//! Drains the sinks' delivery attempts into the audit table in batches and
//! prunes attempts past the retention once an hour.

use std::path::PathBuf;
use std::time::Duration;

use pgcdc_sinks::Attempt;
use tokio::sync::mpsc;

use crate::journal::{JournalError, JournalReader};

/// Attempts written per SQLite transaction.
const BATCH: usize = 5_000;
/// Capacity of the sinks → audit queue.
pub const QUEUE_CAPACITY: usize = 8_192;

/// Normalises an RFC 3339 time to UTC with microseconds so stored times sort as text.
pub fn normalize_time(t: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| {
        t.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    })
}

/// Runs until every sender is gone.
pub async fn run(
    state_dir: PathBuf,
    mut rx: mpsc::Receiver<Attempt>,
    retention: Duration,
) -> Result<(), JournalError> {
    let mut reader = JournalReader::open(&state_dir, true)?;
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => {
                if n == 0 {
                    return Ok(());
                }
                let mut batch: Vec<Attempt> = std::mem::take(&mut buf);
                // Sinks stamp every item of a batch with the same time: normalize each
                // distinct value once.
                let mut last: Option<(String, String)> = None;
                for a in &mut batch {
                    crate::metrics::attempt(a);
                    match &last {
                        Some((raw, norm)) if *raw == a.at => a.at.clone_from(norm),
                        _ => {
                            if let Some(t) = normalize_time(&a.at) {
                                last = Some((std::mem::replace(&mut a.at, t.clone()), t));
                            }
                        }
                    }
                }
                reader = tokio::task::spawn_blocking(move || reader.audit_insert(&batch).map(|()| reader))
                    .await
                    .map_err(|e| JournalError::StateDir { path: state_dir.clone(), message: format!("audit task failed: {e}") })??;
            }
            _ = prune.tick() => {
                let cutoff = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
                let cutoff = cutoff.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
                let n = reader.audit_prune(&cutoff)?;
                if n > 0 {
                    tracing::info!(removed = n, "pruned audit records past retention");
                }
            }
        }
    }
}
