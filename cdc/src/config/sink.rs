//! `[[sink]]`: the keys every sink has (name, selection, jq programs), then its
//! type's own keys, deserialized and validated by the sink's crate. The jq
//! programs are compiled here, once; the delivery plan uses them as they are.

use std::collections::HashSet;

use pgcdc_schema::mapping::JqProgram;
use pgcdc_schema::TableName;
use serde::Deserialize;

use super::{deserialize_at, key_err, ConfigError, HttpSinkSpec, TriggerConfig};

/// One `[[sink]]`: the keys every sink type has, plus its type's own.
#[derive(Debug)]
pub(crate) struct SinkConfig {
    /// Unique sink name (its cursor's key).
    pub(crate) name: String,
    /// Trigger names to deliver.
    pub(crate) events: Vec<String>,
    /// Tables to deliver (all changes of them).
    pub(crate) tables: Vec<TableName>,
    /// Whether the sink receives `schema` events (its tables' columns changed).
    pub(crate) schema_changes: bool,
    /// jq condition: only events for which it is true.
    #[cfg(test)]
    pub(crate) filter: Option<String>,
    /// jq program building what is sent (default: the native event).
    pub(crate) transform: Option<String>,
    /// `filter`, compiled.
    pub(crate) filter_program: Option<JqProgram>,
    /// `transform`, compiled.
    pub(crate) transform_program: Option<JqProgram>,
    /// Type-specific settings.
    pub(crate) kind: SinkKind,
}

/// A sink's type and its own settings.
#[derive(Debug)]
pub(crate) enum SinkKind {
    /// One JSON line per item on stdout.
    Stdout,
    /// Requests to an HTTP API.
    Http(Box<HttpSinkSpec>),
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
    tables: Vec<TableName>,
    #[serde(default)]
    schema_changes: bool,
    filter: Option<String>,
    transform: Option<String>,
}

const COMMON_SINK_KEYS: &[&str] = &[
    "name",
    "type",
    "events",
    "tables",
    "schema_changes",
    "filter",
    "transform",
];
const SINK_TYPES: &str = "\"stdout\", \"http\", \"kafka\"";

impl SinkConfig {
    /// The sink's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Tables this sink receives all changes of.
    #[cfg(test)]
    pub(crate) fn tables(&self) -> &[TableName] {
        &self.tables
    }

    pub(super) fn from_toml(i: usize, value: toml::Value) -> Result<SinkConfig, ConfigError> {
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
                let http = deserialize_at(&prefix, toml::Value::Table(own))?;
                SinkKind::Http(Box::new(HttpSinkSpec::new(&prefix, http)?))
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
                    JqProgram::compile(&format!("{prefix}.key"), src)?;
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
        let compile = |key: &str, src: &Option<String>| {
            src.as_deref()
                .map(|s| JqProgram::compile(&format!("{prefix}.{key}"), s))
                .transpose()
        };
        Ok(SinkConfig {
            filter_program: compile("filter", &common.filter)?,
            transform_program: compile("transform", &common.transform)?,
            name: common.name,
            events: common.events,
            tables: common.tables,
            schema_changes: common.schema_changes,
            #[cfg(test)]
            filter: common.filter,
            transform: common.transform,
            kind,
        })
    }

    /// Checks what needs the rest of the config: the name (unique among `names`),
    /// events naming defined triggers, tables among the captured ones.
    pub(super) fn validate<'a>(
        &'a self,
        i: usize,
        names: &mut HashSet<&'a str>,
        triggers: &[TriggerConfig],
        source_tables: &[TableName],
    ) -> Result<(), ConfigError> {
        if self.events.is_empty() && self.tables.is_empty() && !triggers.is_empty() {
            tracing::debug!(sink = %self.name, "sink selects neither events nor tables: it receives every change");
        }
        for (j, e) in self.events.iter().enumerate() {
            if !triggers.iter().any(|t| t.name == *e) {
                return Err(key_err(
                    format!("sink[{i}].events[{j}]"),
                    format!(
                        "no [[trigger]] named {e:?}; defined triggers: {}",
                        if triggers.is_empty() {
                            "none".to_string()
                        } else {
                            triggers
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
        }
        let name = self.name();
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
        for (j, table) in self.tables.iter().enumerate() {
            if !source_tables.contains(table) {
                return Err(key_err(
                    format!("sink[{i}].tables[{j}]"),
                    format!("table {table} is not in source.tables; add it there first"),
                ));
            }
        }
        Ok(())
    }
}
