//! `[[trigger]]`: named state transitions, a jq condition over one table's
//! events. The condition is compiled here, once, and the delivery plan uses
//! the compiled program.

use pgcdc_schema::mapping::JqProgram;
use pgcdc_schema::TableName;
use serde::Deserialize;

use super::{deserialize_at, ConfigError};

/// One `[[trigger]]`: a named state transition.
#[derive(Debug, Clone)]
pub(crate) struct TriggerConfig {
    /// Event name sinks select with `events = [...]`.
    pub(crate) name: String,
    /// The table it watches, `schema.table`.
    pub(crate) table: TableName,
    /// jq condition over the native event, as written.
    #[cfg(test)]
    pub(crate) when: String,
    /// `when`, compiled (errors name `trigger[i].when`).
    pub(crate) program: JqProgram,
}

/// The keys of a `[[trigger]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerToml {
    name: String,
    table: TableName,
    when: String,
}

impl TriggerConfig {
    pub(super) fn from_toml(i: usize, value: toml::Value) -> Result<TriggerConfig, ConfigError> {
        let t: TriggerToml = deserialize_at(&format!("trigger[{i}]"), value)?;
        let program = JqProgram::compile(&format!("trigger[{i}].when"), &t.when)?;
        Ok(TriggerConfig {
            name: t.name,
            table: t.table,
            #[cfg(test)]
            when: t.when,
            program,
        })
    }
}
