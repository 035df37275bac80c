//! `[[sink]] type = "http"`: the HTTP-specific keys, their defaults and `validate()`.
//!
//! The engine owns the common sink keys (`name`, `type`, `events`, `tables`,
//! `filter`, `transform`); this struct deserializes from a table holding only
//! the keys in [`HTTP_KEYS`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::signing::SigningKey;

/// The keys [`HttpSinkConfig`] accepts, for the engine's unknown-key check.
pub const HTTP_KEYS: &[&str] = &[
    "url",
    "method",
    "headers",
    "auth",
    "signing_secret",
    "tls",
    "timeout_ms",
    "concurrency",
    "rate_limit",
    "batch",
    "retry",
];

/// Headers pgcdc sets itself; configuring them would break idempotency or signing.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
];

pub use pgcdc_schema::Secret;

/// HTTP method of the delivery requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `POST` (the default).
    #[default]
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl HttpMethod {
    pub(crate) fn as_reqwest(self) -> reqwest::Method {
        match self {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
            HttpMethod::Delete => reqwest::Method::DELETE,
        }
    }
}

/// `auth = { type = "bearer" | "basic" | "oauth2", ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`, from the config or from a file re-read when it changes.
    Bearer {
        /// The token (the engine has already replaced `${VAR}`).
        #[serde(default)]
        token: Option<Secret>,
        /// A file holding the token (surrounding whitespace ignored).
        #[serde(default)]
        token_file: Option<String>,
    },
    /// `Authorization: Basic ...`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// OAuth2 client credentials grant.
    Oauth2 {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: Secret,
        /// Requested scope.
        #[serde(default)]
        scope: Option<String>,
        /// Requested audience.
        #[serde(default)]
        audience: Option<String>,
    },
}

/// `tls = { ca, client_cert, client_key }`: PEM file paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra CA certificates (PEM bundle) trusted besides the system roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate chain (PEM) for mTLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Client private key (PEM: PKCS#8, PKCS#1 or SEC1) for mTLS.
    #[serde(default)]
    pub client_key: Option<String>,
}

/// `batch = { max_events, max_bytes, max_wait_ms }`: send JSON arrays.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most items in one request.
    #[serde(default = "BatchConfig::default_max_events")]
    pub max_events: usize,
    /// Most body bytes in one request (a single larger item is still sent alone).
    #[serde(default = "BatchConfig::default_max_bytes")]
    pub max_bytes: usize,
    /// Accepted for compatibility; `deliver` already receives whole batches, so it never waits.
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
}

impl BatchConfig {
    /// Default `max_events`.
    pub const DEFAULT_MAX_EVENTS: usize = 100;
    /// Default `max_bytes` (1 MiB).
    pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

    fn default_max_events() -> usize {
        Self::DEFAULT_MAX_EVENTS
    }
    fn default_max_bytes() -> usize {
        Self::DEFAULT_MAX_BYTES
    }
}

/// `retry = { max_attempts, initial_backoff_ms, max_backoff_ms, max_elapsed }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts before dead-lettering (unset: unlimited).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First backoff ceiling.
    #[serde(default = "RetryConfig::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Backoff cap.
    #[serde(default = "RetryConfig::default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Give up after this long since the first attempt, e.g. "30s", "5m", "1h", "2d" (unset: never).
    #[serde(default)]
    pub max_elapsed: Option<String>,
}

impl RetryConfig {
    /// Default `initial_backoff_ms`.
    pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 500;
    /// Default `max_backoff_ms`.
    pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;

    fn default_initial_backoff_ms() -> u64 {
        Self::DEFAULT_INITIAL_BACKOFF_MS
    }
    fn default_max_backoff_ms() -> u64 {
        Self::DEFAULT_MAX_BACKOFF_MS
    }

    /// `max_elapsed` parsed (valid after `validate`).
    pub fn max_elapsed(&self) -> Result<Option<Duration>, String> {
        self.max_elapsed
            .as_deref()
            .map(|s| {
                humantime::parse_duration(s.trim()).map_err(|e| {
                    format!("{s:?} is not a duration like \"30s\", \"5m\", \"1h\" ({e})")
                })
            })
            .transpose()
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: None,
            initial_backoff_ms: Self::DEFAULT_INITIAL_BACKOFF_MS,
            max_backoff_ms: Self::DEFAULT_MAX_BACKOFF_MS,
            max_elapsed: None,
        }
    }
}

/// The HTTP sink's own keys (see [`HTTP_KEYS`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Target URL (per-event placeholders are rendered by the engine's renderer).
    pub url: String,
    /// Request method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra static headers (values may be rendered per event by the engine).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Authentication.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Standard Webhooks secret `whsec_<base64>`.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Per-request timeout.
    #[serde(default = "HttpSinkConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once (across different rows).
    #[serde(default = "HttpSinkConfig::default_concurrency")]
    pub concurrency: usize,
    /// Requests per second across the sink.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Send JSON arrays.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
}

pub use crate::ConfigError;

impl HttpSinkConfig {
    /// Default `timeout_ms`.
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    /// Default `concurrency`.
    pub const DEFAULT_CONCURRENCY: usize = 8;

