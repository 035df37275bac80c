//! An HTTP receiver for sink tests: records every request and answers per a
//! programmable script (status bursts, 429 + Retry-After, slow answers,
//! connection resets, a failure for chosen bodies, an endless or huge
//! response body), plus an OAuth2 token endpoint at `/oauth/token` whose
//! tokens the API can require.
//!
//! Built on hyper directly (not axum): a reset needs the connection itself,
//! which a per-connection task can drop without answering.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Decides whether a body (parsed JSON; `Null` if not JSON) gets the failure.
pub type BodyPredicate = Arc<dyn Fn(&serde_json::Value) -> bool + Send + Sync>;

/// How the receiver answers a request to the API.
#[derive(Clone)]
pub enum Mode {
    /// 200 with `{}`.
    Ok,
    /// This status with a short text body.
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// Waits this long, then 200 (past the client's timeout: a timeout).
    Delay(Duration),
    /// Closes the connection without any response.
    Reset,
    /// `status` for bodies matching `when`, 200 for the others.
    FailFor {
        /// Status for matching bodies.
        status: u16,
        /// Which bodies fail.
        when: BodyPredicate,
    },
    /// `status` with a chunked body of `bytes` bytes of JSON-ish filler, sent as
    /// fast as the client reads (`u64::MAX`: endless). See `body_bytes_sent`.
    HugeBody {
        /// The status.
        status: u16,
        /// Body length.
        bytes: u64,
    },
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct OAuthState {
    required: bool,
    expires_in: u64,
    issued: usize,
    valid: HashSet<String>,
    /// Answer the token endpoint with a 200 and a body this long instead of a token.
    huge_body: Option<u64>,
}

struct State {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Mode>>,
    mode: Mutex<Mode>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    oauth: Mutex<OAuthState>,
    /// Bytes of `HugeBody` bodies handed to the connection so far.
    body_bytes_sent: Arc<AtomicU64>,
}

/// Locks a mutex even if a panicking test thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running receiver on 127.0.0.1; stops accepting when dropped.
pub struct Receiver {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Receiver {
    /// Starts a receiver on a free port, answering `Mode::Ok`.
    pub async fn start() -> std::io::Result<Receiver> {
        Self::start_with(None).await
    }

    /// Starts an HTTPS receiver with this server certificate and key (PEM); with
    /// `client_ca`, it requires a client certificate signed by that CA (mTLS).
    /// `url()` is then `https://localhost:PORT/hook`.
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> std::io::Result<Receiver> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(&e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                    roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| bad(&e))?;
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            mode: Mutex::new(Mode::Ok),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            oauth: Mutex::new(OAuthState::default()),
            body_bytes_sent: Arc::new(AtomicU64::new(0)),
        });
        let accept_state = state.clone();
        let tls_enabled = tls.is_some();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let state = accept_state.clone();
                match tls.clone() {
                    None => {
                        tokio::spawn(serve_connection(stream, state));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            // A failed handshake (no or a wrong client certificate) just closes.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_connection(stream, state).await;
                            }
                        });
                    }
                }
            }
        });
        Ok(Receiver {
            addr,
            scheme: if tls_enabled { "https" } else { "http" },
            state,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT/hook` (TLS: `https://localhost:PORT/hook`): the API endpoint.
    pub fn url(&self) -> String {
        format!("{}/hook", self.origin())
    }

    /// `http://127.0.0.1:PORT/oauth/token`: the token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.origin())
    }

    fn origin(&self) -> String {
        if self.scheme == "https" {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Every request so far (API and token endpoint), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// Requests to the API only (not the token endpoint).
    pub fn api_requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests)
            .iter()
            .filter(|r| !r.path.starts_with("/oauth/"))
            .cloned()
            .collect()
    }

    /// How many requests to the API arrived (without copying them: a benchmark
    /// polls this while thousands arrive).
    pub fn api_request_count(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| !r.path.starts_with("/oauth/"))
            .count()
    }

    /// The answer for requests once the script is used up.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// Answers the next API requests with these modes, one each, before `set_mode`'s.
    pub fn push_script(&self, modes: impl IntoIterator<Item = Mode>) {
        lock(&self.state.script).extend(modes);
    }

    /// Most API requests being handled at the same time so far.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requires `Authorization: Bearer <token from /oauth/token>` on the API;
    /// tokens are issued with this `expires_in`.
    pub fn require_oauth(&self, expires_in: u64) {
        let mut o = lock(&self.state.oauth);
        o.required = true;
        o.expires_in = expires_in;
    }

    /// Makes every issued token invalid (the API answers 401 until a new one is fetched).
    pub fn revoke_tokens(&self) {
        lock(&self.state.oauth).valid.clear();
    }

    /// With `Some(bytes)`, the token endpoint answers 200 with a body of this many
    /// bytes instead of a token; `None` goes back to issuing tokens.
    pub fn huge_token_response(&self, bytes: Option<u64>) {
        lock(&self.state.oauth).huge_body = bytes;
    }

    /// Bytes of huge response bodies (`Mode::HugeBody`, `huge_token_response`) the
    /// receiver has handed to its connections so far: what the client was sent.
    pub fn body_bytes_sent(&self) -> u64 {
        self.state.body_bytes_sent.load(Ordering::SeqCst)
    }

    /// Tokens issued so far.
    pub fn token_issuances(&self) -> usize {
        lock(&self.state.oauth).issued
    }
}

