//! Configuration: TOML with `${VAR}` substitution from the environment.
//!
//! Every error names the key path (`sink[1].tables`) and what is expected.
//! Errors here are definite: nothing connects before the config is valid.
//!
//! Values are parsed once, here, into their types: table names
//! ([`TableName`]), durations, cron schedules, compiled jq programs and URL/header
//! templates, the validated HTTP sink keys; the plan and the engine use these
//! and nothing later re-parses the text.
//!
//! `[[trigger]]`, `[[schedule]]` and `[[sink]]` entries are read one by one
//! (`trigger::TriggerConfig::from_toml` and the like) so their errors carry the
//! index (`sink[1].url`); the rest deserializes as one struct.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pgcdc_schema::TableName;
use serde::Deserialize;

use crate::replication::SourceUrl;

mod admin;
mod deliver;
mod duration;
mod env;
mod ha;
mod http;
mod jq;
mod schedule;
mod sink;
mod source;
mod source_tables;
mod state;
mod trigger;
pub(crate) use admin::AdminConfig;
pub(crate) use deliver::DeliverConfig;
pub(crate) use ha::{HaConfig, HaTimings};
pub(crate) use http::HttpSinkSpec;
pub(crate) use jq::JqConfig;
pub(crate) use schedule::{ScheduleConfig, ScheduledResync};
pub(crate) use sink::{SinkConfig, SinkKind};
pub(crate) use source::{OnSlotLost, SnapshotMode, SourceConfig};
pub(crate) use source_tables::TableEntry;
pub(crate) use state::{AuditConfig, JournalConfig, StateConfig};
pub(crate) use trigger::TriggerConfig;

/// A configuration problem, with the key path it is about.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
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

pub(crate) use pgcdc_schema::Secret;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The portal database.
    pub(crate) source: SourceConfig,
    /// Where the journal and cursors live.
    #[serde(default)]
    pub(crate) state: StateConfig,
    /// Journal retention.
    #[serde(default)]
    pub(crate) journal: JournalConfig,
    /// Delivery audit log.
    #[serde(default)]
    pub(crate) audit: AuditConfig,
    /// Admin HTTP API and `/metrics`.
    #[serde(default)]
    pub(crate) admin: AdminConfig,
    /// Named state transitions (parsed separately: their programs are compiled).
    #[serde(skip)]
    pub(crate) trigger: Vec<TriggerConfig>,
    /// Resyncs on a cron schedule (parsed separately: expression and zone are parsed once).
    #[serde(skip)]
    pub(crate) schedule: Vec<ScheduleConfig>,
    /// Bounds on jq evaluation.
    #[serde(default)]
    pub(crate) jq: JqConfig,
    /// High availability: one leader, fenced standbys.
    #[serde(default)]
    pub(crate) ha: HaConfig,
    /// Delivery destinations (parsed separately: common keys + per-type keys).
    #[serde(skip)]
    pub(crate) sink: Vec<SinkConfig>,
    /// `pgcdc deliver`: the Kafka topics and consumer group (instead of `[source]`).
    #[serde(default)]
    pub(crate) deliver: Option<DeliverConfig>,
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
        // toml appends "in `<key>`" to a message; the key is named already.
        let message = e.into_inner().to_string();
        let message = match message.trim_end().rsplit_once("\nin `") {
            Some((text, _)) => text.to_string(),
            None => message.trim_end().to_string(),
        };
        key_err(key, message)
    })
}

/// Removes the array of tables `[[name]]` from the top level (it is parsed entry by entry).
fn take_tables(value: &mut toml::Value, name: &str) -> Result<Vec<toml::Value>, ConfigError> {
    match value.as_table_mut().and_then(|t| t.remove(name)) {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(items)) => Ok(items),
        Some(_) => Err(key_err(name, format!("write {name}s as [[{name}]] tables"))),
    }
}

