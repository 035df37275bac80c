//! The other spellings of a source: a host list in a URL (`postgres://u@h1:5432,h2:5433/db`)
//! and libpq's `key=value` connection string (`host=h1,h2 port=5432 dbname=db`).
//! Errors never echo the input: it may carry the password.

use std::borrow::Cow;

use super::url::defaults;
use super::{ReplicationError, Secret, SourceUrl, SslMode, TargetSessionAttrs};

/// At most this many hosts: each is tried in turn on every connect.
const MAX_HOSTS: usize = 16;

fn config_err(msg: impl Into<String>) -> ReplicationError {
    ReplicationError::Config(msg.into())
}

/// `host[:port]` or `[v6]:port`.
fn host_port(entry: &str, default_port: u16) -> Result<(String, u16), ReplicationError> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| config_err("source: an IPv6 host in the host list lacks its `]`"))?;
        (host, after.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err(config_err(
            "source: the host list has an empty entry; write host1:5432,host2:5432",
        ));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            config_err(format!(
                "source: host `{host}` has an invalid port; write host:5432"
            ))
        })?,
    };
    Ok((host.to_owned(), port))
}

/// `(host, port)` pairs in the order given.
pub(super) type HostList = Vec<(String, u16)>;

/// Splits a URL's host list off: the URL with only the first host, and the list
/// (None when there is a single host).
pub(super) fn split_host_list(
    s: &str,
) -> Result<(Cow<'_, str>, Option<HostList>), ReplicationError> {
    let Some(scheme_end) = s.find("://") else {
        return Ok((s.into(), None));
    };
    let start = scheme_end + 3;
    let rest = &s[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hosts = &authority[host_start..];
    if !hosts.contains(',') {
        return Ok((s.into(), None));
    }
    let list = hosts
        .split(',')
        .map(|e| host_port(e, defaults::PORT))
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_HOSTS {
        return Err(config_err(format!(
            "source URL lists {} hosts; at most {MAX_HOSTS}",
            list.len()
        )));
    }
    let first = hosts.split(',').next().unwrap_or_default();
    let at = start + host_start;
    let single = format!("{}{first}{}", &s[..at], &s[at + hosts.len()..]);
    Ok((single.into(), Some(list)))
}

/// libpq's `key = value` pairs; values may be single-quoted (`\'` and `\\` escape).
fn pairs(s: &str) -> Result<Vec<(String, String)>, ReplicationError> {
    let mut out = Vec::new();
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
            return Err(config_err(format!(
                "source: `{key}` in the connection string has no `= value`; write key=value pairs \
                 separated by spaces, or a postgres:// URL"
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

/// Parses `host=h1,h2 port=5432,5433 dbname=db user=u password=p sslmode=...`.
pub(super) fn parse_key_value(s: &str) -> Result<SourceUrl, ReplicationError> {
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    let mut user = None;
    let mut password = None;
    let mut dbname = None;
    let mut sslmode = SslMode::default();
    let mut sslrootcert = None;
    let mut application_name = defaults::APPLICATION_NAME.to_owned();
    let mut target_session_attrs = TargetSessionAttrs::default();
    for (key, value) in pairs(s)? {
        match key.as_str() {
            "host" => hosts = value.split(',').map(str::to_owned).collect(),
            "port" => {
                ports = value
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| {
                                config_err(format!("source: port `{p}` is not a valid port"))
                            })
                    })
                    .collect::<Result<_, _>>()?
            }
            "user" => user = Some(value),
            "password" => password = Some(Secret::new(value)),
            "dbname" => dbname = Some(value),
            "sslmode" => sslmode = value.parse()?,
            "sslrootcert" => sslrootcert = Some(std::path::PathBuf::from(value)),
            "application_name" => application_name = value,
            "target_session_attrs" => target_session_attrs = value.parse()?,
            other => {
                return Err(config_err(format!(
                    "source: unknown connection-string key `{other}`; supported: host, port, \
                     dbname, user, password, sslmode, sslrootcert, application_name, \
                     target_session_attrs"
                )))
            }
        }
    }
    if hosts.is_empty() || hosts.iter().any(String::is_empty) {
        return Err(config_err(
            "source: the connection string needs host=HOST (or host=h1,h2 for several)",
        ));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(config_err(format!(
            "source: {} hosts; at most {MAX_HOSTS}",
            hosts.len()
        )));
    }
    let ports = match ports.len() {
        0 => vec![defaults::PORT; hosts.len()],
        1 => vec![ports[0]; hosts.len()],
        n if n == hosts.len() => ports,
        n => {
            return Err(config_err(format!(
                "source: {} hosts but {n} ports; give one port for all, or one per host",
                hosts.len()
            )))
        }
    };
    let hosts: Vec<(String, u16)> = hosts.into_iter().zip(ports).collect();
    let user = user.unwrap_or_else(|| defaults::USER.to_owned());
    let (host, port) = hosts[0].clone();
    Ok(SourceUrl {
        host,
        port,
        dbname: dbname.unwrap_or_else(|| user.clone()),
        user,
        password,
        sslmode,
        sslrootcert,
        application_name,
        hosts,
        target_session_attrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> SourceUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_host_list_with_ports_and_session_attrs() {
        let u = parse(
            "postgres://alice:pw@h1:5432,h2,[::1]:6000/portal?target_session_attrs=read-write",
        );
        assert_eq!(
            u.hosts,
            vec![
                ("h1".to_owned(), 5432),
                ("h2".to_owned(), 5432),
                ("::1".to_owned(), 6000)
            ]
        );
        assert_eq!((u.host.as_str(), u.port), ("h1", 5432));
        assert_eq!(u.dbname, "portal");
        assert_eq!(u.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert!(u.chooses_host());
        assert_eq!(
            u.to_string(),
            "postgres://alice:***@h1:5432,h2:5432,[::1]:6000/portal?sslmode=prefer&target_session_attrs=read-write"
        );
        let c = u.candidates();
        assert_eq!((c[2].host.as_str(), c[2].port), ("::1", 6000));
        let single = parse("postgres://u@h:1/d");
        assert!(!single.chooses_host());
        assert_eq!(single.hosts, vec![("h".to_owned(), 1)]);
    }

    #[test]
    fn key_value_form() {
        let u = parse(
            "host=h1,h2 port=5433 dbname='my db' user=bob password='it\\'s secret' \
             sslmode=require target_session_attrs=primary application_name=cdc",
        );
        assert_eq!(
            u.hosts,
            vec![("h1".to_owned(), 5433), ("h2".to_owned(), 5433)]
        );
        assert_eq!(u.dbname, "my db");
        assert_eq!(u.user, "bob");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("it's secret"));
        assert_eq!(u.sslmode, SslMode::Require);
        assert_eq!(u.target_session_attrs, TargetSessionAttrs::Primary);
        assert_eq!(u.application_name, "cdc");
        assert!(!u.to_string().contains("secret"));
        let u = parse("host=a,b port=1,2");
        assert_eq!(u.hosts, vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
        assert_eq!(u.dbname, "postgres");
    }

    #[test]
    fn bad_forms_name_the_problem_without_the_password() {
        let err = |s: &str| {
            s.parse::<SourceUrl>()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("host=a,b,c port=1,2").contains("3 hosts but 2 ports"));
        assert!(err("host=a frobnicate=1 password=hunter2").contains("`frobnicate`"));
        assert!(!err("host=a frobnicate=1 password=hunter2").contains("hunter2"));
        assert!(err("dbname=x").contains("host="));
        assert!(err("host=a password='hunter2").contains("unterminated"));
        assert!(!err("host=a password='hunter2").contains("hunter2"));
        assert!(err("postgres://u:hunter2@h1:5432,,h2/d").contains("empty entry"));
        assert!(err("postgres://u@h1:0,h2/d").contains("invalid port"));
        assert!(err("postgres://u@h1/d?target_session_attrs=standby").contains("read-write"));
    }
}
