//! Runs `[[schedule]]` resyncs: sleeps until the earliest next run, then
//! queues the resync in the journal like `pgcdc resync` does (skipped, with a
//! warning, while one of the same table and sink is still queued or running).
//! Runs missed while pgcdc was stopped are not made up: the next one comes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::config::{Config, ScheduledResync};
use crate::journal::{Access, ResyncKind, ResyncRequestError, Store};
use crate::supervise::{Backoff, TaskHealth};

/// Longest single sleep: the clock is re-read at least this often (clock changes).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Fires the schedules until `shutdown` (never an error: the signature is what
/// `supervise` runs, which restarts the scheduler should it panic).
pub(crate) async fn run(
    config: Arc<Config>,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
    status: TaskHealth,
) -> Result<(), std::convert::Infallible> {
    if config.schedule.is_empty() {
        return Ok(());
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
            return Ok(());
        };
        let wait = (at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let now = Utc::now();
        if now < at {
            continue;
        }
        // Every schedule due in (last, now] fires once.
        for (i, s) in config.schedule.iter().enumerate() {
            if s.next_after(last).is_some_and(|t| t <= now)
                && !queue(i, &s.resync, &store, &mut shutdown, status).await
            {
                return Ok(());
            }
        }
        last = now;
    }
}

/// Queues schedule `i`'s resync. A passing journal error (EMFILE, a lock held too
/// long) is retried with backoff, so a scheduled run is not lost to it; `false`
/// when shutdown came first.
async fn queue(
    i: usize,
    r: &ScheduledResync,
    store: &Store,
    shutdown: &mut watch::Receiver<bool>,
    status: TaskHealth,
) -> bool {
    let table = r.table.to_string();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let (store, r, table) = (store.clone(), r.clone(), table.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let mut journal = store.open(Access::Create)?;
            journal.request_resync(
                ResyncKind::Resync,
                &table,
                r.sink.as_deref(),
                r.where_sql.as_deref(),
            )
        })
        .await;
        let why = match outcome {
            Ok(Ok(info)) => {
                status.ok();
                tracing::info!(schedule = i, resync = info.id, table = %info.table, "scheduled resync queued");
                return true;
            }
            Ok(Err(ResyncRequestError::AlreadyActive { id, .. })) => {
                status.ok();
                tracing::warn!(
                    schedule = i,
                    resync = id,
                    "scheduled resync skipped: the previous one is still running"
                );
                return true;
            }
            Ok(Err(e)) => crate::fd_limit::explain(e.to_string()),
            Err(e) => format!("scheduler task failed: {e}"),
        };
        let wait = backoff.next_delay();
        status.failing(&format!("schedule {i}: cannot queue its resync: {why}"));
        tracing::error!(schedule = i, error = %why, retry_in_ms = wait.as_millis() as u64, "cannot queue the scheduled resync; retrying");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::health;

    #[tokio::test]
    async fn a_scheduled_resync_that_cannot_be_queued_is_retried_not_lost() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A file where the state dir should be: the journal cannot be opened until it goes.
        let dir = tmp.path().join("state");
        std::fs::write(&dir, b"in the way").unwrap_or_else(|e| panic!("{e}"));
        let resync = ScheduledResync {
            table: pgcdc_schema::TableName::parse("public.items").unwrap_or_else(|e| panic!("{e}")),
            sink: None,
            where_sql: None,
        };
        let (_stop_tx, mut stop) = watch::channel(false);
        let status = TaskHealth::new("scheduler (test)");
        let store = Store::sqlite(&dir);
        let task = tokio::spawn(async move { queue(0, &resync, &store, &mut stop, status).await });
        let failing = || {
            health()
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("scheduler (test)") && r.contains("cannot queue"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !failing() {
            assert!(std::time::Instant::now() < deadline, "no /readyz reason");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_file(&dir).unwrap_or_else(|e| panic!("{e}"));
        let queued = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("not queued after the journal came back"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(queued);
        assert!(!failing());
        let journal = Store::sqlite(&dir)
            .open(Access::Existing)
            .unwrap_or_else(|e| panic!("{e}"));
        let next = journal.next_resync().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next.map(|r| r.table), Some("public.items".to_string()));
    }
}
