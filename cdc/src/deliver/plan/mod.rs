//! Per-sink selection and mapping: which events a sink receives (tables,
//! triggers, filter) and what it sends for each (transform). Pure: no I/O.
//!
//! A runtime jq error, or an evaluation past a `[jq]` limit (time, outputs,
//! output size, memory, recursion depth: see `pgcdc_schema::mapping::sandbox`),
//! is definite for the sink: the runner stops with the event id, the
//! program's key and the message, and the cursor stays before the event, so a
//! fixed config (or a raised limit) re-processes it. A batch is mapped in
//! phases (every trigger test of the batch in one sandbox round trip, then
//! filters, then transforms), which gives the same outcome as event by event:
//! the first event in journal order that fails is the one reported.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use pgcdc_schema::mapping::{evaluate, JqCall, JqProgram, MappingError, OldColumns, Want};
use pgcdc_schema::{ChangeEvent, Op, TableName};
use pgcdc_sinks::Outgoing;

use crate::config::{Config, SinkConfig};
use crate::journal::{OldTracking, Tracked};

/// A compiled `[[trigger]]`.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    /// Event name.
    pub(crate) name: String,
    /// Watched table.
    pub(crate) table: TableName,
    /// Condition.
    pub(crate) when: JqProgram,
    /// Columns the condition reads that the table no longer has, as last said in
    /// the log: shared by every sink's copy, so a schema change is reported once.
    missing: Arc<Mutex<BTreeSet<String>>>,
}

/// Every trigger, with the condition the config compiled at load.
pub(crate) fn triggers(config: &Config) -> Vec<Trigger> {
    config
        .trigger
        .iter()
        .map(|t| Trigger {
            name: t.name.clone(),
            table: t.table.clone(),
            when: t.program.clone(),
            missing: Arc::default(),
        })
        .collect()
}

impl Trigger {
    /// On a schema event of the trigger's table: warns, once per change, when the
    /// condition reads a column the table no longer has (dropped or renamed). The
    /// condition then sees null there, for every event after it; saying so per
    /// event would flood the log.
    fn check_columns(&self, event: &ChangeEvent) {
        let (Some(columns), OldColumns::Some(reads)) = (&event.columns, self.when.row_columns())
        else {
            return;
        };
        let missing: BTreeSet<String> = reads
            .into_iter()
            .filter(|r| !columns.iter().any(|c| c.name == *r))
            .collect();
        let Ok(mut said) = self.missing.lock() else {
            return;
        };
        let new: Vec<&String> = missing.difference(&said).collect();
        if !new.is_empty() {
            tracing::warn!(trigger = %self.name, table = %self.table, columns = ?new, lsn = %event.lsn,
                "the trigger's condition reads columns the table no longer has (dropped or renamed): \
                 it sees null for them from here on; update the trigger's `when`");
        }
        *said = missing;
    }
}

