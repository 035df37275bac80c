//! Credentials for each request: static bearer token, bearer token file
//! (re-read when its mtime changes), basic, OAuth2 client credentials (cached
//! until shortly before expiry, refreshed once on a 401).

use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use tokio::sync::Mutex;

use super::body::read_capped;
use super::config::{AuthConfig, Secret};

/// Refresh an OAuth2 token this long before it expires (less for short-lived tokens).
const OAUTH2_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Most of a token response pgcdc reads; a larger one is refused (it is not a token).
const TOKEN_RESPONSE_LIMIT: usize = 1024 * 1024;

/// Produces the `Authorization` header value.
#[derive(Debug)]
pub(crate) enum Authenticator {
    None,
    /// A fixed header value (bearer token from config, or basic).
    Static(Secret),
    BearerFile {
        path: String,
        cached: Mutex<Option<(SystemTime, Secret)>>,
    },
    Oauth2(OAuth2),
}

#[derive(Debug)]
pub(crate) struct OAuth2 {
    token_url: String,
    form: Vec<(&'static str, Secret)>,
    // A tokio mutex held across the fetch: concurrent requests wait for one fetch.
    cached: Mutex<Option<CachedToken>>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: Option<Instant>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Authenticator {
    pub(crate) fn new(cfg: Option<&AuthConfig>) -> Self {
        match cfg {
            None => Authenticator::None,
            Some(AuthConfig::Bearer {
                token: Some(token), ..
            }) => Authenticator::Static(Secret::new(format!("Bearer {}", token.expose().trim()))),
            Some(AuthConfig::Bearer { token_file, .. }) => Authenticator::BearerFile {
                path: token_file.clone().unwrap_or_default(),
                cached: Mutex::new(None),
            },
            Some(AuthConfig::Basic { username, password }) => {
                let raw = format!("{username}:{}", password.expose());
                Authenticator::Static(Secret::new(format!("Basic {}", BASE64.encode(raw))))
            }
            Some(AuthConfig::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            }) => {
                let mut form = vec![
                    ("grant_type", Secret::new("client_credentials")),
                    ("client_id", Secret::new(client_id.clone())),
                    ("client_secret", client_secret.clone()),
                ];
                if let Some(scope) = scope {
                    form.push(("scope", Secret::new(scope.clone())));
                }
                if let Some(audience) = audience {
                    form.push(("audience", Secret::new(audience.clone())));
                }
                Authenticator::Oauth2(OAuth2 {
                    token_url: token_url.clone(),
                    form,
                    cached: Mutex::new(None),
                })
            }
        }
    }

    /// Whether a 401 should refresh the credentials and retry at once.
    pub(crate) fn refreshes_on_401(&self) -> bool {
        matches!(self, Authenticator::Oauth2(_))
    }

    /// The `Authorization` value for the next request (`None`: no auth).
    pub(crate) async fn header(&self, client: &reqwest::Client) -> Result<Option<Secret>, String> {
        match self {
            Authenticator::None => Ok(None),
            Authenticator::Static(value) => Ok(Some(value.clone())),
            Authenticator::BearerFile { path, cached } => {
                bearer_from_file(path, cached).await.map(Some)
            }
            Authenticator::Oauth2(oauth) => oauth.token(client).await.map(Some),
        }
    }

    /// Forgets `rejected` (the header a 401 answered), so the next call fetches anew.
    pub(crate) async fn invalidate(&self, rejected: &Secret) {
        if let Authenticator::Oauth2(oauth) = self {
            let mut cached = oauth.cached.lock().await;
            if cached
                .as_ref()
                .is_some_and(|c| bearer(&c.token) == *rejected)
            {
                *cached = None;
            }
        }
    }
}

fn bearer(token: &Secret) -> Secret {
    Secret::new(format!("Bearer {}", token.expose()))
}

async fn bearer_from_file(
    path: &str,
    cached: &Mutex<Option<(SystemTime, Secret)>>,
) -> Result<Secret, String> {
    let mtime = tokio::fs::metadata(path)
        .await
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot stat token_file {path}: {e}"))?;
    let mut cached = cached.lock().await;
    if let Some((seen, value)) = cached.as_ref() {
        if *seen == mtime {
            return Ok(value.clone());
        }
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read token_file {path}: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token_file {path} is empty"));
    }
    let value = bearer(&Secret::new(token));
    *cached = Some((mtime, value.clone()));
    Ok(value)
}

impl OAuth2 {
    async fn token(&self, client: &reqwest::Client) -> Result<Secret, String> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.refresh_at.is_none_or(|at| Instant::now() < at) {
                return Ok(bearer(&c.token));
            }
        }
        let fetched = self.fetch(client).await?;
        let value = bearer(&fetched.token);
        *cached = Some(fetched);
        Ok(value)
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<CachedToken, String> {
        let form: Vec<(&str, &str)> = self.form.iter().map(|(k, v)| (*k, v.expose())).collect();
        let started = Instant::now();
        let response = client
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "token request to {} failed: {}",
                    self.token_url,
                    e.without_url()
                )
            })?;
        let status = response.status();
        let body = read_capped(response, TOKEN_RESPONSE_LIMIT)
            .await
            .map_err(|e| {
                format!(
                    "token response from {} broke: {}",
                    self.token_url,
                    e.without_url()
                )
            })?;
        if body.truncated && status.is_success() {
            return Err(format!(
                "token endpoint {} sent a response larger than {} KiB; a token response is a \
                 small JSON object: check that auth.token_url points at the OAuth2 token endpoint",
                self.token_url,
                TOKEN_RESPONSE_LIMIT / 1024
            ));
        }
        if !status.is_success() {
            // The token endpoint's error body is safe to show; the request's secret is not in it.
            let cut = &body[..body.len().min(256)];
            return Err(format!(
                "token endpoint {} answered HTTP {}: {}",
                self.token_url,
                status.as_u16(),
                String::from_utf8_lossy(cut)
            ));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "token endpoint {} sent no usable access_token: {e}",
                self.token_url
            )
        })?;
        let refresh_at = parsed.expires_in.map(|secs| {
            let lifetime = Duration::from_secs(secs);
            let margin = OAUTH2_REFRESH_MARGIN.min(lifetime / 2);
            started + lifetime - margin
        });
        tracing::debug!(token_url = %self.token_url, expires_in = ?parsed.expires_in, "fetched OAuth2 token");
        Ok(CachedToken {
            token: Secret::new(parsed.access_token),
            refresh_at,
        })
    }
}
