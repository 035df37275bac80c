//! Parsing `source.url` as libpq would: `tokio_postgres::Config` reads the URL
//! (`postgres://user:pass@h1:5432,h2/db`) or the `key=value` string, and the `PG*`
//! environment variables; pgcdc reads the parameters tokio-postgres does not know
//! (`sslmode=verify-ca|verify-full`, `sslrootcert`, `sslcert`, `sslkey`,
//! `passfile`, `channel_binding`, `target_session_attrs=primary`). A value comes
//! from the URL's query, else the URL itself, else the environment, else the default.

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::Host;

use super::url::{
    ChannelBinding, Secret, SourceUrl, SslMode, TargetSessionAttrs, DEFAULT_APPLICATION_NAME,
    DEFAULT_PORT, DEFAULT_USER, KNOWN_PARAMS,
};
use super::url_forms::{is_url, join_pairs, pairs, split_url};
use super::ReplicationError;

/// At most this many hosts: each is tried in turn on every connect.
const MAX_HOSTS: usize = 16;

/// libpq's environment variables and the parameter each stands for.
const ENV_VARS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGDATABASE", "dbname"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGPASSFILE", "passfile"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
];

fn config_err(msg: impl Into<String>) -> ReplicationError {
    ReplicationError::Config(msg.into())
}

/// One source of values: what tokio-postgres parsed, and pgcdc's own parameters.
#[derive(Default)]
struct Layer {
    config: tokio_postgres::Config,
    /// Whether `config`'s ports were written (the URL parser fills in 5432).
    ports_given: bool,
    sslmode: Option<SslMode>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    passfile: Option<PathBuf>,
    channel_binding: Option<ChannelBinding>,
    target_session_attrs: Option<TargetSessionAttrs>,
}

impl Layer {
    /// pgcdc's parameters are taken here, the rest go to tokio-postgres.
    fn from_pairs(pairs: &[(String, String)], origin: &str) -> Result<Layer, ReplicationError> {
        let mut layer = Layer::default();
        let mut kept = Vec::new();
        for (i, (key, value)) in pairs.iter().enumerate() {
            let path = || Some(PathBuf::from(value));
            match key.as_str() {
                "sslmode" => layer.sslmode = Some(value.parse()?),
                "sslrootcert" => layer.sslrootcert = path(),
                "sslcert" => layer.sslcert = path(),
                "sslkey" => layer.sslkey = path(),
                "passfile" => layer.passfile = path(),
                "channel_binding" => layer.channel_binding = Some(value.parse()?),
                "target_session_attrs" => layer.target_session_attrs = Some(value.parse()?),
                "host" | "port" | "user" | "password" | "dbname" | "application_name" => {
                    layer.ports_given |= key == "port";
                    kept.push((key.as_str(), value.as_str()));
                }
                // Right after an unquoted password with a space, the "key" is part of it.
                _ if i > 0 && pairs[i - 1].0 == "password" => {
                    return Err(config_err(format!(
                        "{origin}: an unknown parameter follows the password; quote a password \
                         with spaces (password='...')"
                    )))
                }
                other => {
                    return Err(config_err(format!(
                        "{origin}: unknown parameter `{}`; supported: {}",
                        other.escape_debug(),
                        KNOWN_PARAMS.join(", ")
                    )))
                }
            }
        }
        layer.config = tokio_config(&join_pairs(kept), origin)?;
        Ok(layer)
    }
}

/// `tokio_postgres::Config` from a string; its errors name the option, never the value.
fn tokio_config(s: &str, origin: &str) -> Result<tokio_postgres::Config, ReplicationError> {
    s.parse().map_err(|e: tokio_postgres::Error| {
        let cause = std::error::Error::source(&e)
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        config_err(format!("{origin}: {e}{cause}"))
    })
}

/// The `PG*` variables that are set (and not empty), as parameters.
fn env_pairs(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    ENV_VARS
        .iter()
        .filter_map(|(var, key)| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(|v| ((*key).to_owned(), v))
        })
        .collect()
}

/// Parses `s` (URL or `key=value`), filling gaps from `env` (`PG*` and `HOME`).
pub(super) fn parse_source(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SourceUrl, ReplicationError> {
    // Errors below never echo `s`: it may carry the password.
    let s = s.trim();
    let mut layers = Vec::new();
    if is_url(s) {
        let form = split_url(s)?;
        layers.push(Layer::from_pairs(&form.query, "source URL")?);
        layers.push(Layer {
            config: tokio_config(&form.base, "source URL")?,
            ports_given: form.ports_given,
            ..Layer::default()
        });
    } else {
        layers.push(Layer::from_pairs(&pairs(s)?, "source connection string")?);
    }
    layers.push(Layer::from_pairs(
        &env_pairs(env),
        "the PG* environment variables",
    )?);
    merge(&layers, env)
}

/// The first layer's value that is set.
fn first<'a, T: ?Sized>(
    layers: &'a [Layer],
    get: impl Fn(&'a Layer) -> Option<&'a T>,
) -> Option<&'a T> {
    layers.iter().find_map(get)
}

