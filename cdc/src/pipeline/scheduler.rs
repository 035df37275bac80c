//! Runs `[[schedule]]` resyncs: sleeps until the earliest next run, then
//! queues the resync in the journal like `pgcdc resync` does (skipped, with a
//! warning, while one of the same table and sink is still queued or running).
//! Runs missed while pgcdc was stopped are not made up: the next one comes.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use crate::config::Config;
use crate::journal::{JournalReader, ResyncKind, ResyncRequestError};

/// Longest single sleep: the clock is re-read at least this often (clock changes).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Fires the schedules until `shutdown`.
pub async fn run(config: Arc<Config>, state_dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    if config.schedule.is_empty() {
        return;
    }
    let mut last = Utc::now();
    loop {
        let next = config
            .schedule
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.next_after(last).map(|t| (t, i)))
            .min();
        let Some((at, _)) = next else {
            return;
        };
        let wait = (at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let now = Utc::now();
        if now < at {
            continue;
        }
        // Every schedule due in (last, now] fires once.
        for (i, s) in config.schedule.iter().enumerate() {
            if s.next_after(last).is_some_and(|t| t <= now) {
                let (dir, r) = (state_dir.clone(), s.resync.clone());
                let outcome = tokio::task::spawn_blocking(move || {
                    let mut journal = JournalReader::open(&dir, true)?;
                    journal.request_resync(
                        ResyncKind::Resync,
                        &crate::config::TableName::parse(&r.table)
                            .map(|t| t.to_string())
                            .unwrap_or(r.table.clone()),
                        r.sink.as_deref(),
                        r.where_sql.as_deref(),
                    )
                })
                .await;
                match outcome {
                    Ok(Ok(info)) => {
                        tracing::info!(schedule = i, resync = info.id, table = %info.table, "scheduled resync queued")
                    }
                    Ok(Err(ResyncRequestError::AlreadyActive { id, .. })) => {
                        tracing::warn!(
                            schedule = i,
                            resync = id,
                            "scheduled resync skipped: the previous one is still running"
                        )
                    }
                    Ok(Err(e)) => {
                        tracing::error!(schedule = i, error = %e, "cannot queue the scheduled resync")
                    }
                    Err(e) => tracing::error!(schedule = i, error = %e, "scheduler task failed"),
                }
            }
        }
        last = now;
    }
}
