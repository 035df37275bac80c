//! Who may ask what of the admin API: one middleware in front of every route.
//!
//! ```text
//!  /healthz /readyz /metrics ──────────────────────────────▶ open (probes, scrapes)
//!  everything else ─▶ Host ─▶ Origin / Sec-Fetch-Site ─┬─ GET ─▶ token if admin.token is set
//!                    (403)        (403)                 └─ POST/DELETE ─▶ JSON body (415) ─▶ token
//! ```
//!
//! - **Mutations always need the token** (`admin.token`, or the one generated into
//!   the state directory): a local user or a web page cannot act without it.
//! - **Host**: a DNS-rebinding page reaches the API under the attacker's own name;
//!   only IP literals (a browser's origin is then that IP: nothing to rebind),
//!   `localhost` and `admin.allowed_hosts` are answered. A request without `Host`
//!   is not from a browser.
//! - **Origin / Sec-Fetch-Site**: browsers send them on cross-origin requests; any
//!   origin but the API's own is refused (CSRF), whatever the method.
//! - **JSON only**: a `<form>` can POST cross-origin without a preflight only as
//!   form, multipart or text; the API takes `application/json` alone.
//! - **Reads of row data** (status, DLQ, audit) need the token when `admin.token`
//!   is configured (always the case off loopback: config load refuses the rest).
//!   With a generated token the API is on loopback, and reads stay open to local
//!   clients, so the status page shows without a token.
//!
//! The probes and `/metrics` hold no row data and change nothing, so a pod network
//! can reach them without the token, under any `Host` (a Service name).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AdminState, ApiError};
use crate::config::Secret;
use std::sync::Arc;

/// The API's access rules, fixed at start.
pub(crate) struct Guard {
    token: Secret,
    /// The token was configured (`admin.token`), not generated: reads need it too.
    reads_need_token: bool,
    /// Lower-case host names from `admin.allowed_hosts`.
    allowed_hosts: Vec<String>,
}

impl Guard {
    pub(crate) fn new(token: Secret, reads_need_token: bool, allowed_hosts: &[String]) -> Self {
        Guard {
            token,
            reads_need_token,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks one request; `Ok` lets it through to its handler.
    pub(crate) fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let read = method == Method::GET || method == Method::HEAD;
        if read && matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return Ok(());
        }
        self.check_host(headers)?;
        if read && path == "/" {
            // The page itself: static HTML, and a link from elsewhere is a cross-site navigation.
            return Ok(());
        }
        check_same_origin(headers)?;
        if !read {
            check_json(method, headers)?;
            return self.authorize(headers.get(header::AUTHORIZATION));
        }
        if self.reads_need_token {
            return self.authorize(headers.get(header::AUTHORIZATION));
        }
        Ok(())
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::HOST) else {
            return Ok(());
        };
        let host = value.to_str().unwrap_or("");
        if self.host_allowed(host) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "Host {:?} is not an address of this API (a page using another name, e.g. by DNS \
             rebinding, is refused); use an IP address or localhost, or add the name to \
             admin.allowed_hosts",
            host.chars().take(100).collect::<String>()
        )))
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if name.is_empty() {
            return false;
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || self.allowed_hosts.contains(&name)
    }

    /// Checks the bearer token.
    pub(crate) fn authorize(
        &self,
        authorization: Option<&axum::http::HeaderValue>,
    ) -> Result<(), ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized(
                "send Authorization: Bearer <token> (admin.token, or the token pgcdc generated \
                 in the state directory: `pgcdc admin-token --config ...` prints it)"
                    .to_string(),
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            None => Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".to_string(),
            )),
            Some(p) if constant_time_eq(p.as_bytes(), self.token.expose().as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(
                "the bearer token does not match admin.token (or the generated token that \
                 `pgcdc admin-token` prints)"
                    .to_string(),
            )),
        }
    }
}

/// The host part of a `Host` header: `[::1]:9187` → `::1`, `name:80` → `name`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.split(':').next().unwrap_or("")
}

/// Refuses a request a browser marks as coming from another origin.
fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |what: String| {
        Err(ApiError::Forbidden(format!(
            "cross-origin request refused ({what}); the admin API answers only its own status \
             page and clients that are not browsers"
        )))
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if !matches!(site, "same-origin" | "none") {
            return refuse(format!("Sec-Fetch-Site: {site}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || own != Some(host) {
            return refuse(format!(
                "Origin {:?}",
                origin.chars().take(100).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// A mutation's body must be JSON: forms cannot send that cross-origin without a preflight.
fn check_json(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE);
    let media = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/json") => Ok(()),
        // A DELETE carries no body.
        None if method == Method::DELETE => Ok(()),
        None => Err(ApiError::UnsupportedMediaType(
            "send the body as JSON with Content-Type: application/json".to_string(),
        )),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "the body is {:?}; the admin API takes only Content-Type: application/json",
            other.chars().take(100).collect::<String>()
        ))),
    }
}

/// Compares without an early exit, so response time does not reveal a prefix of the token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The middleware: [`Guard::check`] before every handler (and before the body is read).
pub(crate) async fn guard(
    State(state): State<Arc<AdminState>>,
    req: Request,
    next: Next,
) -> Response {
    match state
        .guard
        .check(req.method(), req.uri().path(), req.headers())
    {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::debug!(method = %req.method(), path = %req.uri().path(), error = %e, "admin request refused");
            e.into_response()
        }
    }
}
