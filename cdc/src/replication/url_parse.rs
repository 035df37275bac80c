//! Parsing `source.url`: the URL form here, the `key=value` form and host lists in
//! `url_forms`. Apart from the types (`url`), so that neither form's parser
//! imports the other's file.

use std::path::PathBuf;
use std::str::FromStr;

use super::url::{
    Secret, SourceUrl, SslMode, TargetSessionAttrs, DEFAULT_APPLICATION_NAME, DEFAULT_PORT,
    DEFAULT_USER, KNOWN_PARAMS,
};
use super::ReplicationError;

fn config_err(msg: String) -> ReplicationError {
    ReplicationError::Config(msg)
}

/// Decodes `%XX` escapes (as libpq does for the user, password and database).
fn percent_decode(raw: &str, what: &str) -> Result<String, ReplicationError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).filter(|h| h.len() == 2);
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    config_err(format!(
                    "source URL: the {what} has a malformed %-escape; write `%` itself as `%25`"
                ))
                })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        config_err(format!(
            "source URL: the {what} is not valid UTF-8 after %-decoding"
        ))
    })
}

/// Stands in for an empty host, which libpq allows (`postgres://u@/db?host=/dir`)
/// but the `url` crate rejects.
const PLACEHOLDER_HOST: &str = "pgcdc-no-host.invalid";

/// Inserts [`PLACEHOLDER_HOST`] when the authority has no host; the flag says so.
fn with_placeholder_host(s: &str) -> (std::borrow::Cow<'_, str>, bool) {
    let Some(scheme_end) = s.find("://") else {
        return (s.into(), false);
    };
    let authority_start = scheme_end + 3;
    let rest = &s[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_and_port = &authority[host_start..];
    if !(host_and_port.is_empty() || host_and_port.starts_with(':')) {
        return (s.into(), false);
    }
    let at = authority_start + host_start;
    (
        format!("{}{PLACEHOLDER_HOST}{}", &s[..at], &s[at..]).into(),
        true,
    )
}

impl FromStr for SourceUrl {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Errors below never echo `s`: it may carry the password.
        let trimmed = s.trim();
        if !trimmed.contains("://") && trimmed.contains('=') {
            return super::url_forms::parse_key_value(trimmed);
        }
        // `h1:5432,h2:5432`: the url crate takes one host; the list is parsed apart.
        let (single, host_list) = super::url_forms::split_host_list(s)?;
        let s = single.as_ref();
        let (patched, host_missing) = with_placeholder_host(s);
        let parsed = url::Url::parse(&patched).map_err(|e| {
            config_err(format!(
                "source URL is not a valid URL ({e}); expected \
                 postgres://user:password@host:port/dbname?sslmode=require"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(config_err(format!(
                "source URL scheme `{}` is not supported; start it with postgres://",
                parsed.scheme()
            )));
        }

        let mut sslmode = SslMode::default();
        let mut sslrootcert = None;
        let mut application_name = DEFAULT_APPLICATION_NAME.to_owned();
        let mut socket_dir = None;
        let mut target_session_attrs = TargetSessionAttrs::default();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "target_session_attrs" => target_session_attrs = value.parse()?,
                "sslmode" => sslmode = value.parse()?,
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value.as_ref())),
                "application_name" => application_name = value.into_owned(),
                "host" => {
                    if !value.starts_with('/') {
                        return Err(config_err(format!(
                            "source URL: ?host= must be an absolute Unix socket directory \
                             (got `{value}`); put a network host before the port instead"
                        )));
                    }
                    socket_dir = Some(value.into_owned());
                }
                other => {
                    return Err(config_err(format!(
                        "source URL: unknown parameter `{other}`; supported: {}",
                        KNOWN_PARAMS.join(", ")
                    )))
                }
            }
        }

        let is_socket = socket_dir.is_some();
        let host = match (socket_dir, parsed.host()) {
            (Some(dir), _) => dir,
            (None, _) if host_missing => {
                return Err(config_err(
                    "source URL has no host; write postgres://user@HOST:5432/db \
                     (or ?host=/socket/dir for a Unix socket)"
                        .to_owned(),
                ))
            }
            (None, Some(url::Host::Domain(d))) if !d.is_empty() => d.to_owned(),
            (None, Some(url::Host::Ipv4(ip))) => ip.to_string(),
            (None, Some(url::Host::Ipv6(ip))) => ip.to_string(),
            _ => {
                return Err(config_err(
                    "source URL has no host; write postgres://user@HOST:5432/db \
                     (or ?host=/socket/dir for a Unix socket)"
                        .to_owned(),
                ))
            }
        };
        let port = parsed.port().unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(config_err(
                "source URL: port 0 is not a valid port".to_owned(),
            ));
        }

        let user = match parsed.username() {
            "" => DEFAULT_USER.to_owned(),
            raw => percent_decode(raw, "user name")?,
        };
        let password = parsed
            .password()
            .map(|raw| percent_decode(raw, "password"))
            .transpose()?
            .map(Secret::new);
        let path = parsed.path().trim_start_matches('/');
        if path.contains('/') {
            return Err(config_err(
                "source URL path must be just the database name (/dbname); \
                 write `/` inside a name as %2F"
                    .to_owned(),
            ));
        }
        let dbname = match path {
            "" => user.clone(),
            raw => percent_decode(raw, "database name")?,
        };

        let hosts = match host_list {
            Some(list) if !is_socket => list,
            Some(_) => {
                return Err(config_err(
                    "source URL: ?host= (a Unix socket) cannot be combined with a host list"
                        .to_owned(),
                ))
            }
            None => vec![(host.clone(), port)],
        };
        let (host, port) = hosts[0].clone();
        Ok(SourceUrl {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name,
            hosts,
            target_session_attrs,
        })
    }
}