fn merge(
    layers: &[Layer],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SourceUrl, ReplicationError> {
    let hosts = hosts(layers)?;
    let user = first(layers, |l| l.config.get_user().filter(|u| !u.is_empty()))
        .unwrap_or(DEFAULT_USER)
        .to_owned();
    let password = first(layers, |l| l.config.get_password())
        .map(|p| {
            String::from_utf8(p.to_vec())
                .map(Secret::new)
                .map_err(|_| config_err("source: the password is not valid UTF-8"))
        })
        .transpose()?;
    let dbname = first(layers, |l| l.config.get_dbname().filter(|d| !d.is_empty()))
        .map_or_else(|| user.clone(), str::to_owned);
    let application_name = first(layers, |l| l.config.get_application_name())
        .unwrap_or(DEFAULT_APPLICATION_NAME)
        .to_owned();
    let sslmode = first(layers, |l| l.sslmode.as_ref())
        .copied()
        .unwrap_or_default();
    let channel_binding = first(layers, |l| l.channel_binding.as_ref())
        .copied()
        .unwrap_or_default();
    let path = |get: fn(&Layer) -> Option<&PathBuf>| first(layers, get).cloned();
    let sslcert = path(|l| l.sslcert.as_ref());
    let sslkey = path(|l| l.sslkey.as_ref());
    if sslcert.is_some() != sslkey.is_some() {
        return Err(config_err(
            "source: sslcert and sslkey go together: give the client certificate and its key",
        ));
    }
    if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
        return Err(config_err(
            "source: channel_binding=require needs TLS, but sslmode=disable turns it off; \
             use sslmode=require (or verify-full) or channel_binding=prefer",
        ));
    }
    let passfile = path(|l| l.passfile.as_ref())
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
    let (host, port) = hosts[0].clone();
    Ok(SourceUrl {
        host,
        port,
        user,
        password,
        dbname,
        sslmode,
        sslrootcert: path(|l| l.sslrootcert.as_ref()),
        application_name,
        hosts,
        target_session_attrs: first(layers, |l| l.target_session_attrs.as_ref())
            .copied()
            .unwrap_or_default(),
        sslcert,
        sslkey,
        channel_binding,
        passfile,
    })
}

