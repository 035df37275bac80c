//! The two spellings of a source, taken apart only as far as tokio-postgres'
//! parser cannot: the URL's query (parameters tokio-postgres does not know, such
//! as `verify-full`, `sslcert` or `primary`) and pgcdc's stricter checks of the
//! URL (%-escapes, one path segment, whether a port was written), and the
//! `key=value` pairs, so that pgcdc's own keys can be picked out.
//! Errors never echo the input: it may carry the password.

use super::ReplicationError;

fn config_err(msg: impl Into<String>) -> ReplicationError {
    ReplicationError::Config(msg.into())
}

/// A `postgres://` URL split for parsing.
pub(super) struct UrlForm {
    /// `postgresql://userinfo@hosts/dbname`, for `tokio_postgres::Config`.
    pub(super) base: String,
    /// The query's parameters, %-decoded, in order.
    pub(super) query: Vec<(String, String)>,
    /// Whether any host was written with a port (else `PGPORT` or 5432 applies).
    pub(super) ports_given: bool,
}

/// True for `postgres://...` and `postgresql://...` (and any other `scheme://`,
/// which [`split_url`] refuses by name, or text that is not `key=value` pairs either);
/// an empty string is an empty `key=value` string, as in libpq.
pub(super) fn is_url(s: &str) -> bool {
    s.contains("://") || !(s.is_empty() || s.contains('='))
}

/// Splits a URL; refuses another scheme, a path with `/`, or a malformed %-escape.
pub(super) fn split_url(s: &str) -> Result<UrlForm, ReplicationError> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(config_err(
            "source URL is not a valid URL; expected \
             postgres://user:password@host:port/dbname?sslmode=require (or host=... key=value pairs)",
        ));
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(config_err(format!(
            "source URL scheme `{}` is not supported; start it with postgres://",
            scheme.escape_debug()
        )));
    }
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        check_escapes(user, "user name")?;
        check_escapes(password, "password")?;
    }
    if path.contains('/') {
        return Err(config_err(
            "source URL path must be just the database name (/dbname); write `/` inside a name as %2F",
        ));
    }
    check_escapes(path, "database name")?;
    let ports_given = hosts.split(',').any(|chunk| match chunk.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => chunk.contains(':'),
    });
    // tokio-postgres ends the user info at the first `@` of the whole string.
    let userinfo = userinfo.map(|u| format!("{}@", u.replace('@', "%40")));
    let base = format!(
        "postgresql://{}{hosts}/{path}",
        userinfo.unwrap_or_default()
    );
    Ok(UrlForm {
        base,
        query: query_pairs(query)?,
        ports_given,
    })
}

/// `a=1&b=2`, %-decoded; `?host=` must be a socket directory (a network host goes
/// before the port, where a list of them can be written).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ReplicationError> {
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            config_err(format!(
                "source URL: parameter `{}` has no `=value`",
                part.escape_debug()
            ))
        })?;
        let key = decode(key, "a parameter name")?;
        let value = decode(value, &format!("parameter `{key}`"))?;
        if key == "host" && !value.starts_with('/') {
            return Err(config_err(format!(
                "source URL: ?host= must be an absolute Unix socket directory (got `{value}`); \
                 put a network host before the port instead"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Refuses a `%` not followed by two hex digits (libpq refuses it too).
fn check_escapes(raw: &str, what: &str) -> Result<(), ReplicationError> {
    decode(raw, what).map(|_| ())
}

/// Strict %-decoding into UTF-8; errors name `what`, never the text.
fn decode(raw: &str, what: &str) -> Result<String, ReplicationError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = raw
                .get(i + 1..i + 3)
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

/// libpq's `key = value` pairs; values may be single-quoted (`\'` and `\\` escape).
pub(super) fn pairs(s: &str) -> Result<Vec<(String, String)>, ReplicationError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // After an unquoted password with a space, the "key" is part of the password.
            if out.last().is_some_and(|(k, _)| k == "password") {
                return Err(config_err(
                    "source: the connection string has text without `= value` after the \
                     password; quote a password with spaces (password='...')",
                ));
            }
            return Err(config_err(format!(
                "source: `{}` in the connection string has no `= value`; write key=value pairs \
                 separated by spaces, or a postgres:// URL",
                key.escape_debug()
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(config_err(format!(
                            "source: the value of `{key}` has an unterminated quote"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// The pairs back in `key='value'` form, for `tokio_postgres::Config`.
pub(super) fn join_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_split_keeps_the_parts_tokio_postgres_reads() {
        let f = match split_url("postgres://u:p@ss@h1,[::1]:6000/db?sslmode=verify-full&x=%2F") {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(f.base, "postgresql://u:p%40ss@h1,[::1]:6000/db");
        assert!(f.ports_given);
        assert_eq!(
            f.query,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("x".to_owned(), "/".to_owned())
            ]
        );
        let f = split_url("postgresql://h1,h2").ok();
        assert!(f.is_some_and(|f| !f.ports_given));
    }

    #[test]
    fn pairs_round_trip_through_quoting() {
        let p = pairs("host=h password='it\\'s a \\\\ secret' dbname = d").unwrap_or_default();
        assert_eq!(p[1].1, "it's a \\ secret");
        assert_eq!(p[2], ("dbname".to_owned(), "d".to_owned()));
        let joined = join_pairs(p.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(pairs(&joined).unwrap_or_default(), p);
    }
}