    fn default_timeout_ms() -> u64 {
        Self::DEFAULT_TIMEOUT_MS
    }
    fn default_concurrency() -> usize {
        Self::DEFAULT_CONCURRENCY
    }

    /// A config with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        HttpSinkConfig {
            url: url.into(),
            method: HttpMethod::Post,
            headers: BTreeMap::new(),
            auth: None,
            signing_secret: None,
            tls: None,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            concurrency: Self::DEFAULT_CONCURRENCY,
            rate_limit: None,
            batch: None,
            retry: RetryConfig::default(),
        }
    }

    /// Checks values serde cannot; `key_prefix` is the table's path, e.g. `sink[1]`.
    pub fn validate(&self, key_prefix: &str) -> Result<(), ConfigError> {
        self.check(key_prefix).map(|_| ())
    }

    /// Validates (errors named `{key_prefix}.key`, e.g. `sink[1].url`) and keeps
    /// what validation parsed, so building the sink checks nothing again.
    pub fn validated(self, key_prefix: &str) -> Result<ValidHttpSinkConfig, ConfigError> {
        let signing = self.check(key_prefix)?;
        Ok(ValidHttpSinkConfig {
            config: self,
            signing,
        })
    }

    /// The one validation of the HTTP keys; returns the decoded signing key.
    fn check(&self, key_prefix: &str) -> Result<Option<SigningKey>, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            key: format!("{key_prefix}.{key}"),
            message,
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(err("url", "must start with http:// or https://".into()));
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err(
                    &format!("headers.{name}"),
                    "is not a valid header name".into(),
                ));
            }
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(err(
                    &format!("headers.{name}"),
                    "is set by pgcdc itself and cannot be configured".into(),
                ));
            }
            if lower == "authorization" && self.auth.is_some() {
                return Err(err(
                    &format!("headers.{name}"),
                    "conflicts with `auth`; use one of them".into(),
                ));
            }
        }
        match &self.auth {
            Some(AuthConfig::Bearer { token, token_file }) => {
                if token.is_some() == token_file.is_some() {
                    return Err(err(
                        "auth",
                        "bearer auth needs exactly one of `token` or `token_file`".into(),
                    ));
                }
            }
            Some(AuthConfig::Oauth2 { token_url, .. }) => {
                if !(token_url.starts_with("http://") || token_url.starts_with("https://")) {
                    return Err(err(
                        "auth.token_url",
                        "must start with http:// or https://".into(),
                    ));
                }
            }
            Some(AuthConfig::Basic { .. }) | None => {}
        }
        let signing = match &self.signing_secret {
            Some(secret) => {
                Some(SigningKey::parse(secret).map_err(|message| err("signing_secret", message))?)
            }
            None => None,
        };
        if let Some(tls) = &self.tls {
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                return Err(err(
                    "tls",
                    "`client_cert` and `client_key` go together (mTLS needs both)".into(),
                ));
            }
        }
        if self.timeout_ms == 0 {
            return Err(err("timeout_ms", "must be at least 1".into()));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(err("concurrency", "must be between 1 and 1024".into()));
        }
        if let Some(rate) = self.rate_limit {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(err(
                    "rate_limit",
                    "must be a positive number of requests per second".into(),
                ));
            }
        }
        if let Some(batch) = &self.batch {
            if batch.max_events == 0 {
                return Err(err("batch.max_events", "must be at least 1".into()));
            }
            if batch.max_bytes == 0 {
                return Err(err("batch.max_bytes", "must be at least 1".into()));
            }
        }
        let retry = &self.retry;
        if retry.max_attempts == Some(0) {
            return Err(err(
                "retry.max_attempts",
                "must be at least 1 (leave it out to retry without limit)".into(),
            ));
        }
        if retry.initial_backoff_ms == 0 {
            return Err(err("retry.initial_backoff_ms", "must be at least 1".into()));
        }
        if retry.max_backoff_ms < retry.initial_backoff_ms {
            return Err(err(
                "retry.max_backoff_ms",
                "must be at least retry.initial_backoff_ms".into(),
            ));
        }
        retry
            .max_elapsed()
            .map_err(|message| err("retry.max_elapsed", message))?;
        Ok(signing)
    }
}

/// An [`HttpSinkConfig`] that passed validation, with the signing key it decoded:
/// what [`super::HttpSink::new`] builds from.
#[derive(Debug, Clone)]
pub struct ValidHttpSinkConfig {
    config: HttpSinkConfig,
    pub(crate) signing: Option<SigningKey>,
}

impl ValidHttpSinkConfig {
    /// The validated keys.
    pub fn config(&self) -> &HttpSinkConfig {
        &self.config
    }

    /// Replaces the URL and header values with the text the engine's templates
    /// stand for when they hold no placeholder (`{{` unescaped). Only values
    /// change, never names or the URL's scheme, so what was validated stays valid.
    pub fn with_literal_text(
        mut self,
        url: Option<String>,
        headers: Vec<(String, String)>,
    ) -> Self {
        if let Some(url) = url {
            self.config.url = url;
        }
        for (name, value) in headers {
            if let Some(v) = self.config.headers.get_mut(&name) {
                *v = value;
            }
        }
        self
    }
}
