//! The source URL: `postgres://user:pass@host:port/db?sslmode=...`, the libpq
//! `key=value` form, filled in from `PG*` environment variables (parsed in
//! `url_parse`; the password file is read at connect time, `pgpass`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::ReplicationError;

/// The port Postgres listens on unless told otherwise.
pub(super) const DEFAULT_PORT: u16 = 5432;
/// The user libpq-style tools fall back to in a container (there is no OS user to borrow).
pub(super) const DEFAULT_USER: &str = "postgres";
/// Shown in `pg_stat_activity` / `pg_stat_replication` unless the URL overrides it.
pub(super) const DEFAULT_APPLICATION_NAME: &str = "pgcdc";
/// Parameters we understand; anything else is a typo we refuse to guess about.
pub(super) const KNOWN_PARAMS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "application_name",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "passfile",
    "channel_binding",
    "target_session_attrs",
];

pub(crate) use pgcdc_schema::Secret;

/// How TLS is negotiated with the source (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// Require TLS, without verifying the certificate.
    Require,
    /// Require TLS and verify the chain, but not the host name.
    VerifyCa,
    /// Require TLS and verify the chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(ReplicationError::Config(format!(
                "source URL: sslmode `{other}` is not supported; use one of disable, prefer, \
                 require, verify-ca, verify-full"
            ))),
        }
    }
}

/// SCRAM channel binding (libpq's `channel_binding`): tie the password exchange to
/// the TLS session (`tls-server-end-point`), so a man in the middle cannot relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the connection is TLS and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse to authenticate any other way than SCRAM-SHA-256-PLUS over TLS.
    Require,
}

impl FromStr for ChannelBinding {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            other => Err(ReplicationError::Config(format!(
                "source: channel_binding `{other}` is not supported; use disable, prefer or require"
            ))),
        }
    }
}

/// Which of several hosts to settle on (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first host that accepts the connection.
    #[default]
    Any,
    /// The first host whose sessions are read-write (`transaction_read_only = off`).
    ReadWrite,
    /// The first host not in recovery.
    Primary,
}

impl FromStr for TargetSessionAttrs {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(TargetSessionAttrs::Any),
            "read-write" => Ok(TargetSessionAttrs::ReadWrite),
            "primary" => Ok(TargetSessionAttrs::Primary),
            other => Err(ReplicationError::Config(format!(
                "source: target_session_attrs `{other}` is not supported; pgcdc reads from the \
                 primary: use read-write, primary or any"
            ))),
        }
    }
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
        }
    }
}

/// Parsed source URL: postgres://user:pass@host:port[,host2:port2...]/db?sslmode=...&sslrootcert=...
/// &sslcert=...&sslkey=...&channel_binding=...&application_name=...&target_session_attrs=...,
/// or the libpq `key=value` form; what they leave out comes from `PG*` variables.
///
/// `?host=/dir` (or a host starting with `/`) means a Unix socket in that directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// Host name, IP address, or a Unix socket directory (starts with `/`).
    pub(crate) host: String,
    /// TCP port (also names the Unix socket file `.s.PGSQL.<port>`).
    pub(crate) port: u16,
    /// Role to log in as.
    pub(crate) user: String,
    /// Password, if the URL has one.
    pub password: Option<Secret>,
    /// Database to attach to.
    pub(crate) dbname: String,
    /// TLS negotiation mode.
    pub(crate) sslmode: SslMode,
    /// CA bundle (PEM) for verify-ca / verify-full; system roots when absent.
    pub(crate) sslrootcert: Option<PathBuf>,
    /// `application_name` reported to the server.
    pub(crate) application_name: String,
    /// Every `(host, port)` given, in order; `host` and `port` are the one in use.
    pub(crate) hosts: Vec<(String, u16)>,
    /// Which host to settle on when several are given.
    pub(crate) target_session_attrs: TargetSessionAttrs,
    /// Client certificate (PEM, may carry its chain) shown to the server; with `sslkey`.
    pub(crate) sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM); owner-only permissions, as libpq demands.
    pub(crate) sslkey: Option<PathBuf>,
    /// SCRAM channel binding.
    pub(crate) channel_binding: ChannelBinding,
    /// The password file consulted when there is no password (`passfile`, `PGPASSFILE`,
    /// else `~/.pgpass`); read on each connect, for the host being tried.
    pub(crate) passfile: Option<PathBuf>,
}

impl SourceUrl {
    /// True when `host` names a Unix socket directory rather than a network host.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Whether connecting means choosing among hosts (several, or a session attribute to check).
    pub fn chooses_host(&self) -> bool {
        self.hosts.len() > 1 || self.target_session_attrs != TargetSessionAttrs::Any
    }

    /// This URL aimed at each of its hosts in turn.
    pub fn candidates(&self) -> Vec<SourceUrl> {
        self.hosts
            .iter()
            .map(|(host, port)| SourceUrl {
                host: host.clone(),
                port: *port,
                ..self.clone()
            })
            .collect()
    }

    /// The password to send: the URL's (or `PGPASSWORD`), else the password file's line
    /// for this host, port, database and user.
    pub(crate) fn password_for_connect(&self) -> Option<Secret> {
        self.password.clone().or_else(|| {
            let file = self.passfile.as_deref()?;
            super::pgpass::lookup(file, &self.host, self.port, &self.dbname, &self.user)
        })
    }

