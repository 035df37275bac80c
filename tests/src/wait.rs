//! Polling with a deadline: tests wait on a condition, never on a bare sleep.

use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

/// Interval between two evaluations of the condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `condition` until it returns true; panics (naming the caller's line)
/// after `timeout`.
#[track_caller]
pub fn wait_until<F, Fut>(timeout: Duration, condition: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_msg(timeout, "condition", condition)
}

/// Like [`wait_until`], with a description of what is awaited for the panic message.
#[track_caller]
pub fn wait_until_msg<F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    // Captured here, synchronously: #[track_caller] does not reach into async bodies.
    let caller = Location::caller();
    let what = what.to_owned();
    async move {
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            polls += 1;
            if condition().await {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "wait_until at {caller}: {what} still false after {:?} ({polls} polls)",
                    timeout
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn returns_once_condition_holds() {
        let n = Arc::new(AtomicU32::new(0));
        wait_until(Duration::from_secs(5), || {
            let n = n.clone();
            async move { n.fetch_add(1, Ordering::SeqCst) >= 3 }
        })
        .await;
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    #[should_panic(expected = "never true still false")]
    async fn panics_with_description_after_timeout() {
        wait_until_msg(Duration::from_millis(120), "never true", || async { false }).await;
    }
}
