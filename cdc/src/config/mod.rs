//! Configuration: TOML with `${VAR}` substitution from the environment.
//!
//! Every error names the key path (`sink[1].tables`) and what is expected.
//! Errors here are definite: nothing connects before the config is valid.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::replication::SourceUrl;

mod ha;
mod jq;
mod schedule;
pub use ha::{HaConfig, HaTimings};
pub use jq::JqConfig;
pub use schedule::{ScheduleConfig, ScheduledResync};

/// A configuration problem, with the key path it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML syntax is broken.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A jq expression or template does not compile.
    #[error("config {0}")]
    Expression(#[from] pgcdc_schema::mapping::MappingError),
    /// A value is missing, unknown or malformed.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Key path, e.g. `sink[0].name`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn key_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

pub use pgcdc_schema::Secret;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The portal database.
    pub source: SourceConfig,
    /// Where the journal and cursors live.
    #[serde(default)]
    pub state: StateConfig,
    /// Journal retention.
    #[serde(default)]
    pub journal: JournalConfig,
    /// Delivery audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Admin HTTP API and `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Named state transitions.
    #[serde(default)]
    pub trigger: Vec<TriggerConfig>,
    /// Resyncs on a cron schedule.
    #[serde(default)]
    pub schedule: Vec<ScheduleConfig>,
    /// Bounds on jq evaluation.
    #[serde(default)]
    pub jq: JqConfig,
    /// High availability: one leader, fenced standbys.
    #[serde(default)]
    pub ha: HaConfig,
    /// Delivery destinations (parsed separately: common keys + per-type keys).
    #[serde(skip)]
    pub sink: Vec<SinkConfig>,
}

/// `[journal]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Entries every sink has passed are removed once older than this, e.g. "7d".
    #[serde(default = "JournalConfig::default_retention")]
    pub retention: String,
    /// Past this many bytes of live journal data the reader pauses (Postgres keeps
    /// the WAL) until pruning makes room. None: no limit.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl JournalConfig {
    fn default_retention() -> String {
        "7d".to_string()
    }

    /// The retention as a duration (validated at load).
    pub fn retention(&self) -> std::time::Duration {
        humantime::parse_duration(&self.retention)
            .unwrap_or(std::time::Duration::from_secs(7 * 86_400))
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            retention: Self::default_retention(),
            max_bytes: None,
        }
    }
}

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How long delivery attempts are kept, e.g. "30d", "12h".
    #[serde(default = "AuditConfig::default_retention")]
    pub retention: String,
}

impl AuditConfig {
    fn default_retention() -> String {
        "30d".to_string()
    }

    /// The retention as a duration (validated at load).
    pub fn retention(&self) -> std::time::Duration {
        humantime::parse_duration(&self.retention)
            .unwrap_or(std::time::Duration::from_secs(30 * 86_400))
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Self::default_retention(),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API and `/metrics`, `IP:PORT`.
    #[serde(default = "AdminConfig::default_listen")]
    pub listen: String,
    /// Bearer token the mutating endpoints require.
    pub token: Option<Secret>,
    /// `/readyz` fails while a sink's oldest undelivered event is older than this.
    #[serde(default = "AdminConfig::default_ready_max_sink_lag")]
    pub ready_max_sink_lag: String,
    /// Warn (log, metric, `/readyz`) when the slot's `safe_wal_size` falls below this many bytes.
    #[serde(default = "AdminConfig::default_min_safe_wal_bytes")]
    pub min_safe_wal_bytes: i64,
}

impl AdminConfig {
    /// Where the admin API listens unless configured.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:9187";

    fn default_listen() -> String {
        Self::DEFAULT_LISTEN.to_string()
    }

    fn default_ready_max_sink_lag() -> String {
        "5m".to_string()
    }

    fn default_min_safe_wal_bytes() -> i64 {
        1 << 30
    }

    /// `ready_max_sink_lag` as a duration (validated at load).
    pub fn ready_max_sink_lag(&self) -> std::time::Duration {
        humantime::parse_duration(&self.ready_max_sink_lag)
            .unwrap_or(std::time::Duration::from_secs(300))
    }