/// Which `.old` columns the triggers read, per table (for the journal's row state).
pub(crate) fn old_tracking(triggers: &[Trigger]) -> OldTracking {
    let mut tracking = OldTracking::new();
    for t in triggers {
        let key = t.table.to_string();
        match t.when.old_columns() {
            OldColumns::None => {}
            OldColumns::All => {
                tracking.insert(key, Tracked::All { fill_toast: false });
            }
            OldColumns::Some(cols) => {
                match tracking.entry(key).or_insert(Tracked::Columns(Vec::new())) {
                    Tracked::All { .. } => {}
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
pub(crate) struct SinkPlan {
    /// Tables whose every change is delivered.
    tables: HashSet<TableName>,
    /// Triggers the sink selects by name, in `[[trigger]]` order.
    triggers: Vec<Trigger>,
    /// Neither tables nor events given: every change.
    everything: bool,
    /// `schema_changes`: schema events of the sink's tables are delivered too.
    schema_changes: bool,
    filter: Option<JqProgram>,
    transform: Option<JqProgram>,
    /// Without a transform, items carry no body (the sink renders from the event).
    no_native_body: bool,
}

/// What the plan made of one event.
#[derive(Debug)]
pub(crate) enum Mapped {
    /// Not for this sink.
    NotSelected,
    /// Selected, but the transform yielded nothing: recorded as skipped.
    Skipped(Arc<ChangeEvent>),
    /// Items to deliver.
    Items(Vec<Outgoing>),
}

impl SinkPlan {
    /// The plan of `sink`, with the programs the config compiled at load (their
    /// runtime errors name `sink[i].filter` / `.transform`).
    pub(crate) fn new(sink: &SinkConfig, triggers: &[Trigger]) -> SinkPlan {
        SinkPlan {
            tables: sink.tables.iter().cloned().collect(),
            triggers: triggers
                .iter()
                .filter(|t| sink.events.contains(&t.name))
                .cloned()
                .collect(),
            everything: sink.tables.is_empty() && sink.events.is_empty(),
            schema_changes: sink.schema_changes,
            filter: sink.filter_program.clone(),
            transform: sink.transform_program.clone(),
            no_native_body: false,
        }
    }

    /// Whether the sink has a `transform` (else items' bodies are the native event).
    pub(crate) fn is_transformed(&self) -> bool {
        self.transform.is_some()
    }

    /// Whether items without a transform carry the native event as `body`.
    pub(crate) fn with_native_body(mut self, native: bool) -> SinkPlan {
        self.no_native_body = !native;
        self
    }

    /// Whether mapping runs any jq program (trigger, filter or transform).
    pub(crate) fn runs_jq(&self) -> bool {
        !self.triggers.is_empty() || self.filter.is_some() || self.transform.is_some()
    }

    /// Selects and maps one event of the table it names.
    #[cfg(test)]
    pub(crate) fn map(&self, event: ChangeEvent) -> Result<Mapped, MappingError> {
        self.map_batch(vec![event])
            .pop()
            .unwrap_or(Ok(Mapped::NotSelected))
    }

    /// Selects and maps one event of the captured table `table` (`schema.table` as
    /// `source.tables` names it; the journal's `tbl`). A renamed table's events carry
    /// the new name but are routed by that identity, so they reach the same sinks and
    /// triggers; a config already updated to the new name matches it too.
    #[cfg(test)]
    pub(crate) fn map_as(&self, event: ChangeEvent, table: &str) -> Result<Mapped, MappingError> {
        self.map_batch_as(vec![(Arc::new(event), table.into())])
            .pop()
            .unwrap_or(Ok(Mapped::NotSelected))
    }

    /// [`SinkPlan::map_batch_as`] for events routed by the table they name.
    #[cfg(test)]
    pub(crate) fn map_batch(&self, events: Vec<ChangeEvent>) -> Vec<Result<Mapped, MappingError>> {
        self.map_batch_as(
            events
                .into_iter()
                .map(|e| {
                    let table = e.qualified_table().into();
                    (Arc::new(e), table)
                })
                .collect(),
        )
    }

    /// Selects and maps a batch of (event, captured table), one result per event, in
    /// order. Blocks while jq runs (in the sandbox, up to its time limit per program
    /// run): call it off the async executor.
    pub(crate) fn map_batch_as(
        &self,
        events: Vec<(Arc<ChangeEvent>, pgcdc_schema::event::Name)>,
    ) -> Vec<Result<Mapped, MappingError>> {
        let mut slots: Vec<Slot<'_>> = events
            .into_iter()
            .map(|(event, table)| {
                // The captured table (what routes) and the name the event carries
                // (after a rename): a trigger or table of either is the event's.
                let named = (&*event.schema, &*event.table);
                let table = TableName::split(&table).unwrap_or(named);
                let ours = |t: &TableName| {
                    let t = (t.schema.as_str(), t.table.as_str());
                    t == table || t == named
                };
                // A schema event is not a row change: no trigger condition applies; it
                // goes to the sinks that ask for it and receive something of its table.
                let schema = event.op == Op::Schema;
                let candidates: Vec<&Trigger> = if schema {
                    for t in self.triggers.iter().filter(|t| ours(&t.table)) {
                        t.check_columns(&event);
                    }
                    Vec::new()
                } else {
                    self.triggers.iter().filter(|t| ours(&t.table)).collect()
                };
                let selected = if schema {
                    self.schema_changes
                        && (self.everything
                            || self.tables.iter().any(ours)
                            || self.triggers.iter().any(|t| ours(&t.table)))
                } else {
                    self.everything || self.tables.iter().any(ours)
                };
                // Rows are ordered by identity, so one row's changes on both sides of a
                // rename stay in order.
                let row = row_key(table, &event);
                Slot {
                    selected,
                    input: (!candidates.is_empty()).then(|| native(&event)),
                    candidates,
                    event,
                    row,
                    matched: false,
                    outcome: None,
                }
            })
            .collect();
        // The first trigger (in `[[trigger]]` order) whose condition holds names the event.
        let rounds = slots.iter().map(|s| s.candidates.len()).max().unwrap_or(0);
        for round in 0..rounds {
            let asked: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].open() && !slots[i].matched)
                .filter(|&i| round < slots[i].candidates.len())
                .collect();
            let results = run(&slots, &asked, |s| (&s.candidates[round].when, Want::Truth));
            for (i, result) in asked.into_iter().zip(results) {
                let slot = &mut slots[i];
                match result {
                    Ok(outputs) if truth(&outputs) => {
                        // Shared with the journaled events kept in memory: a copy.
                        Arc::make_mut(&mut slot.event).trigger =
                            Some(slot.candidates[round].name.clone());
                        slot.matched = true;
                        slot.selected = true;
                        // `.trigger` is part of what filter and transform see.
                        slot.input = None;
                    }
                    Ok(_) => {}
                    Err(e) => slot.outcome = Some(Err(e)),
                }
            }
        }
        // Without jq after the triggers, a sink that renders its own format from
        // the event needs no JSON value.
        let needs_input =
            !(self.no_native_body && self.transform.is_none() && self.filter.is_none());
        for slot in slots.iter_mut().filter(|s| s.outcome.is_none()) {
            if !slot.selected {
                slot.outcome = Some(Ok(Mapped::NotSelected));
            } else if needs_input && slot.input.is_none() {
                slot.input = Some(native(&slot.event));
            }
        }
        if let Some(filter) = &self.filter {
            let asked: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].open()).collect();
            let results = run(&slots, &asked, |_| (filter, Want::Truth));
            for (i, result) in asked.into_iter().zip(results) {
                match result {
                    Ok(outputs) if truth(&outputs) => {}
                    Ok(_) => slots[i].outcome = Some(Ok(Mapped::NotSelected)),
                    Err(e) => slots[i].outcome = Some(Err(e)),
                }
            }
        }
        let asked: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].open()).collect();
        let mut bodies: Vec<Option<Result<Vec<serde_json::Value>, MappingError>>> =
            (0..slots.len()).map(|_| None).collect();
        if let Some(transform) = &self.transform {
            let results = run(&slots, &asked, |_| (transform, Want::All));
            for (i, result) in asked.iter().zip(results) {
                bodies[*i] = Some(result);
            }
        }
        slots
            .into_iter()
            .zip(bodies)
            .map(|(slot, body)| {
                if let Some(outcome) = slot.outcome {
                    return outcome;
                }
                let bodies = match body {
                    Some(result) => result?,
                    None if self.no_native_body => vec![serde_json::Value::Null],
                    None => vec![slot.input.unwrap_or_default()],
                };
                Ok(items(slot.event, slot.row, bodies))
            })
            .collect()
    }
}