    /// Path of the Unix socket file, when `host` is a socket directory.
    pub(crate) fn unix_socket_path(&self) -> Option<PathBuf> {
        self.is_unix_socket()
            .then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}", self.user)?;
        if self.password.is_some() {
            f.write_str(":***")?;
        }
        if self.is_unix_socket() {
            write!(f, "@:{}/{}?host={}", self.port, self.dbname, self.host)?;
        } else {
            f.write_str("@")?;
            let hosts = if self.hosts.is_empty() {
                std::slice::from_ref(&(self.host.clone(), self.port)).to_vec()
            } else {
                self.hosts.clone()
            };
            for (i, (host, port)) in hosts.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                if host.contains(':') {
                    write!(f, "{sep}[{host}]:{port}")?;
                } else {
                    write!(f, "{sep}{host}:{port}")?;
                }
            }
            write!(f, "/{}?", self.dbname)?;
        }
        if self.is_unix_socket() {
            f.write_str("&")?;
        }
        write!(f, "sslmode={}", self.sslmode.as_str())?;
        if self.target_session_attrs != TargetSessionAttrs::Any {
            write!(
                f,
                "&target_session_attrs={}",
                self.target_session_attrs.as_str()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Without the process's PG* variables, which would fill in what a URL leaves out.
    fn parse_no_env(s: &str) -> Result<SourceUrl, ReplicationError> {
        super::super::url_parse::parse_source(s, &|_| None)
    }

    fn parse(s: &str) -> SourceUrl {
        match parse_no_env(s) {
            Ok(u) => u,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn parse_err(s: &str) -> String {
        match parse_no_env(s) {
            Ok(u) => panic!("{s} parsed as {u:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn replication_url_full() {
        let u = parse(
            "postgres://alice:s3cret@db.example.com:6543/portal?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&application_name=cdc1",
        );
        assert_eq!(u.host, "db.example.com");
        assert_eq!(u.port, 6543);
        assert_eq!(u.user, "alice");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(u.dbname, "portal");
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(u.application_name, "cdc1");
        assert!(!u.is_unix_socket());
    }

    #[test]
    fn replication_url_defaults() {
        let u = parse("postgres://db.example.com");
        assert_eq!(u.port, 5432);
        assert_eq!(u.user, "postgres");
        assert_eq!(u.dbname, "postgres");
        assert_eq!(u.password, None);
        assert_eq!(u.sslmode, SslMode::Prefer);
        assert_eq!(u.sslrootcert, None);
        assert_eq!(u.application_name, "pgcdc");
        // The database defaults to the user, not to "postgres".
        let u = parse("postgresql://bob@h/");
        assert_eq!(u.dbname, "bob");
    }

    #[test]
    fn replication_url_every_sslmode() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(
                parse(&format!("postgres://h/d?sslmode={text}")).sslmode,
                mode
            );
            assert_eq!(mode.as_str(), text);
        }
        let e = parse_err("postgres://h/d?sslmode=allow");
        assert!(
            e.contains("sslmode `allow`") && e.contains("verify-full"),
            "{e}"
        );
    }

    #[test]
    fn replication_url_percent_decoding() {
        let u = parse("postgres://us%40er:p%3Aa%2Fss%25w@h/my%20db");
        assert_eq!(u.user, "us@er");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("p:a/ss%w"));
        assert_eq!(u.dbname, "my db");
        let e = parse_err("postgres://u:bad%zzpw@h/d");
        assert!(e.contains("password") && e.contains("%25"), "{e}");
        assert!(!e.contains("bad%zzpw"), "error leaks the password: {e}");
    }

    #[test]
    fn replication_url_unix_socket_and_ipv6() {
        let u = parse("postgres://u@/d?host=/tmp/pg%20sock");
        assert_eq!(u.host, "/tmp/pg sock");
        assert!(u.is_unix_socket());
        assert_eq!(
            u.unix_socket_path(),
            Some(PathBuf::from("/tmp/pg sock/.s.PGSQL.5432"))
        );
        let u = parse("postgres://u@localhost:5433/d?host=/run/pg");
        assert_eq!(u.host, "/run/pg");
        assert_eq!(u.port, 5433);
        let u = parse("postgres://u@[::1]:5433/d");
        assert_eq!(u.host, "::1");
        assert_eq!(u.unix_socket_path(), None);
    }

    #[test]
    fn replication_url_errors_name_the_part() {
        assert!(parse_err("mysql://h/d").contains("scheme `mysql`"));
        assert!(parse_err("postgres://h/d?sslmod=require").contains("unknown parameter `sslmod`"));
        assert!(parse_err("postgres:///d").contains("no host"));
        assert!(parse_err("postgres://h/d/e").contains("database name"));
        assert!(parse_err("postgres://h/d?host=relative").contains("absolute"));
        assert!(parse_err("not a url").contains("postgres://"));
        let e = parse_err("postgres://u:hunter2@h:99999/d");
        assert!(!e.contains("hunter2"), "error leaks the password: {e}");
    }

    #[test]
    fn replication_url_redacts_password() {
        let u = parse("postgres://alice:hunter2@h:5432/d?sslmode=require");
        let shown = format!("{u} {u:?} {:?} {}", u.password, Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert_eq!(
            u.to_string(),
            "postgres://alice:***@h:5432/d?sslmode=require"
        );
        let u = parse("postgres://alice@/d?host=/s");
        assert_eq!(
            u.to_string(),
            "postgres://alice@:5432/d?host=/s&sslmode=prefer"
        );
    }
}
