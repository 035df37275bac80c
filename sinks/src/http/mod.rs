//! The HTTP sink: delivers each item (or a JSON array of items) to an HTTP API.
//!
//! ```text
//!  deliver([Outgoing]) ─▶ jobs (one item, or a batch) chained per row
//!        │                  ▼ up to `concurrency` jobs in flight, a row's jobs in order
//!        │               sink.rs: prepare once (body bytes, Idempotency-Key, webhook-*)
//!        │                  ▼ attempt loop: retry.rs decides retry-or-definite
//!        │               service.rs: rate limit ─▶ auth.rs header ─▶ reqwest (rustls/ring)
//!        └─▶ [ItemResult] in input order; every attempt ─▶ AuditLog
//! ```
//!
//! Headers on every request: `Content-Type: application/json`, `Idempotency-Key`
//! and `webhook-id` (= [`crate::Outgoing::delivery_id`], or for a batch of several
//! items `batch-<32 hex of SHA-256 over the ids joined by ','>`), the same on every
//! retry and replay; `webhook-timestamp` (the attempt's time in UNIX seconds, as
//! Standard Webhooks receivers require) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`) when `signing_secret`
//! is set, signed per attempt over the exact bytes sent.
//!
//! Errors: transient ones (408, 429, 5xx but 501, network, timeouts, auth) retry with
//! full-jitter exponential backoff until `retry.max_attempts` / `retry.max_elapsed`;
//! definite ones (other 4xx, 501, 3xx, unrenderable request) dead-letter at once, and
//! later items of the same row in the batch are `Parked`.

mod auth;
mod body;
mod config;
mod retry;
mod service;
mod signing;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{
    AuthConfig, BatchConfig, ConfigError, HttpMethod, HttpSinkConfig, RetryConfig, Secret,
    TlsConfig, ValidHttpSinkConfig, HTTP_KEYS,
};
pub use sink::{HttpSink, Renderer};

/// Building or checking an HTTP sink failed. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS file is unusable.
    #[error("tls file {path}: {message}")]
    Tls {
        /// The file(s).
        path: String,
        /// Why.
        message: String,
    },
    /// A file cannot be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {message}")]
    Client {
        /// Why.
        message: String,
    },
    /// A configured header cannot be sent.
    #[error("header {name}: {message}")]
    Header {
        /// Header name.
        name: String,
        /// Why.
        message: String,
    },
    /// The endpoint is unreachable or its TLS is not trusted.
    #[error("healthcheck of {url} failed: {message}")]
    Healthcheck {
        /// The origin checked (no credentials).
        url: String,
        /// Why.
        message: String,
    },
}
