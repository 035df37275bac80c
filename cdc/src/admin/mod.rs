//! The admin HTTP API (`[admin] listen`): health, readiness, `/metrics`, the
//! status JSON, the DLQ and the delivery audit.
//!
//! ```text
//!  GET  /healthz  /readyz  /metrics  /api/status  /api/sinks/{sink}/dlq  /api/audit
//!  POST /api/sinks/{sink}/dlq/replay|drop  /api/sinks/{sink}/checkpoint  /api/resync  (bearer token)
//!        │
//!        ├─▶ Health (reader + runner guards)      ├─▶ metrics() registry
//!        └─▶ own store session (spawn_blocking)   └─▶ slot poller (own SQL connection)
//! ```
//!
//! Who may call what (the token, `Host`, origin and JSON checks) is decided in
//! one place, [`guard`]; the token itself comes from [`token`].

mod api;
mod guard;
mod page;
mod serve;
mod slot_poller;
pub(crate) mod token;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub(crate) use crate::health::health;

use crate::config::{AdminConfig, Config};
use crate::journal::{Access, JournalError, StateStore, Store};
use crate::supervise::supervise;

/// `/api/status` requests served at once: each opens a connection to the source, so
/// this bounds what the admin API can take from Postgres and from the fd limit.
pub(crate) const STATUS_CONCURRENCY: usize = 4;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// The configured address is taken or not ours.
    #[error("cannot listen on admin.listen {addr}: {source}; free the port or set [admin] listen to another address")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// `admin.listen` is not an address (normally caught at config load).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The journal could not be opened for the API.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The admin token could not be read or generated.
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

/// An error answer: status and a JSON body `{"error": "..."}` that says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl From<JournalError> for ApiError {
    fn from(e: JournalError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            return (status, [("www-authenticate", "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}

/// What the handlers share.
pub(crate) struct AdminState {
    config: Arc<Config>,
    sink_names: Vec<String>,
    journal: Mutex<Box<dyn StateStore>>,
    guard: guard::Guard,
    /// Permits for `/api/status` ([`STATUS_CONCURRENCY`]).
    status_permits: Semaphore,
}

impl AdminState {
    /// Runs `f` on the API's journal handle on a blocking thread.
    pub(crate) async fn with_journal<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn StateStore) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            // A panic in an earlier request leaves the connection itself usable.
            let mut journal = state.journal.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut **journal)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("journal task failed: {e}")))?
    }

    /// 404 unless `sink` is configured.
    pub(crate) fn known_sink(&self, sink: &str) -> Result<(), ApiError> {
        if self.sink_names.iter().any(|s| s == sink) {
            return Ok(());
        }
        Err(ApiError::NotFound(format!(
            "no sink named {sink:?} in the config; sinks: {}",
            self.sink_names.join(", ")
        )))
    }
}

/// The running admin server and its helpers; they stop when this is dropped.
pub(crate) struct AdminServer {
    tasks: JoinSet<()>,
    /// Dropped with the server: the supervisors see it as shutdown.
    _stop: watch::Sender<bool>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Binds `[admin] listen` and serves the API; also starts the slot poller.
///
/// A taken port is an error when `listen` is configured; with the default
/// address it is a warning, so several pgcdc instances on one host (or a
/// test suite) still run, without an API for all but the first.
pub(crate) async fn start(config: Arc<Config>) -> Result<AdminServer, AdminError> {
    let admin: &AdminConfig = &config.admin;
    let addr = admin.listen_addr()?;
    let sink_names = crate::status::sink_names(&config);
    crate::metrics::metrics().register_sinks(sink_names.iter().map(String::as_str));
    health().expect_sinks(sink_names.iter().map(String::as_str));

    // Generated at the first start even when the API cannot bind, so that
    // `pgcdc admin-token` always has an answer once pgcdc has run.
    let (secret, configured) = token::load_or_create(&config)?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let poller_config = Arc::clone(&config);
    tasks.spawn(supervise("slot poller", stopped.clone(), move |_| {
        slot_poller::run(Arc::clone(&poller_config))
    }));
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(source) if admin.listen == AdminConfig::DEFAULT_LISTEN => {
            tracing::warn!(%addr, error = %source, "admin API and /metrics not started: the default address is taken; set [admin] listen to a free address");
            return Ok(AdminServer { tasks, _stop: stop });
        }
        Err(source) => return Err(AdminError::Bind { addr, source }),
    };
    let local = listener.local_addr().unwrap_or(addr);
    let state = Arc::new(AdminState {
        sink_names,
        journal: Mutex::new(Store::from_config(&config.state).open(Access::Existing)?),
        guard: guard::Guard::new(secret, configured, &admin.allowed_hosts),
        status_permits: Semaphore::new(STATUS_CONCURRENCY),
        config: config.clone(),
    });
    let app = api::router(state);
    let listener = Arc::new(listener);
    let max_connections = crate::fd_limit::admin_connection_cap(&config);
    let cap = Arc::new(Semaphore::new(max_connections));
    // A panic in the accept loop restarts it on the same socket; held connections
    // keep their permits of the same cap.
    tasks.spawn(supervise("admin API", stopped, move |status| {
        serve::serve(
            listener.clone(),
            app.clone(),
            cap.clone(),
            max_connections,
            status,
        )
    }));
    tracing::info!(addr = %local, max_connections, "admin API listening");
    Ok(AdminServer { tasks, _stop: stop })
}

#[cfg(test)]
mod tests;
