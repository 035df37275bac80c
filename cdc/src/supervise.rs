//! Supervision of the background tasks (their backoff is the shared one in `pgcdc_sinks::retry`).
//!
//! ```text
//!  supervise(name, task) ──spawn──▶ task(TaskHealth) ──Ok──▶ done (shutdown)
//!        ▲                                │ Err or panic
//!        └──── backoff with jitter ◀──────┘  + /readyz reason + error log
//! ```
//!
//! What each task does with a passing error (EMFILE, a locked journal, a dropped
//! connection), decided here once:
//!
//! | task          | passing error                                  | task dies              |
//! |---------------|------------------------------------------------|------------------------|
//! | resync driver | restarted with backoff; the resync resumes     | restarted              |
//! | scheduler     | the queueing is retried with backoff           | restarted              |
//! | slot poller   | reconnects by itself                           | restarted              |
//! | admin API     | accept errors: backoff, keeps serving          | restarted, same socket |
//! | audit writer  | the batch is retried with backoff (sinks wait) | pgcdc stops            |
//!
//! While a task fails, `/readyz` names it and the error; the task clears that
//! with [`TaskHealth::ok`] once it made progress again. The reader, the journal
//! thread and the sink runners are not supervised here: the reader retries
//! transient errors itself, and any of them stopping stops pgcdc (see `run`).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::health;

/// A task that ran this long before failing is restarted with the first delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How long a task may take to finish after shutdown before it is aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The one backoff (see `pgcdc_sinks::retry`); re-exported so every task
/// imports it from where its supervision is decided.
pub(crate) use pgcdc_sinks::retry::Backoff;

/// A task's line in `/readyz`: set while it fails, cleared once it works again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskHealth(&'static str);

impl TaskHealth {
    /// The handle of task `name`.
    pub(crate) fn new(name: &'static str) -> Self {
        TaskHealth(name)
    }

    /// The task made progress: no longer a reason for `/readyz` to fail.
    pub(crate) fn ok(&self) {
        health().task_ok(self.0);
    }

    /// The task is failing and retrying (`why` should say what to check).
    pub(crate) fn failing(&self, why: &str) {
        health().task_failing(self.0, why);
    }
}

/// Aborts the task when dropped, so an aborted supervisor takes its task with it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `task` until it returns `Ok` or `shutdown` turns true (or its sender is
/// gone); restarts it, with backoff, after an error or a panic, reporting both in
/// the log and `/readyz`.
pub(crate) async fn supervise<F, Fut, E>(
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
    mut task: F,
) where
    F: FnMut(TaskHealth) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let status = TaskHealth::new(name);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        // Spawned, so that a panic ends only this run of the task.
        let mut handle = AbortOnDrop(tokio::spawn(task(status)));
        let outcome = tokio::select! {
            r = &mut handle.0 => r,
            _ = wait_shutdown(&mut shutdown) => {
                // The task sees the same signal; give it its own clean end (dropping
                // the handle aborts one that does not watch the signal).
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut handle.0).await;
                return;
            }
        };
        let why = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => crate::fd_limit::explain(e.to_string()),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(_) => return,
        };
        if *shutdown.borrow() {
            return;
        }
        if started.elapsed() > HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        status.failing(&why);
        tracing::error!(task = name, error = %why, retry_in_ms = delay.as_millis() as u64, "background task failed; restarting it");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_failing_task_is_restarted_and_reported_until_it_succeeds() {
        let runs = Arc::new(AtomicU32::new(0));
        let (_tx, rx) = watch::channel(false);
        let r = runs.clone();
        supervise("test task", rx, move |status| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err("Too many open files (os error 24)".to_string()),
                    1 => panic!("boom"),
                    _ => {
                        status.ok();
                        Ok(())
                    }
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let reasons = health().not_ready_reasons();
        assert!(
            !reasons.iter().any(|r| r.contains("test task")),
            "{reasons:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_a_task_that_keeps_failing() {
        let (tx, rx) = watch::channel(false);
        let sup = tokio::spawn(supervise("failing task", rx, |_| async {
            Err::<(), _>("locked")
        }));
        let reported = || {
            health()
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("failing task") && r.contains("locked"))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reported() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reported(), "{:?}", health().not_ready_reasons());
        let _ = tx.send(true);
        tokio::time::timeout(Duration::from_secs(1), sup)
            .await
            .unwrap_or_else(|_| panic!("supervisor did not stop"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