impl Config {
    /// Reads, substitutes `${VAR}`, parses and validates a config file.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path, &|name| std::env::var(name).ok())?;
        config.state.resolve_dir(path);
        Ok(config)
    }

    /// Parses config text; `env` looks up variables (injected for tests).
    pub(crate) fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        env::substitute_env(&mut value, &mut String::new(), env)?;
        let triggers = take_tables(&mut value, "trigger")?;
        let schedules = take_tables(&mut value, "schedule")?;
        let sinks = take_tables(&mut value, "sink")?;
        deliver_without_source(&mut value)?;
        let mut config: Config = deserialize_at("", value)?;
        config.trigger = triggers
            .into_iter()
            .enumerate()
            .map(|(i, v)| TriggerConfig::from_toml(i, v))
            .collect::<Result<_, _>>()?;
        config.schedule = schedules
            .into_iter()
            .enumerate()
            .map(|(i, v)| ScheduleConfig::from_toml(i, v))
            .collect::<Result<_, _>>()?;
        config.sink = sinks
            .into_iter()
            .enumerate()
            .map(|(i, v)| SinkConfig::from_toml(i, v))
            .collect::<Result<_, _>>()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that the types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(deliver) = &self.deliver {
            return self.validate_deliver(deliver);
        }
        self.source.validate()?;
        self.state.validate()?;
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
        self.validate_selection(self.tables())
    }

    /// Triggers and sinks, against the tables they may name.
    fn validate_selection(&self, source_tables: &[TableName]) -> Result<(), ConfigError> {
        let mut trigger_names = HashSet::new();
        for (i, t) in self.trigger.iter().enumerate() {
            if t.name.is_empty() || !trigger_names.insert(t.name.as_str()) {
                return Err(key_err(
                    format!("trigger[{i}].name"),
                    format!("{:?}: trigger names must be non-empty and unique", t.name),
                ));
            }
            if !source_tables.contains(&t.table) {
                return Err(key_err(
                    format!("trigger[{i}].table"),
                    format!(
                        "table {} is not in source.tables; add it there first",
                        t.table
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, sink) in self.sink.iter().enumerate() {
            sink.validate(i, &mut names, &self.trigger, source_tables)?;
        }
        Ok(())
    }

    /// A `pgcdc deliver` config: no source, no schedules, no HA; HTTP and stdout
    /// sinks; triggers and sinks may name any table (the topics decide which come).
    fn validate_deliver(&self, deliver: &DeliverConfig) -> Result<(), ConfigError> {
        deliver.validate()?;
        self.state.validate()?;
        self.admin.validate()?;
        self.jq.validate()?;
        if self.ha.enabled {
            return Err(key_err(
                "ha.enabled",
                "`pgcdc deliver` workers share the work through the Kafka consumer group; remove [ha]",
            ));
        }
        if !self.schedule.is_empty() {
            return Err(key_err(
                "schedule",
                "schedules resync a source table: they belong in the `pgcdc run` config, not beside [deliver]",
            ));
        }
        for (i, sink) in self.sink.iter().enumerate() {
            if matches!(sink.kind, SinkKind::Kafka(_)) {
                return Err(key_err(
                    format!("sink[{i}].type"),
                    "`pgcdc deliver` runs http and stdout sinks; a kafka sink belongs in the `pgcdc run` config",
                ));
            }
        }
        let mut tables: Vec<TableName> = self.trigger.iter().map(|t| t.table.clone()).collect();
        tables.extend(self.sink.iter().flat_map(|s| s.tables.iter().cloned()));
        self.validate_selection(&tables)
    }

    /// `Err` naming the configured sinks when none is called `sink`.
    pub(crate) fn check_sink(&self, sink: &str) -> Result<(), String> {
        if self.sink.iter().any(|s| s.name() == sink) {
            return Ok(());
        }
        let names: Vec<&str> = self.sink.iter().map(|s| s.name()).collect();
        Err(format!(
            "no sink named {sink:?} in the config; sinks: {}",
            names.join(", ")
        ))
    }

    /// The source tables.
    pub(crate) fn tables(&self) -> &[TableName] {
        self.source.tables.names()
    }

    /// The source URL, parsed (validated at load).
    pub(crate) fn source_url(&self) -> Result<SourceUrl, ConfigError> {
        self.require_source()?;
        self.source
            .url
            .expose()
            .parse::<SourceUrl>()
            .map_err(|e| key_err("source.url", e.to_string()))
    }
}

impl Config {
    /// Fails for a `pgcdc deliver` config: it reads Kafka, so commands about the
    /// source, its journal and checkpoints (`run`, `resync`, `checkpoint`,
    /// `teardown`) have nothing to act on.
    pub(crate) fn require_source(&self) -> Result<(), ConfigError> {
        if self.deliver.is_some() {
            return Err(key_err(
                "deliver",
                "this is a `pgcdc deliver` config ([deliver], no [source]): this command \
                 needs the config of the `pgcdc run` that captures the source",
            ));
        }
        Ok(())
    }
}

/// A `[deliver]` config has no `[source]` (it reads Kafka, not Postgres): an
/// empty one stands in for it, never used; both at once are refused.
fn deliver_without_source(value: &mut toml::Value) -> Result<(), ConfigError> {
    let Some(top) = value.as_table_mut() else {
        return Ok(());
    };
    if !top.contains_key("deliver") {
        return Ok(());
    }
    if top.contains_key("source") {
        return Err(key_err(
            "deliver",
            "a config has either [source] (for `pgcdc run`) or [deliver] (for `pgcdc deliver`), \
             not both: write the workers' config in a file of its own",
        ));
    }
    let mut source = toml::map::Map::new();
    source.insert("url".into(), toml::Value::String(String::new()));
    source.insert("tables".into(), toml::Value::Array(Vec::new()));
    top.insert("source".into(), toml::Value::Table(source));
    Ok(())
}

#[cfg(test)]
use env::is_jq_program;

#[cfg(test)]
mod tests;