async fn serve_connection<S>(stream: S, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let abort = Arc::new(Notify::new());
    let handler_abort = abort.clone();
    let service =
        hyper::service::service_fn(move |req| handle(state.clone(), handler_abort.clone(), req));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // Dropping the connection future closes the socket with no response: a reset.
    tokio::select! {
        _ = conn => {}
        _ = abort.notified() => {}
    }
}

/// Decrements the in-flight count however the handler ends (answered or dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn reply(status: u16, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// A response with a chunked body of `bytes` bytes (no Content-Length).
fn huge_reply(status: u16, bytes: u64, sent: Arc<AtomicU64>) -> Response<Body> {
    let body = HugeBody {
        left: bytes,
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        sent,
    };
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// Filler as fast as the connection takes it; hyper polls for more only when
/// the socket has room, so `sent` tracks what the client has been able to read.
struct HugeBody {
    left: u64,
    chunk: Bytes,
    sent: Arc<AtomicU64>,
}

impl hyper::body::Body for HugeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        self.sent.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

async fn handle(
    state: Arc<State>,
    abort: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(400, "unreadable body")),
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    lock(&state.requests).push(recorded.clone());
    if recorded.path.starts_with("/oauth/token") {
        return Ok(issue_token(&state));
    }
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&state.in_flight);

    {
        let oauth = lock(&state.oauth);
        if oauth.required {
            let token = recorded
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !oauth.valid.contains(token) {
                return Ok(reply(401, "invalid or expired token"));
            }
        }
    }
    let mode = lock(&state.script)
        .pop_front()
        .unwrap_or_else(|| lock(&state.mode).clone());
    Ok(match mode {
        Mode::Ok => reply(200, "{}"),
        Mode::Status(code) => reply(code, "scripted failure"),
        Mode::RetryAfter(secs) => {
            let mut r = reply(429, "slow down");
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(secs),
            );
            r
        }
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            reply(200, "{}")
        }
        Mode::Reset => {
            abort.notify_one();
            std::future::pending::<()>().await;
            reply(500, "unreachable")
        }
        Mode::FailFor { status, when } => {
            if when(&recorded.json()) {
                reply(status, "rejected by FailFor")
            } else {
                reply(200, "{}")
            }
        }
        Mode::HugeBody { status, bytes } => {
            huge_reply(status, bytes, state.body_bytes_sent.clone())
        }
    })
}

fn issue_token(state: &State) -> Response<Body> {
    let mut oauth = lock(&state.oauth);
    if let Some(bytes) = oauth.huge_body {
        return huge_reply(200, bytes, state.body_bytes_sent.clone());
    }
    oauth.issued += 1;
    let token = format!("tok-{}", oauth.issued);
    oauth.valid.insert(token.clone());
    let body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": oauth.expires_in,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