    /// The listen address (validated at load).
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            key_err(
                "admin.listen",
                format!(
                    "{:?} is not an IP:PORT address; write e.g. \"127.0.0.1:9187\" or \"[::1]:9187\"",
                    self.listen
                ),
            )
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        humantime::parse_duration(&self.ready_max_sink_lag).map_err(|e| {
            key_err(
                "admin.ready_max_sink_lag",
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"5m\"",
                    self.ready_max_sink_lag
                ),
            )
        })?;
        let addr = self.listen_addr()?;
        match &self.token {
            Some(t) if t.expose().trim().is_empty() => Err(key_err(
                "admin.token",
                "is empty; set it to a long random string (e.g. token = \"${PGCDC_ADMIN_TOKEN}\") or remove the key",
            )),
            None if !addr.ip().is_loopback() => Err(key_err(
                "admin.listen",
                format!(
                    "{addr} is reachable from other hosts, so the admin API's mutating endpoints \
                     (DLQ replay/drop) need a token: set admin.token = \"${{PGCDC_ADMIN_TOKEN}}\" \
                     or listen on a loopback address such as 127.0.0.1"
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Self::default_listen(),
            token: None,
            ready_max_sink_lag: Self::default_ready_max_sink_lag(),
            min_safe_wal_bytes: Self::default_min_safe_wal_bytes(),
        }
    }
}

/// `[source]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user@host:port/db?sslmode=...`
    pub url: Secret,
    /// Publication name; created for `tables` if missing.
    #[serde(default = "SourceConfig::default_publication")]
    pub publication: String,
    /// Logical replication slot name; created if missing.
    #[serde(default = "SourceConfig::default_slot")]
    pub slot: String,
    /// Tables to capture, `schema.table`.
    pub tables: Vec<String>,
    /// Initial snapshot mode.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// How often a heartbeat message is written into the WAL ("10s"; "0s" turns it off).
    #[serde(default = "SourceConfig::default_heartbeat")]
    pub heartbeat: String,
}

impl SourceConfig {
    const DEFAULT_NAME: &'static str = "pgcdc";

    fn default_publication() -> String {
        Self::DEFAULT_NAME.to_string()
    }

    fn default_slot() -> String {
        Self::DEFAULT_NAME.to_string()
    }

    fn default_heartbeat() -> String {
        "10s".to_string()
    }

    /// The heartbeat interval (None when off; validated at load).
    pub fn heartbeat(&self) -> Option<std::time::Duration> {
        humantime::parse_duration(&self.heartbeat)
            .ok()
            .filter(|d| !d.is_zero())
    }
}

/// `source.snapshot`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Copy existing rows (as `read` events) when the slot is created, then stream.
    Initial,
    /// Stream changes from the slot's creation on.
    #[default]
    Never,
}

/// `[state]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the journal, cursors, DLQ and audit log (the SQLite store).
    #[serde(default = "StateConfig::default_dir")]
    pub dir: PathBuf,
    /// `postgres://...`: keep the state in this database instead of `dir`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Schema of the state tables in `url`'s database.
    #[serde(default = "StateConfig::default_schema")]
    pub schema: String,
}

impl StateConfig {
    fn default_dir() -> PathBuf {
        PathBuf::from("./pgcdc-data")
    }

    fn default_schema() -> String {
        "pgcdc".to_string()
    }

    /// The state database's URL, parsed (validated at load; None: the SQLite store).
    pub fn url(&self) -> Result<Option<SourceUrl>, ConfigError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        url.expose()
            .parse::<SourceUrl>()
            // The parser's messages name the source URL; this one is the state's.
            .map_err(|e| key_err("state.url", e.to_string().replace("source URL", "URL")))
            .map(Some)
    }

    /// Takes a relative `dir` from the directory of the config file `config_path`, not
    /// from wherever pgcdc is started: a journal that depends on the working directory
    /// is a different (new, empty) journal when started from elsewhere.
    fn resolve_dir(&mut self, config_path: &Path) {
        if self.dir.is_absolute() {
            return;
        }
        let base = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let joined = base.join(&self.dir);
        self.dir = std::path::absolute(&joined).unwrap_or(joined);
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: Self::default_dir(),
            url: None,
            schema: Self::default_schema(),
        }
    }
}

/// One `[[trigger]]`: a named state transition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// Event name sinks select with `events = [...]`.
    pub name: String,
    /// The table it watches, `schema.table`.
    pub table: String,
    /// jq condition over the native event.
    pub when: String,
}

