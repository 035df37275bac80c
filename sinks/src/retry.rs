//! The retry shape every part of pgcdc shares: a classifier answers with a
//! [`Disposition`], and the wait before the next try comes from one [`Backoff`]
//! (exponential, capped, with jitter).
//!
//! Users and their numbers (initial, max; the factor is always 2):
//!
//! | user                                   | initial  | max     | jitter |
//! |----------------------------------------|----------|---------|--------|
//! | HTTP sink (`[sink.retry]`)             | 500 ms   | 60 s    | full   |
//! | Kafka sink (recovery rounds)           | 500 ms   | 10 s    | equal  |
//! | reader, supervised tasks, audit writer | 500 ms   | 30 s    | equal  |
//! | admin API accept errors                | 10 ms    | 1 s     | equal  |
//!
//! Full jitter (uniform in `[0, ceiling]`) spreads many clients of one server
//! the most; equal jitter (uniform in `[ceiling/2, ceiling]`) still spreads
//! tasks that failed together, and never retries at once.

use std::time::{Duration, SystemTime};

/// What to do after a failure: the answer of every retry classifier
/// (HTTP's `AttemptError::disposition`, Kafka's `Failure::disposition` and
/// `record_disposition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Passing: try again, waiting at least `after` when the other side said so.
    Retry {
        /// The other side's own wait (HTTP `Retry-After`), a floor for the backoff.
        after: Option<Duration>,
    },
    /// Never succeeds as is: dead-letter the item, or stop (what the caller does
    /// with a definite failure is the caller's contract).
    Definite,
}

/// How the delay is spread below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`.
    Full,
    /// Uniform in `[ceiling/2, ceiling]`.
    Equal,
}

/// Exponential backoff with jitter and a cap: the n-th delay (counting from 0)
/// has the ceiling `min(max, initial * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    failures: u32,
}

impl Backoff {
    /// Starts at `initial`, never waits longer than `max`; equal jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            jitter: Jitter::Equal,
            failures: 0,
        }
    }

    /// The same, with full jitter.
    pub fn full_jitter(mut self) -> Self {
        self.jitter = Jitter::Full;
        self
    }

    /// The ceiling of delay `n` (0 = the first retry).
    pub fn ceiling(&self, n: u32) -> Duration {
        self.initial.saturating_mul(1u32 << n.min(31)).min(self.max)
    }

    /// Delay `n` (0 = the first retry) for the random number `random`, in whole
    /// milliseconds: `random % (ceiling_ms + 1)` below the ceiling (full), or
    /// that much of the upper half (equal).
    pub fn delay(&self, n: u32, random: u64) -> Duration {
        let ceiling = ms(self.ceiling(n));
        let floor = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => ceiling / 2,
        };
        Duration::from_millis(floor + random % (ceiling - floor).saturating_add(1))
    }

    /// The delay before the next try, counting failures since the last reset.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay(self.failures, jitter_random());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits about `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A cheap random number for jitter (std's per-process random hash keys; no crypto needed).
pub fn jitter_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_jitter_grows_caps_and_never_retries_at_once() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay(0, 0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 50), Duration::from_millis(100));
        assert_eq!(b.delay(0, 51), Duration::from_millis(50));
        assert_eq!(b.delay(3, 400), Duration::from_millis(800));
        assert_eq!(b.delay(4, 500), Duration::from_secs(1));
        assert_eq!(b.delay(40, 0), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_reaches_zero_and_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).full_jitter();
        assert_eq!(b.delay(0, 100), Duration::from_millis(100));
        assert_eq!(b.delay(0, 101), Duration::ZERO);
        assert_eq!(b.delay(40, 1000), Duration::from_secs(1));
    }

    #[test]
    fn next_delay_counts_failures_until_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        assert_eq!(b.failures(), 1);
        b.reset();
        assert_eq!(b.failures(), 0);
    }
}
