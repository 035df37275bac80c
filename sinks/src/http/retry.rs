//! Retry-or-definite, decided in one place ([`AttemptError::disposition`]), and
//! the retry limits around the shared [`Backoff`] (full jitter).
//!
//! Transient (retried): 408, 429, 5xx except 501, connection errors, timeouts,
//! resets, auth failures (a token endpoint that is down or misconfigured must
//! hold the sink back, not flood the DLQ). Definite (dead-lettered): other 4xx,
//! 501, 3xx (redirects are not followed: a POST must not turn into a GET), a URL
//! or header that does not render.

use std::time::{Duration, SystemTime};

use super::config::RetryConfig;
use crate::retry::Backoff;
pub(crate) use crate::retry::{jitter_random, Disposition};

/// Longest `Retry-After` honoured; a longer one waits this long and tries again.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// How much of an error response's body goes into the error text.
const ERROR_BODY_BYTES: usize = 512;

/// Why one attempt failed. Its Display is the audit / DLQ error text: no secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The destination answered with a non-2xx status.
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// No response within `timeout_ms`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Could not connect (refused, DNS, TLS handshake).
    #[error("connect error: {0}")]
    Connect(String),
    /// The connection broke mid-request (reset, closed without a response).
    #[error("transport error: {0}")]
    Transport(String),
    /// Getting credentials failed (token file unreadable, token endpoint down).
    #[error("auth: {0}")]
    Auth(String),
    /// The request cannot be built for this item (bad rendered URL or header).
    #[error("cannot build request: {0}")]
    Request(String),
}

impl AttemptError {
    /// The error for a non-2xx response (body cut to 512 bytes).
    pub(crate) fn status(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let cut = &body[..body.len().min(ERROR_BODY_BYTES)];
        AttemptError::Status {
            status,
            body: String::from_utf8_lossy(cut).into_owned(),
            retry_after,
        }
    }

    /// Maps a reqwest error without its URL (a URL may carry a token in its query).
    pub(crate) fn from_reqwest(e: reqwest::Error, timeout: Duration) -> Self {
        let e = e.without_url();
        if e.is_timeout() {
            AttemptError::Timeout(timeout)
        } else if e.is_builder() {
            AttemptError::Request(error_chain(&e))
        } else if e.is_connect() {
            AttemptError::Connect(error_chain(&e))
        } else {
            AttemptError::Transport(error_chain(&e))
        }
    }

    /// Retry or dead-letter: the only place this is decided.
    pub(crate) fn disposition(&self) -> Disposition {
        match self {
            AttemptError::Status {
                status,
                retry_after,
                ..
            } => match *status {
                408 | 429 => Disposition::Retry {
                    after: *retry_after,
                },
                501 => Disposition::Definite,
                500..=599 => Disposition::Retry {
                    after: *retry_after,
                },
                _ => Disposition::Definite,
            },
            AttemptError::Timeout(_)
            | AttemptError::Connect(_)
            | AttemptError::Transport(_)
            | AttemptError::Auth(_) => Disposition::Retry { after: None },
            AttemptError::Request(_) => Disposition::Definite,
        }
    }

    /// The HTTP status, if a response came.
    pub(crate) fn http_status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The error and its sources on one line (reqwest hides the cause in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After`: delta-seconds or an HTTP-date (a date in the past means now).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Backoff and limits from `retry`.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    max_attempts: Option<u32>,
    backoff: Backoff,
    max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    /// From a validated config (an unparsable `max_elapsed` means no limit).
    pub(crate) fn new(cfg: &RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: cfg.max_attempts,
            backoff: Backoff::new(
                Duration::from_millis(cfg.initial_backoff_ms),
                Duration::from_millis(cfg.max_backoff_ms),
            )
            .full_jitter(),
            max_elapsed: cfg.max_elapsed().ok().flatten(),
        }
    }

    /// The wait before attempt `failed + 1`, or `None` when retrying must stop.
    /// Full jitter: uniform in `[0, min(max, initial * 2^(failed-1))]`; a server's
    /// `Retry-After` (capped at [`RETRY_AFTER_CAP`]) is a floor.
    pub(crate) fn next_delay(
        &self,
        failed: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| failed >= max) {
            return None;
        }
        let jittered = self.backoff.delay(failed.saturating_sub(1), random);
        let delay = match retry_after {
            Some(after) => jittered.max(after.min(RETRY_AFTER_CAP)),
            None => jittered,
        };
        if let Some(limit) = self.max_elapsed {
            if elapsed.saturating_add(delay) > limit {
                return None;
            }
        }
        Some(delay)
    }
}
