//! The admin API's HTTP server: the accept loop, the connection cap and the
//! limits every connection and request lives under.
//!
//! ```text
//!  accept ──EMFILE/ENFILE/ENOMEM──▶ backoff 10 ms → 1 s, /readyz reason, keep serving
//!    │
//!    ├─ cap reached ──▶ a 503 written if the socket takes it at once, closed
//!    └─ permit ──▶ hyper http1: request head ≤ 32 KiB and read within 10 s (also the
//!                  keep-alive idle time); request ≤ 30 s; connection ≤ 5 min
//! ```
//!
//! The cap ([`crate::fd_limit::admin_connection_cap`], at most 256) is what keeps a
//! flood of idle or slow clients from taking the descriptors and memory the engine
//! needs: a refused connection is closed without reading it, and a held one costs at
//! most one head buffer. The timeouts free every slot a client does not use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::supervise::{Backoff, TaskHealth};

/// The whole request head (request line and headers) must arrive within this; it is
/// also how long a keep-alive connection may sit idle between requests.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (431 beyond): hyper stops reading a head near this size
/// (one read may carry its buffer to about twice that), and [`bounded`] checks it exactly.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;
/// The longest URI (414 beyond): the API's paths and queries are short.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// The largest request body (413 beyond): the API's bodies are small JSON objects.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request, body included, must be answered within this (a slow body, a stuck handler).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection is closed (after the request in hand) once this old, so no client,
/// however it paces its bytes, holds a slot for ever.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// How long a connection past its age may take to finish the request in hand.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// At most one log line per this for a repeated accept problem or refusals.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a refused connection gets when its socket takes it at once.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 80\r\n\r\n\
{\"error\":\"the admin API is at its connection limit; try again in a few seconds\"}";

/// Accepts connections until aborted; never ends on its own.
pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    app: Router,
    cap: Arc<Semaphore>,
    max_connections: usize,
    status: TaskHealth,
) -> Result<(), std::convert::Infallible> {
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut accept_log = RateLimitedLog::default();
    let mut refused_log = RateLimitedLog::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if backoff.failures() > 0 {
                    backoff.reset();
                    status.ok();
                    tracing::info!("admin API accepts connections again");
                }
                stream
            }
            // The client gave up before we took it: nothing wrong here.
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                // The pending connection stays queued and the listener stays readable:
                // without a pause this would spin.
                let wait = backoff.next_delay();
                let why = crate::fd_limit::explain(format!("cannot accept connections: {e}"));
                status.failing(&why);
                if let Some(repeats) = accept_log.due() {
                    tracing::error!(error = %why, repeats, retry_in_ms = wait.as_millis() as u64, "admin API cannot accept connections; retrying");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        match cap.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(stream, app.clone(), permit));
            }
            Err(_) => {
                // Best effort and never waiting: a client that does not read gets the
                // close alone. Nothing is read, so the refusal holds no memory.
                let _ = stream.try_write(REFUSED);
                drop(stream);
                if let Some(refused) = refused_log.due() {
                    tracing::warn!(
                        refused,
                        limit = max_connections,
                        "admin API connection limit reached: new connections are refused until \
                         held ones finish or time out (10 s for a request head)"
                    );
                }
            }
        }
    }
}

/// Accept errors that concern one connection only.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// Serves one connection under the limits, holding `_permit` until it closes.
async fn connection(stream: TcpStream, app: Router, _permit: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                // A client's timeout, a bad request or a reset: its own business.
                tracing::debug!(error = %e, "admin connection closed with an error");
            }
        }
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

/// Middleware: 414 for a long URI, 431 for a large head, 503 for a request not answered within
/// [`REQUEST_TIMEOUT`] (the body's reading included).
pub(crate) async fn bounded(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return error(
            StatusCode::URI_TOO_LONG,
            format!("the URI is {uri_len} bytes; the admin API takes at most {MAX_URI_BYTES}"),
        );
    }
    // hyper stops reading a head at about `MAX_HEAD_BYTES`, but one read may carry it
    // past; this makes the limit exact.
    let head_len = uri_len
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_len > MAX_HEAD_BYTES {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request head is {head_len} bytes; the admin API takes at most {MAX_HEAD_BYTES}"
            ),
        );
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request was not answered within {} s (a slow request body, or the \
                 journal or the source is slow); try again",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Logs a repeated event at most every [`LOG_EVERY`], with how often it happened.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedLog {
    /// Counts one event; `Some(events since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSED).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(body).is_ok(),
            "{body}"
        );
    }

    #[test]
    fn repeated_events_are_logged_once_per_period() {
        let mut log = RateLimitedLog::default();
        assert_eq!(log.due(), Some(1));
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        log.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(log.due(), Some(3));
    }
}
