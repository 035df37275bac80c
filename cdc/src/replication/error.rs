//! The one place that decides whether a replication failure is worth a reconnect.

use std::fmt;

/// A failure of the replication or catalog connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Socket-level failure (refused, reset, EOF); transient.
    #[error("connection to the source failed: {0}")]
    Io(#[from] std::io::Error),
    /// TLS negotiation or certificate verification failed; definite.
    #[error("TLS with the source failed: {message}")]
    Tls {
        /// What went wrong, with the fix when known.
        message: String,
    },
    /// The server refused our credentials or the auth method; definite.
    #[error("authentication to the source failed: {message}")]
    Auth {
        /// The server's or our own explanation.
        message: String,
    },
    /// The server sent an ErrorResponse; transient or definite by SQLSTATE.
    #[error("{}", ServerErrorDisplay(self))]
    Server {
        /// ERROR, FATAL or PANIC.
        severity: String,
        /// The SQLSTATE, e.g. `55006`.
        code: String,
        /// The primary message.
        message: String,
        /// The DETAIL line, if any.
        detail: Option<String>,
        /// The HINT line, if any.
        hint: Option<String>,
    },
    /// The server sent something the protocol does not allow here; definite.
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    /// The source URL or TLS material is unusable; definite.
    #[error("invalid source configuration: {0}")]
    Config(String),
    /// Error from the ordinary (tokio-postgres) catalog connection.
    #[error("{}", sql_error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
}

/// tokio-postgres prints only "db error" or "error performing TLS handshake":
/// spell out the server's message (with SQLSTATE, detail, hint) or the cause chain.
fn sql_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Formats `Server` as `ERROR 55006: message (detail: ..) (hint: ..)`.
struct ServerErrorDisplay<'a>(&'a ReplicationError);

impl fmt::Display for ServerErrorDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let ReplicationError::Server {
            severity,
            code,
            message,
            detail,
            hint,
        } = self.0
        {
            write!(f, "source server {severity} {code}: {message}")?;
            if let Some(detail) = detail {
                write!(f, " (detail: {detail})")?;
            }
            if let Some(hint) = hint {
                write!(f, " (hint: {hint})")?;
            }
        }
        Ok(())
    }
}

/// SQLSTATEs (exact or class prefix) after which a reconnect can succeed.
///
/// 08 connection exception, 53 insufficient resources (too many connections,
/// out of memory/disk), 57P01-57P05 shutdown / not yet accepting
/// connections, 40001/40P01 serialization/deadlock, 55006 object in use
/// (a replication slot still held by a walsender that has not noticed its
/// client died; it is released after `wal_sender_timeout`), 58000/58030
/// system / I/O error on the server.
fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "55006" | "58000" | "58030")
}

/// Without a SQLSTATE, only a socket error is transient; rustls errors arrive
/// wrapped in io errors and are certificate or config problems (definite).
fn sql_cause_is_transient(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(err) = cause {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return false;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io
                .get_ref()
                .is_none_or(|inner| inner.downcast_ref::<rustls::Error>().is_none());
        }
        cause = err.source();
    }
    false
}

impl ReplicationError {
    /// True when reconnecting (with backoff) may succeed without operator action.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io(_) => true,
            ReplicationError::Server { code, .. } => sqlstate_is_transient(code),
            ReplicationError::Sql(e) => {
                if let Some(code) = e.code() {
                    return sqlstate_is_transient(code.code());
                }
                e.is_closed() || sql_cause_is_transient(e)
            }
            ReplicationError::Tls { .. }
            | ReplicationError::Auth { .. }
            | ReplicationError::Protocol(_)
            | ReplicationError::Config(_) => false,
        }
    }

    /// The server's SQLSTATE, when the failure came from an ErrorResponse.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code.as_str()),
            ReplicationError::Sql(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// Turns an io error raised by tokio-rustls into `Tls` when rustls caused it.
    pub(crate) fn from_tls_io(e: std::io::Error) -> Self {
        let from_rustls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if from_rustls {
            ReplicationError::Tls {
                message: e.to_string(),
            }
        } else {
            ReplicationError::Io(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> ReplicationError {
        ReplicationError::Server {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: Some("d".into()),
            hint: None,
        }
    }

    #[test]
    fn replication_error_classification() {
        assert!(server("55006").is_transient());
        assert!(server("57P01").is_transient());
        assert!(server("08006").is_transient());
        assert!(server("53300").is_transient());
        assert!(!server("42704").is_transient());
        assert!(!server("55000").is_transient());
        assert!(!server("28P01").is_transient());
        assert!(ReplicationError::Io(std::io::ErrorKind::ConnectionReset.into()).is_transient());
        assert!(!ReplicationError::Auth {
            message: "x".into()
        }
        .is_transient());
        assert!(!ReplicationError::Protocol("x".into()).is_transient());
        assert_eq!(server("55006").sqlstate(), Some("55006"));
        assert_eq!(ReplicationError::Config("x".into()).sqlstate(), None);
    }

    #[test]
    fn replication_error_display_keeps_detail() {
        let text = server("55006").to_string();
        assert!(text.contains("55006"), "{text}");
        assert!(text.contains("(detail: d)"), "{text}");
    }

    #[test]
    fn replication_error_tls_io_is_classified() {
        let rustls_err = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            ReplicationError::from_tls_io(rustls_err),
            ReplicationError::Tls { .. }
        ));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            ReplicationError::from_tls_io(plain),
            ReplicationError::Io(_)
        ));
    }
}