/// One `[[sink]]`: the keys every sink type has, plus its type's own.
#[derive(Debug)]
pub struct SinkConfig {
    /// Unique sink name (its cursor's key).
    pub name: String,
    /// Trigger names to deliver.
    pub events: Vec<String>,
    /// Tables to deliver (all changes of them).
    pub tables: Vec<String>,
    /// jq condition: only events for which it is true.
    pub filter: Option<String>,
    /// jq program building what is sent (default: the native event).
    pub transform: Option<String>,
    /// Type-specific settings.
    pub kind: SinkKind,
}

/// A sink's type and its own settings.
#[derive(Debug)]
pub enum SinkKind {
    /// One JSON line per item on stdout.
    Stdout,
    /// Requests to an HTTP API.
    Http(Box<pgcdc_sinks::http::HttpSinkConfig>),
    /// Records in Kafka topics, exactly once.
    Kafka(Box<pgcdc_sinks::kafka::KafkaSinkConfig>),
}

/// The keys every sink has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkCommon {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    tables: Vec<String>,
    filter: Option<String>,
    transform: Option<String>,
}

const COMMON_SINK_KEYS: &[&str] = &["name", "type", "events", "tables", "filter", "transform"];
const SINK_TYPES: &str = "\"stdout\", \"http\", \"kafka\"";

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tables this sink receives all changes of.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    fn from_toml(i: usize, value: toml::Value) -> Result<SinkConfig, ConfigError> {
        let prefix = format!("sink[{i}]");
        let toml::Value::Table(table) = value else {
            return Err(key_err(prefix, "each [[sink]] must be a table"));
        };
        let (common, own): (toml::Table, toml::Table) = table
            .into_iter()
            .partition(|(k, _)| COMMON_SINK_KEYS.contains(&k.as_str()));
        let common: SinkCommon = deserialize_at(&prefix, toml::Value::Table(common))?;
        let kind = match common.kind.as_str() {
            "stdout" => {
                if let Some(k) = own.keys().next() {
                    return Err(key_err(
                        format!("{prefix}.{k}"),
                        format!(
                            "unknown key for a stdout sink; it takes {}",
                            COMMON_SINK_KEYS.join(", ")
                        ),
                    ));
                }
                SinkKind::Stdout
            }
            "http" => {
                let http: pgcdc_sinks::http::HttpSinkConfig =
                    deserialize_at(&prefix, toml::Value::Table(own))?;
                http.validate(&prefix).map_err(|e| ConfigError::Key {
                    key: e.key,
                    message: e.message,
                })?;
                let templates = std::iter::once(("url".to_string(), http.url.clone())).chain(
                    http.headers
                        .iter()
                        .map(|(k, v)| (format!("headers.{k}"), v.clone())),
                );
                for (key, text) in templates {
                    pgcdc_schema::mapping::Template::parse(&format!("{prefix}.{key}"), &text)?;
                }
                SinkKind::Http(Box::new(http))
            }
            "kafka" => {
                let kafka: pgcdc_sinks::kafka::KafkaSinkConfig =
                    deserialize_at(&prefix, toml::Value::Table(own))?;
                let events_only = !common.events.is_empty() && common.tables.is_empty();
                kafka
                    .validate(&prefix, events_only)
                    .map_err(|e| ConfigError::Key {
                        key: e.key,
                        message: e.message,
                    })?;
                if let Some(src) = &kafka.key {
                    pgcdc_schema::mapping::JqProgram::compile(&format!("{prefix}.key"), src)?;
                }
                SinkKind::Kafka(Box::new(kafka))
            }
            other => {
                return Err(key_err(
                    format!("{prefix}.type"),
                    format!("unknown sink type {other:?}; expected one of {SINK_TYPES}"),
                ))
            }
        };
        Ok(SinkConfig {
            name: common.name,
            events: common.events,
            tables: common.tables,
            filter: common.filter,
            transform: common.transform,
            kind,
        })
    }
}

/// Deserializes `value`, naming errors by their key path under `prefix`.
fn deserialize_at<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: toml::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => "(top level)".to_string(),
            (true, _) => inner,
            (false, ".") => prefix.to_string(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        key_err(key, e.into_inner().to_string())
    })
}

