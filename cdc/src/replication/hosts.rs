//! Choosing among the source's hosts (`postgres://h1,h2/db?target_session_attrs=read-write`),
//! as libpq does: each host in order, the first that connects and has the session
//! attributes asked for wins. Both the replication and the catalog connection
//! choose this way on every connect, so after a failover they find the new primary.
//!
//! When no host fits: a definite error from some host (authentication, TLS, bad
//! config) is returned as is; otherwise the failure is transient (the standby may
//! be promoted any moment) and names what each host said.

use std::future::Future;

use super::url::TargetSessionAttrs;
use super::{ReplicationError, SourceUrl};

/// SQL answering whether a session fits: `transaction_read_only`, `pg_is_in_recovery()`.
pub(crate) const SESSION_QUERY: &str =
    "SELECT current_setting('transaction_read_only'), pg_is_in_recovery()::text";

/// Why a connected host does not fit (None: it fits), from [`SESSION_QUERY`]'s answer.
pub(crate) fn misfit(
    attrs: TargetSessionAttrs,
    read_only: &str,
    in_recovery: &str,
) -> Option<&'static str> {
    match attrs {
        TargetSessionAttrs::Any => None,
        TargetSessionAttrs::ReadWrite if read_only == "on" => {
            Some("read-only (a standby, or default_transaction_read_only)")
        }
        TargetSessionAttrs::Primary if in_recovery == "true" => Some("in recovery (a standby)"),
        _ => None,
    }
}

/// What one attempt on one host gave.
pub(crate) enum Attempt<T> {
    /// Connected, and it fits.
    Fits(T),
    /// Connected, but it does not fit (why).
    Misfit(&'static str),
}

/// Tries `attempt` on each host of `url` in order; the first that fits wins.
pub(crate) async fn first_fitting<T, F, Fut>(
    url: &SourceUrl,
    mut attempt: F,
) -> Result<T, ReplicationError>
where
    F: FnMut(SourceUrl) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, ReplicationError>>,
{
    let mut said = Vec::new();
    let mut definite = None;
    for candidate in url.candidates() {
        let at = format!("{}:{}", candidate.host, candidate.port);
        match attempt(candidate).await {
            Ok(Attempt::Fits(t)) => {
                if !said.is_empty() {
                    tracing::info!(host = %at, skipped = %said.join("; "), "source host chosen");
                }
                return Ok(t);
            }
            Ok(Attempt::Misfit(why)) => said.push(format!("{at}: {why}")),
            Err(e) => {
                said.push(format!("{at}: {e}"));
                if !e.is_transient() && definite.is_none() {
                    definite = Some(e);
                }
            }
        }
    }
    if let Some(e) = definite {
        return Err(e);
    }
    Err(ReplicationError::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!(
            "no source host is usable with target_session_attrs={} ({}); retrying — during a \
             failover this lasts until a standby is promoted",
            url.target_session_attrs.as_str(),
            said.join("; ")
        ),
    )))
}
