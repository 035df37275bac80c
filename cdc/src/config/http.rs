//! `[[sink]] type = "http"`: its keys are validated once, by the sink's crate
//! (errors named `sink[i].key`), and its URL and header templates are compiled
//! once, here; the engine builds the sink from both.

use pgcdc_schema::mapping::Template;
use pgcdc_sinks::http::{HttpSinkConfig, ValidHttpSinkConfig};

use super::ConfigError;

/// An HTTP sink as configured.
#[derive(Debug)]
pub(crate) struct HttpSinkSpec {
    /// The validated keys; a URL or header value without placeholders already
    /// holds its literal text (`{{` unescaped).
    pub(crate) config: ValidHttpSinkConfig,
    /// The URL, when it has placeholders rendered per event.
    pub(crate) url: Option<Template>,
    /// Header values with placeholders, rendered per event.
    pub(crate) headers: Vec<(String, Template)>,
}

impl HttpSinkSpec {
    pub(super) fn new(prefix: &str, http: HttpSinkConfig) -> Result<HttpSinkSpec, ConfigError> {
        let valid = http.validated(prefix).map_err(|e| ConfigError::Key {
            key: e.key,
            message: e.message,
        })?;
        let url = Template::parse(&format!("{prefix}.url"), &valid.config().url)?;
        let mut literal_headers = Vec::new();
        let mut headers = Vec::new();
        for (name, value) in &valid.config().headers {
            let template = Template::parse(&format!("{prefix}.headers.{name}"), value)?;
            match template.literal() {
                Some(literal) => literal_headers.push((name.clone(), literal.to_string())),
                None => headers.push((name.clone(), template)),
            }
        }
        let (literal_url, url) = match url.literal() {
            Some(literal) => (Some(literal.to_string()), None),
            None => (None, Some(url)),
        };
        Ok(HttpSinkSpec {
            config: valid.with_literal_text(literal_url, literal_headers),
            url,
            headers,
        })
    }

    /// The validated keys.
    pub(crate) fn http(&self) -> &HttpSinkConfig {
        self.config.config()
    }
}