impl Config {
    /// Reads, substitutes `${VAR}`, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path, &|name| std::env::var(name).ok())?;
        config.state.resolve_dir(path);
        Ok(config)
    }

    /// Parses config text; `env` looks up variables (injected for tests).
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        substitute_env(&mut value, &mut String::new(), env)?;
        let sinks = match value.as_table_mut().and_then(|t| t.remove("sink")) {
            None => Vec::new(),
            Some(toml::Value::Array(sinks)) => sinks,
            Some(_) => return Err(key_err("sink", "write sinks as [[sink]] tables")),
        };
        let mut config: Config = deserialize_at("", value)?;
        config.sink = sinks
            .into_iter()
            .enumerate()
            .map(|(i, v)| SinkConfig::from_toml(i, v))
            .collect::<Result<_, _>>()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.source
            .url
            .expose()
            .parse::<SourceUrl>()
            .map_err(|e| key_err("source.url", e.to_string()))?;
        self.state.url()?;
        if !self
            .state
            .schema
            .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            || self.state.schema.len() > 63
            || !self
                .state
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(key_err(
                "state.schema",
                format!(
                    "{:?}: use 1-63 lower-case letters, digits and '_', starting with a letter (default \"pgcdc\")",
                    self.state.schema
                ),
            ));
        }
        check_identifier("source.publication", &self.source.publication)?;
        check_identifier("source.slot", &self.source.slot)?;
        if self
            .source
            .slot
            .bytes()
            .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            return Err(key_err(
                "source.slot",
                "a replication slot name may contain only lower-case letters, digits and '_'",
            ));
        }
        if self.source.tables.is_empty() {
            return Err(key_err(
                "source.tables",
                "list at least one table to capture, e.g. tables = [\"public.permits\"]",
            ));
        }
        for (i, t) in self.source.tables.iter().enumerate() {
            TableName::parse(t).map_err(|m| key_err(format!("source.tables[{i}]"), m))?;
        }
        humantime::parse_duration(&self.source.heartbeat).map_err(|e| {
            key_err(
                "source.heartbeat",
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"10s\", or \"0s\" to turn it off",
                    self.source.heartbeat
                ),
            )
        })?;
        humantime::parse_duration(&self.journal.retention).map_err(|e| {
            key_err(
                "journal.retention",
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"7d\" or \"12h\"",
                    self.journal.retention
                ),
            )
        })?;
        humantime::parse_duration(&self.audit.retention).map_err(|e| {
            key_err(
                "audit.retention",
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"30d\" or \"12h\"",
                    self.audit.retention
                ),
            )
        })?;
        self.admin.validate()?;
        self.jq.validate()?;
        self.ha.validate(self.state.url.is_some())?;
        schedule::validate(self)?;
        if self.journal.max_bytes == Some(0) {
            return Err(key_err(
                "journal.max_bytes",
                "0 would pause the reader for good; give a size in bytes, e.g. 10000000000, or leave it out",
            ));
        }
        let source_tables = self.tables();
        let mut trigger_names = HashSet::new();
        for (i, t) in self.trigger.iter().enumerate() {
            if t.name.is_empty() || !trigger_names.insert(t.name.as_str()) {
                return Err(key_err(
                    format!("trigger[{i}].name"),
                    format!("{:?}: trigger names must be non-empty and unique", t.name),
                ));
            }
            let table = TableName::parse(&t.table)
                .map_err(|m| key_err(format!("trigger[{i}].table"), m))?;
            if !source_tables.contains(&table) {
                return Err(key_err(
                    format!("trigger[{i}].table"),
                    format!("table {table} is not in source.tables; add it there first"),
                ));
            }
        }
        for (i, t) in self.trigger.iter().enumerate() {
            pgcdc_schema::mapping::JqProgram::compile(&format!("trigger[{i}].when"), &t.when)?;
        }
        let mut names = HashSet::new();
        for (i, sink) in self.sink.iter().enumerate() {
            for (key, src) in [("filter", &sink.filter), ("transform", &sink.transform)] {
                if let Some(src) = src {
                    pgcdc_schema::mapping::JqProgram::compile(&format!("sink[{i}].{key}"), src)?;
                }
            }
            if sink.events.is_empty() && sink.tables.is_empty() && !self.trigger.is_empty() {
                tracing::debug!(sink = %sink.name, "sink selects neither events nor tables: it receives every change");
            }
            for (j, e) in sink.events.iter().enumerate() {
                if !trigger_names.contains(e.as_str()) {
                    return Err(key_err(
                        format!("sink[{i}].events[{j}]"),
                        format!(
                            "no [[trigger]] named {e:?}; defined triggers: {}",
                            if trigger_names.is_empty() {
                                "none".to_string()
                            } else {
                                self.trigger
                                    .iter()
                                    .map(|t| t.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        ),
                    ));
                }
            }
            let name = sink.name();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(key_err(
                    format!("sink[{i}].name"),
                    format!("{name:?} is not a valid sink name: use letters, digits, '_' and '-'"),
                ));
            }
            if !names.insert(name) {
                return Err(key_err(
                    format!("sink[{i}].name"),
                    format!("sink name {name:?} is used twice; sink names must be unique"),
                ));
            }
            for (j, t) in sink.tables().iter().enumerate() {
                let key = format!("sink[{i}].tables[{j}]");
                let table = TableName::parse(t).map_err(|m| key_err(&key, m))?;
                if !source_tables.contains(&table) {
                    return Err(key_err(
                        key,
                        format!("table {table} is not in source.tables; add it there first"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `Err` naming the configured sinks when none is called `sink`.
    pub fn check_sink(&self, sink: &str) -> Result<(), String> {
        if self.sink.iter().any(|s| s.name() == sink) {
            return Ok(());
        }
        let names: Vec<&str> = self.sink.iter().map(|s| s.name()).collect();
        Err(format!(
            "no sink named {sink:?} in the config; sinks: {}",
            names.join(", ")
        ))
    }

    /// The source tables, parsed.
    pub fn tables(&self) -> Vec<TableName> {
        self.source
            .tables
            .iter()
            .filter_map(|t| TableName::parse(t).ok())
            .collect()
    }

    /// The source URL, parsed (validated at load).
    pub fn source_url(&self) -> Result<SourceUrl, ConfigError> {
        self.source
            .url
            .expose()
            .parse::<SourceUrl>()
            .map_err(|e| key_err("source.url", e.to_string()))
    }
}

fn check_identifier(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 63 || v.contains('"') || v.contains('\0') {
        return Err(key_err(
            key,
            format!("{v:?} is not a valid Postgres identifier (1-63 characters, no '\"')"),
        ));
    }
    Ok(())
}

/// A `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema (default `public`).
    pub schema: String,
    /// Table.
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(s: &str) -> Result<TableName, String> {
        let bad = || {
            format!("{s:?} is not a table name: expected \"schema.table\", e.g. \"public.permits\"")
        };
        let (schema, table) = match s.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", s),
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') || s.contains('"') {
            return Err(bad());
        }
        Ok(TableName {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether the string at `path` is a jq program. Programs are taken verbatim: `env`
/// is removed from jq so that payloads never see the environment, and substituting
/// `${VAR}` into a program would hand it over all the same.
fn is_jq_program(path: &str) -> bool {
    let Some((head, last)) = path.rsplit_once('.') else {
        return false;
    };
    let table = head.split('[').next().unwrap_or(head);
    let indexed = head.ends_with(']') && !head[table.len()..].contains('.');
    indexed
        && match table {
            "trigger" => last == "when",
            "sink" => matches!(last, "filter" | "transform" | "key"),
            _ => false,
        }
}

/// Replaces `${VAR}` (and `${VAR:-default}`) in every string value except jq
/// programs; `$${` is a literal `${`.
fn substitute_env(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(_) if is_jq_program(path) => {}
        toml::Value::String(s) if s.contains("${") => {
            *s = expand(s, path, env)?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, env)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute_env(v, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(
    s: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            // `$${` is the escape for a literal `${`.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            key_err(
                path,
                "unterminated ${...}: write ${NAME} to use an environment variable, or $${ for a literal ${",
            )
        })?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(key_err(
                path,
                format!("${{{expr}}} is not a valid environment variable reference"),
            ));
        }
        match (env(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(key_err(
                    path,
                    format!("environment variable {name} is not set (referenced as ${{{name}}}); export it or write ${{{name}:-default}}"),
                ))
            }
            (Some(v), None) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
