//! The one error type of the harness: every failure says which step broke.

use std::path::PathBuf;

/// A harness step that failed (starting Postgres, spawning pgcdc, ...).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A filesystem operation on a harness path failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (initdb, openssl, ...) could not be run.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and exited unsuccessfully.
    #[error("{program} failed ({status}):\n{output}")]
    Command {
        /// The program that failed.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
    /// Postgres did not start or did not become ready in time.
    #[error("postgres did not start: {reason}\n--- server log tail ---\n{log_tail}")]
    Startup {
        /// Why the harness gave up.
        reason: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// Postgres did not stop in time.
    #[error("postgres (pid {pid}) did not stop within {secs}s")]
    Shutdown {
        /// The postmaster pid.
        pid: u32,
        /// How long the harness waited.
        secs: u64,
    },
    /// A query or connection to the test cluster failed.
    #[error("postgres: {}", pg_error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A TLS client configuration could not be built.
    #[error("tls: {0}")]
    Tls(String),
    /// Sending a signal to a process failed.
    #[error("signal {signal} to pid {pid}: {source}")]
    Signal {
        /// The signal name.
        signal: &'static str,
        /// The target pid.
        pid: u32,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
    /// The environment lacks something the harness needs.
    #[error("{0}")]
    Environment(String),
}

/// Shorthand used across the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Wraps an io error with what was being done and on which path.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.into();
    move |source| HarnessError::Io { what, path, source }
}

/// tokio-postgres prints only "db error": spell out the server's message and
/// the cause chain, so a failing test says why.
fn pg_error_text(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
