//! Per-sink selection and mapping: which events a sink receives (tables,
//! triggers, filter) and what it sends for each (transform). Pure: no I/O.
//!
//! A runtime jq error is definite for the sink: the runner stops with the
//! event id and the jq message, and the cursor stays before the event, so a
//! fixed config re-processes it.

use std::collections::HashSet;
use std::sync::Arc;

use pgcdc_schema::mapping::{JqProgram, MappingError, OldColumns};
use pgcdc_schema::ChangeEvent;
use pgcdc_sinks::Outgoing;

use crate::config::{Config, SinkConfig, TableName};
use crate::journal::{OldTracking, Tracked};

/// A compiled `[[trigger]]`.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Event name.
    pub name: String,
    /// Watched table.
    pub table: TableName,
    /// Condition.
    pub when: JqProgram,
}

/// Compiles every trigger (errors name `trigger[i].when` and the position).
pub fn compile_triggers(config: &Config) -> Result<Vec<Trigger>, MappingError> {
    config
        .trigger
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok(Trigger {
                name: t.name.clone(),
                table: TableName::parse(&t.table).unwrap_or(TableName {
                    schema: String::new(),
                    table: t.table.clone(),
                }),
                when: JqProgram::compile(&format!("trigger[{i}].when"), &t.when)?,
            })
        })
        .collect()
}

/// Which `.old` columns the triggers read, per table (for the journal's row state).
pub fn old_tracking(triggers: &[Trigger]) -> OldTracking {
    let mut tracking = OldTracking::new();
    for t in triggers {
        let key = t.table.to_string();
        match t.when.old_columns() {
            OldColumns::None => {}
            OldColumns::All => {
                tracking.insert(key, Tracked::All);
            }
            OldColumns::Some(cols) => {
                match tracking.entry(key).or_insert(Tracked::Columns(Vec::new())) {
                    Tracked::All => {}
                    Tracked::Columns(existing) => {
                        for c in cols {
                            if !existing.contains(&c) {
                                existing.push(c);
                            }
                        }
                    }
                }
            }
        }
    }
    tracking
}

/// Which events a sink receives and what it sends for each.
#[derive(Debug, Clone, Default)]
pub struct SinkPlan {
    /// Tables whose every change is delivered.
    tables: HashSet<TableName>,
    /// Triggers the sink selects by name, in `[[trigger]]` order.
    triggers: Vec<Trigger>,
    /// Neither tables nor events given: every change.
    everything: bool,
    filter: Option<JqProgram>,
    transform: Option<JqProgram>,
    /// Without a transform, items carry no body (the sink renders from the event).
    no_native_body: bool,
}

/// What the plan made of one event.
#[derive(Debug)]
pub enum Mapped {
    /// Not for this sink.
    NotSelected,
    /// Selected, but the transform yielded nothing: recorded as skipped.
    Skipped(Arc<ChangeEvent>),
    /// Items to deliver.
    Items(Vec<Outgoing>),
}

impl SinkPlan {
    /// Builds the plan of sink `index` (jq errors name `sink[i].filter` / `.transform`).
    pub fn compile(
        index: usize,
        sink: &SinkConfig,
        triggers: &[Trigger],
    ) -> Result<SinkPlan, MappingError> {
        let compile = |key: &str, src: &Option<String>| {
            src.as_deref()
                .map(|s| JqProgram::compile(&format!("sink[{index}].{key}"), s))
                .transpose()
        };
        Ok(SinkPlan {
            tables: sink
                .tables
                .iter()
                .filter_map(|t| TableName::parse(t).ok())
                .collect(),
            triggers: triggers
                .iter()
                .filter(|t| sink.events.contains(&t.name))
                .cloned()
                .collect(),
            everything: sink.tables.is_empty() && sink.events.is_empty(),
            filter: compile("filter", &sink.filter)?,
            transform: compile("transform", &sink.transform)?,
            no_native_body: false,
        })
    }

    /// Whether the sink has a `transform` (else items' bodies are the native event).
    pub(crate) fn is_transformed(&self) -> bool {
        self.transform.is_some()
    }

    /// Whether items without a transform carry the native event as `body`.
    pub fn with_native_body(mut self, native: bool) -> SinkPlan {
        self.no_native_body = !native;
        self
    }

    /// A plan delivering every change unchanged (tests, stdout default).
    pub fn everything() -> SinkPlan {
        SinkPlan {
            everything: true,
            ..SinkPlan::default()
        }
    }

    /// Selects and maps one event of the table it names.
    pub fn map(&self, event: ChangeEvent) -> Result<Mapped, MappingError> {
        let table = event.qualified_table();
        self.map_as(event, &table)
    }

    /// Selects and maps one event of the captured table `table` (`schema.table` as
    /// `source.tables` names it; the journal's `tbl`). A renamed table's events carry
    /// the new name but are routed by that identity, so they reach the same sinks and
    /// triggers; a config already updated to the new name matches it too.
    pub fn map_as(&self, mut event: ChangeEvent, table: &str) -> Result<Mapped, MappingError> {
        let named = TableName {
            schema: event.schema.clone(),
            table: event.table.clone(),
        };
        let table = TableName::parse(table).unwrap_or_else(|_| named.clone());
        let ours = |t: &TableName| *t == table || *t == named;
        let mut selected = self.everything || self.tables.iter().any(ours);
        let mut input = None;
        for t in self.triggers.iter().filter(|t| ours(&t.table)) {
            let value =
                input.get_or_insert_with(|| serde_json::to_value(&event).unwrap_or_default());
            if t.when.test(value)? {
                event.trigger = Some(t.name.clone());
                selected = true;
                input = None;
                break;
            }
        }
        if !selected {
            return Ok(Mapped::NotSelected);
        }
        // Rows are ordered by identity, so one row's changes on both sides of a rename
        // stay in order.
        let row = row_key(&table, &event);
        if self.no_native_body && self.transform.is_none() && self.filter.is_none() {
            // The sink renders its own format from the event: no JSON value needed.
            return Ok(Mapped::Items(vec![Outgoing {
                row,
                event: Arc::new(event),
                body: serde_json::Value::Null,
                part: 0,
            }]));
        }
        let input = match input {
            Some(v) => v,
            None => serde_json::to_value(&event).unwrap_or_default(),
        };
        if let Some(filter) = &self.filter {
            if !filter.test(&input)? {
                return Ok(Mapped::NotSelected);
            }
        }
        let event = Arc::new(event);
        let bodies = match &self.transform {
            Some(t) => t.run(&input)?,
            None if self.no_native_body => vec![serde_json::Value::Null],
            None => vec![input],
        };
        if bodies.is_empty() {
            return Ok(Mapped::Skipped(event));
        }
        Ok(Mapped::Items(
            bodies
                .into_iter()
                .enumerate()
                .map(|(part, body)| Outgoing {
                    event: Arc::clone(&event),
                    body,
                    part: part as u32,
                    row: row.clone(),
                })
                .collect(),
        ))
    }
}

/// `schema.table` + key JSON: items with the same identity are delivered in order.
fn row_key(table: &TableName, event: &ChangeEvent) -> String {
    let key = event
        .key
        .as_ref()
        .map(|k| serde_json::to_string(k).unwrap_or_default())
        .unwrap_or_default();
    format!("{}.{}{}", table.schema, table.table, key)
}

#[cfg(test)]
mod tests;
