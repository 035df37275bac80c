//! `[admin]`: the admin HTTP API and `/metrics`.

use std::time::Duration;

use pgcdc_schema::Secret;
use serde::Deserialize;

use super::{duration, key_err, ConfigError};

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// Address of the admin API and `/metrics`, `IP:PORT`.
    #[serde(default = "AdminConfig::default_listen")]
    pub(crate) listen: String,
    /// Bearer token of the API. Unset: pgcdc generates one into `state.dir/admin.token`
    /// (owner-only) and mutations need that; set: reads of row data need it too.
    pub(crate) token: Option<Secret>,
    /// Host names (besides IP literals and `localhost`) the API answers to; any other
    /// `Host` header is refused, so a DNS-rebinding page cannot reach it.
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
    /// `/readyz` fails while a sink's oldest undelivered event is older than this.
    #[serde(
        default = "AdminConfig::default_ready_max_sink_lag",
        deserialize_with = "duration::sink_lag"
    )]
    pub(crate) ready_max_sink_lag: Duration,
    /// Warn (log, metric, `/readyz`) when the slot's `safe_wal_size` falls below this many bytes.
    #[serde(default = "AdminConfig::default_min_safe_wal_bytes")]
    pub(crate) min_safe_wal_bytes: i64,
}

impl AdminConfig {
    /// Where the admin API listens unless configured.
    pub(crate) const DEFAULT_LISTEN: &'static str = "127.0.0.1:9187";
    const DEFAULT_READY_MAX_SINK_LAG: Duration = Duration::from_secs(300);

    fn default_listen() -> String {
        Self::DEFAULT_LISTEN.to_string()
    }

    fn default_ready_max_sink_lag() -> Duration {
        Self::DEFAULT_READY_MAX_SINK_LAG
    }

    fn default_min_safe_wal_bytes() -> i64 {
        1 << 30
    }

    /// `ready_max_sink_lag`.
    pub(crate) fn ready_max_sink_lag(&self) -> Duration {
        self.ready_max_sink_lag
    }

    /// The listen address (validated at load).
    pub(crate) fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            key_err(
                "admin.listen",
                format!(
                    "{:?} is not an IP:PORT address; write e.g. \"127.0.0.1:9187\" or \"[::1]:9187\"",
                    self.listen
                ),
            )
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.listen_addr()?;
        match &self.token {
            Some(t) if t.expose().trim().is_empty() => Err(key_err(
                "admin.token",
                "is empty; set it to a long random string (e.g. token = \"${PGCDC_ADMIN_TOKEN}\") or remove the key",
            )),
            None if !addr.ip().is_loopback() => Err(key_err(
                "admin.listen",
                format!(
                    "{addr} is reachable from other hosts, so the admin API's mutating endpoints \
                     and its row data (DLQ, audit, status) need a token: set admin.token = \"${{PGCDC_ADMIN_TOKEN}}\" \
                     or listen on a loopback address such as 127.0.0.1"
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Self::default_listen(),
            token: None,
            allowed_hosts: Vec::new(),
            ready_max_sink_lag: Self::DEFAULT_READY_MAX_SINK_LAG,
            min_safe_wal_bytes: Self::default_min_safe_wal_bytes(),
        }
    }
}
