//! Transport: the reqwest client (rustls with ring, custom CA, mTLS), the rate
//! limiter, and one attempt of one prepared request.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::Mutex;

use super::auth::Authenticator;
use super::body::{read_capped, RESPONSE_BODY_LIMIT};
use super::config::{HttpSinkConfig, Secret};
use super::retry::{parse_retry_after, AttemptError};
use super::signing::SigningKey;
use super::HttpSinkError;

/// A request ready to send, identical on every attempt.
#[derive(Debug, Clone)]
pub(crate) struct PreparedRequest {
    pub(crate) url: String,
    pub(crate) body: Bytes,
    pub(crate) headers: HeaderMap,
}

/// Spaces requests `1 / rate` seconds apart across the whole sink.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: f64) -> Self {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot.
    pub(crate) async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// The HTTP client and everything every request shares.
#[derive(Debug)]
pub(crate) struct HttpService {
    pub(crate) client: reqwest::Client,
    pub(crate) method: reqwest::Method,
    pub(crate) timeout: Duration,
    pub(crate) auth: Authenticator,
    pub(crate) rate: Option<RateLimiter>,
}

impl HttpService {
    pub(crate) fn new(cfg: &HttpSinkConfig) -> Result<Self, HttpSinkError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.concurrency.max(1))
            .user_agent(concat!("pgcdc/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &cfg.tls {
            if let Some(ca) = &tls.ca {
                let pem = read_file(ca)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    HttpSinkError::Tls {
                        path: ca.clone(),
                        message: format!("not a PEM certificate bundle: {e}"),
                    }
                })?;
                if certs.is_empty() {
                    return Err(HttpSinkError::Tls {
                        path: ca.clone(),
                        message: "no certificate in the file".into(),
                    });
                }
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                let mut pem = read_file(cert)?;
                pem.push(b'\n');
                pem.extend_from_slice(&read_file(key)?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| HttpSinkError::Tls {
                        path: format!("{cert} + {key}"),
                        message: format!("not a usable PEM certificate and private key: {e}"),
                    })?;
                builder = builder.identity(identity);
            }
        }
        let client = builder.build().map_err(|e| HttpSinkError::Client {
            message: e.to_string(),
        })?;
        Ok(HttpService {
            client,
            method: cfg.method.as_reqwest(),
            timeout,
            auth: Authenticator::new(cfg.auth.as_ref()),
            rate: cfg.rate_limit.map(RateLimiter::new),
        })
    }

    /// One attempt. `Ok` is a 2xx; the `Secret` is the `Authorization` value used
    /// (so a 401 can invalidate exactly that token).
    pub(crate) async fn send(
        &self,
        req: &PreparedRequest,
    ) -> (Result<u16, AttemptError>, Option<Secret>) {
        if let Some(rate) = &self.rate {
            rate.acquire().await;
        }
        let auth = match self.auth.header(&self.client).await {
            Ok(auth) => auth,
            Err(e) => return (Err(AttemptError::Auth(e)), None),
        };
        let mut builder = self
            .client
            .request(self.method.clone(), &req.url)
            .headers(req.headers.clone())
            .body(req.body.clone());
        if let Some(value) = &auth {
            match HeaderValue::from_str(value.expose()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    builder = builder.header(AUTHORIZATION, v);
                }
                Err(_) => {
                    let e = AttemptError::Auth(
                        "the token contains characters not allowed in a header".into(),
                    );
                    return (Err(e), auth);
                }
            }
        }
        let result = async {
            let response = builder
                .send()
                .await
                .map_err(|e| AttemptError::from_reqwest(e, self.timeout))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_capped(response, RESPONSE_BODY_LIMIT)
                .await
                .map_err(|e| AttemptError::from_reqwest(e, self.timeout))?;
            if (200..300).contains(&status) {
                Ok(status)
            } else {
                Err(AttemptError::status(status, &body, retry_after))
            }
        }
        .await;
        (result, auth)
    }

    /// Reachability and TLS: an `OPTIONS` to the URL's origin; any HTTP answer passes.
    pub(crate) async fn healthcheck(&self, url: &str) -> Result<(), HttpSinkError> {
        let origin = origin(url).ok_or_else(|| HttpSinkError::Healthcheck {
            url: redact_url(url),
            message: "cannot tell the server from the url".into(),
        })?;
        self.client
            .request(reqwest::Method::OPTIONS, &origin)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| HttpSinkError::Healthcheck {
                url: origin.clone(),
                message: AttemptError::from_reqwest(e, self.timeout).to_string(),
            })
    }
}

/// The fixed headers of a request (everything but `Authorization` and what
/// [`stamp`] sets per attempt).
pub(crate) fn base_headers(
    static_headers: &[(HeaderName, HeaderValue)],
    id: &str,
) -> Result<HeaderMap, AttemptError> {
    let mut headers = HeaderMap::with_capacity(static_headers.len() + 5);
    for (name, value) in static_headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let id_value = HeaderValue::from_str(id)
        .map_err(|_| AttemptError::Request(format!("delivery id {id:?} is not a header value")))?;
    headers.insert(HeaderName::from_static("idempotency-key"), id_value.clone());
    headers.insert(HeaderName::from_static("webhook-id"), id_value);
    Ok(headers)
}

/// Sets one attempt's `webhook-timestamp` (`now`, UNIX seconds) and, with a key, its
/// `webhook-signature` over `"{id}.{now}.{body}"`.
pub(crate) fn stamp(req: &mut PreparedRequest, key: Option<&SigningKey>, id: &str, now: i64) {
    req.headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        HeaderValue::from(now),
    );
    if let Some(key) = key {
        // "v1," and base64: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&key.sign(id, now, &req.body)) {
            req.headers
                .insert(HeaderName::from_static("webhook-signature"), v);
        }
    }
}

/// `scheme://host[:port]/` of `url`, ignoring anything after a `{` placeholder.
fn origin(url: &str) -> Option<String> {
    let head = url.split('{').next().unwrap_or(url);
    let mut parsed = reqwest::Url::parse(head).ok()?;
    parsed.host_str()?;
    parsed.set_path("/");
    parsed.set_query(None);
    parsed.set_fragment(None);
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Some(parsed.to_string())
}

/// The URL without user info or query (they may hold credentials).
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, HttpSinkError> {
    std::fs::read(path).map_err(|e| HttpSinkError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