/// One event of a batch on its way through the plan.
struct Slot<'p> {
    event: Arc<ChangeEvent>,
    /// Captured table + key: the order key of the event's items.
    row: String,
    /// Triggers watching the event's table.
    candidates: Vec<&'p Trigger>,
    /// A trigger's condition held.
    matched: bool,
    selected: bool,
    /// The native event as jq sees it, once needed.
    input: Option<serde_json::Value>,
    /// Decided: not selected, mapped without jq, or failed.
    outcome: Option<Result<Mapped, MappingError>>,
}

impl Slot<'_> {
    fn open(&self) -> bool {
        self.outcome.is_none()
    }
}

/// Runs one program per asked slot, in one sandbox round trip.
fn run<'p>(
    slots: &[Slot<'p>],
    asked: &[usize],
    program: impl Fn(&Slot<'p>) -> (&'p JqProgram, Want),
) -> Vec<Result<Vec<serde_json::Value>, MappingError>> {
    const NULL: serde_json::Value = serde_json::Value::Null;
    let calls: Vec<JqCall<'_>> = asked
        .iter()
        .map(|&i| {
            let slot = &slots[i];
            let (program, want) = program(slot);
            JqCall {
                program,
                input: slot.input.as_ref().unwrap_or(&NULL),
                want,
            }
        })
        .collect();
    evaluate(&calls)
}

fn truth(outputs: &[serde_json::Value]) -> bool {
    matches!(outputs.first(), Some(serde_json::Value::Bool(true)))
}

/// The native event, as filters and transforms see it.
fn native(event: &ChangeEvent) -> serde_json::Value {
    serde_json::to_value(event).unwrap_or_default()
}

/// The items of one event: one per body (none: the event is skipped).
fn items(event: Arc<ChangeEvent>, row: String, bodies: Vec<serde_json::Value>) -> Mapped {
    if bodies.is_empty() {
        return Mapped::Skipped(event);
    }
    Mapped::Items(
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
    )
}

/// `schema.table` + key JSON: items with the same identity are delivered in order.
fn row_key((schema, table): (&str, &str), event: &ChangeEvent) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(schema.as_bytes());
    out.push(b'.');
    out.extend_from_slice(table.as_bytes());
    if let Some(key) = &event.key {
        let prefix = out.len();
        if serde_json::to_writer(&mut out, key).is_err() {
            out.truncate(prefix);
        }
    }
    // JSON and the names are UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

pub mod sandbox;
#[cfg(test)]
mod tests;