/// `(host, port)` pairs: the first layer's hosts, each with its port (one port
/// for all, one per host, else `PGPORT` or 5432).
fn hosts(layers: &[Layer]) -> Result<Vec<(String, u16)>, ReplicationError> {
    let hosts = layers
        .iter()
        .map(|l| l.config.get_hosts())
        .find(|h| !h.is_empty())
        .ok_or_else(|| {
            config_err(
                "source has no host: write postgres://user@HOST:5432/db or host=HOST \
                 (host=h1,h2 for several; ?host=/socket/dir for a Unix socket), or set PGHOST",
            )
        })?;
    let hosts = hosts
        .iter()
        .map(|h| match h {
            Host::Tcp(name) if name.is_empty() => Err(config_err(
                "source: the host list has an empty entry; write host1:5432,host2:5432",
            )),
            Host::Tcp(name) => Ok(name.clone()),
            Host::Unix(dir) => dir
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| config_err("source: the Unix socket directory is not valid UTF-8")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if hosts.len() > MAX_HOSTS {
        return Err(config_err(format!(
            "source: {} hosts; at most {MAX_HOSTS}",
            hosts.len()
        )));
    }
    let ports = layers
        .iter()
        .filter(|l| l.ports_given)
        .map(|l| l.config.get_ports())
        .find(|p| !p.is_empty())
        .unwrap_or(&[]);
    if ports.contains(&0) {
        return Err(config_err(
            "source: port 0 is an invalid port; write host:5432",
        ));
    }
    let ports = match ports.len() {
        0 => vec![DEFAULT_PORT; hosts.len()],
        1 => vec![ports[0]; hosts.len()],
        n if n == hosts.len() => ports.to_vec(),
        n => {
            return Err(config_err(format!(
                "source: {} hosts but {n} ports; give one port for all, or one per host",
                hosts.len()
            )))
        }
    };
    Ok(hosts.into_iter().zip(ports).collect())
}

impl FromStr for SourceUrl {
    type Err = ReplicationError;

    /// Parses with the process's `PG*` variables (and `HOME` for `~/.pgpass`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_source(s, &|var| std::env::var(var).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_env(s: &str, env: &[(&str, &str)]) -> Result<SourceUrl, ReplicationError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_source(s, &|k| env.get(k).cloned())
    }

    fn parse(s: &str) -> SourceUrl {
        parse_env(s, &[]).unwrap_or_else(|e| panic!("{s}: {e}"))
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
            parse_env(s, &[])
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
        // New parameters: bad values and combinations name the problem too.
        assert!(err("postgres://h/d?channel_binding=maybe").contains("channel_binding `maybe`"));
        assert!(
            err("postgres://h/d?sslmode=disable&channel_binding=require").contains("needs TLS")
        );
        assert!(err("host=h sslcert=/c.pem").contains("sslcert and sslkey"));
        assert!(err("postgres://u:hunter2@h:99999/d").contains("port"));
        let e = err("host=h password=hunter2 two=x");
        assert!(e.contains("quote a password") && !e.contains("two"), "{e}");
        let e = err("host=h password=hunter2 two");
        assert!(e.contains("quote a password") && !e.contains("two"), "{e}");
    }

    #[test]
    fn client_certificate_channel_binding_and_passfile_parameters() {
        let u = parse(
            "postgres://u@h/d?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem\
             &sslkey=/c.key&channel_binding=require&passfile=/pw",
        );
        assert_eq!(u.sslcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(u.sslkey, Some(PathBuf::from("/c.key")));
        assert_eq!(u.channel_binding, ChannelBinding::Require);
        assert_eq!(u.passfile, Some(PathBuf::from("/pw")));
        let u = parse("host=h sslcert=/c.pem sslkey='/my key' channel_binding=disable");
        assert_eq!(u.sslkey, Some(PathBuf::from("/my key")));
        assert_eq!(u.channel_binding, ChannelBinding::Disable);
        assert_eq!(parse("host=h").channel_binding, ChannelBinding::Prefer);
    }

    #[test]
    fn environment_fills_what_the_url_leaves_out() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGSSLMODE", "verify-ca"),
            ("PGSSLROOTCERT", "/env/ca.pem"),
            ("PGSSLCERT", "/env/c.pem"),
            ("PGSSLKEY", "/env/c.key"),
            ("PGCHANNELBINDING", "require"),
            ("PGPASSFILE", "/env/pgpass"),
            ("HOME", "/home/x"),
        ];
        let ok = |s: &str| parse_env(s, &env).unwrap_or_else(|e| panic!("{s}: {e}"));
        // Nothing in the URL: all from the environment.
        let u = ok("postgres://");
        assert_eq!(u.hosts, vec![("envhost".to_owned(), 6000)]);
        assert_eq!((u.user.as_str(), u.dbname.as_str()), ("envuser", "envdb"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("envpw"));
        assert_eq!(u.application_name, "envapp");
        assert_eq!(u.sslmode, SslMode::VerifyCa);
        assert_eq!(u.sslrootcert, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(u.sslcert, Some(PathBuf::from("/env/c.pem")));
        assert_eq!(u.channel_binding, ChannelBinding::Require);
        assert_eq!(u.passfile, Some(PathBuf::from("/env/pgpass")));
        assert_eq!(ok("").hosts, u.hosts);
        // The URL wins over the environment, field by field.
        let u = ok("postgres://alice:pw@h/portal?sslmode=require&application_name=a");
        assert_eq!(
            u.hosts,
            vec![("h".to_owned(), 6000)],
            "PGPORT applies to a host without a port"
        );
        assert_eq!((u.user.as_str(), u.dbname.as_str()), ("alice", "portal"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(
            (u.sslmode, u.application_name.as_str()),
            (SslMode::Require, "a")
        );
        assert_eq!(ok("postgres://h:5433/d").port, 5433);
        let u = ok("host=kv port=1 user=k");
        assert_eq!((u.host.as_str(), u.port, u.user.as_str()), ("kv", 1, "k"));
        assert_eq!(u.dbname, "envdb");
        // Defaults when neither says: ~/.pgpass under HOME, user postgres, db = user.
        let u = parse_env("postgres://h", &[("HOME", "/home/x")]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.passfile, Some(PathBuf::from("/home/x/.pgpass")));
        assert_eq!(
            (u.user.as_str(), u.dbname.as_str(), u.port),
            ("postgres", "postgres", 5432)
        );
        // A bad variable is named by its parameter.
        let e = parse_env("postgres://h", &[("PGSSLMODE", "bogus")])
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("sslmode `bogus`")));
    }
}
