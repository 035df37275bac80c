//! Last-seen row values, so that triggers can compare `.old` with `.new` on
//! tables with the default REPLICA IDENTITY, where Postgres sends no old row.
//!
//! Kept only for the columns triggers read from `.old` (plus the key), per
//! table, in the store, and updated in the same transaction as the event is
//! appended: a replayed change finds exactly the state it found the first time.
//! This module decides what to remember; each store keeps it.

use std::collections::HashMap;

use pgcdc_schema::event::Row;
use pgcdc_schema::{ChangeEvent, Op};

/// Which columns of a table to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// Every column; with `fill_toast` (`source.fill_toast`), an unchanged TOAST value
    /// that Postgres did not send is filled into the event from the remembered row.
    All { fill_toast: bool },
    /// These columns (the key is always kept).
    Columns(Vec<String>),
}

/// Tracked columns per `schema.table`.
pub type OldTracking = HashMap<String, Tracked>;

/// Which remembered row a change needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// None: the change has no key (nothing to remember).
    Nothing,
    /// A truncate: forget every row of the table.
    ForgetTable,
    /// The row under this key (its JSON).
    Row(String),
}

/// What to store after a change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Remember {
    /// Nothing changes.
    Nothing,
    /// Forget the row under this key.
    Forget(String),
    /// Remember `cols` (JSON) under `row_key`; forget the row under `moved_from` (a key change).
    Put {
        row_key: String,
        cols: String,
        moved_from: Option<String>,
    },
}

/// Which remembered row `event` needs.
pub(crate) fn lookup(event: &ChangeEvent) -> Lookup {
    if event.op == Op::Truncate {
        return Lookup::ForgetTable;
    }
    match &event.key {
        Some(key) => Lookup::Row(json(key)),
        None => Lookup::Nothing,
    }
}

/// Marks the `tables` of `source.fill_toast`: every column remembered, unchanged TOAST
/// values filled in.
pub fn fill_toast_of<'a>(
    tracking: &mut OldTracking,
    tables: impl IntoIterator<Item = &'a pgcdc_schema::TableName>,
) {
    for t in tables {
        tracking.insert(t.to_string(), Tracked::All { fill_toast: true });
    }
}

/// Puts the remembered value of each unchanged TOAST column into `new` (and into
/// `old` where Postgres left it out: unchanged, it was the same before), in the
/// column order of the remembered row; `unchanged_toast` keeps only what was never
/// seen (a row first met by this change, with no snapshot).
fn fill_toast(prev: &Row, event: &mut ChangeEvent) {
    let Some(new) = event.new.as_mut() else {
        return;
    };
    let mut missing = Vec::new();
    let mut filled = false;
    for c in std::mem::take(&mut event.unchanged_toast) {
        match prev.get(&c) {
            Some(v) => {
                if let Some(old) = event.old.as_mut() {
                    old.insert_if_absent(c.as_str().into(), || v.clone());
                }
                new.insert(c.as_str().into(), v.clone());
                filled = true;
            }
            None => missing.push(c),
        }
    }
    event.unchanged_toast = missing;
    if filled {
        // A filled column goes back to its place: the remembered row's order, then any
        // column it did not have (added since).
        let mut ordered = Row::new();
        for c in prev.keys() {
            if let Some(v) = new.remove(c) {
                ordered.insert(c.clone(), v);
            }
        }
        ordered.append(new);
        *new = ordered;
    }
}

fn json(row: &Row) -> String {
    serde_json::to_string(row).unwrap_or_default()
}

/// Parses a remembered row as stored (None: unreadable, treated as never seen).
pub(crate) fn parse(stored: &str) -> Option<Row> {
    pgcdc_schema::event::from_stored_json(stored).ok()
}

fn pick(tracked: &Tracked, row: &Row, key: &Row) -> Row {
    match tracked {
        Tracked::All { .. } => row.clone(),
        Tracked::Columns(cols) => {
            let mut out = key.clone();
            for c in cols {
                if let Some(v) = row.get(c) {
                    out.insert(c.as_str().into(), v.clone());
                }
            }
            out
        }
    }
}

/// Fills `event.old` from the `remembered` row when Postgres sent none (or only the
/// key), and says what to remember of the new values. For a change that [`lookup`]
/// found under `row_key`.
pub(crate) fn merge(
    tracked: &Tracked,
    row_key: String,
    remembered: Option<Row>,
    event: &mut ChangeEvent,
) -> Remember {
    let Some(key) = event.key.clone() else {
        return Remember::Nothing;
    };
    // Postgres' old row is complete with REPLICA IDENTITY FULL; otherwise it is absent
    // (update) or the key only (delete, key change): merge what we remember under it.
    let full_old_sent = event
        .old
        .as_ref()
        .is_some_and(|old| old.keys().any(|c| !key.contains_key(c)));
    if matches!(event.op, Op::Update | Op::Delete) && !full_old_sent {
        if let Some(mut remembered) = remembered.clone() {
            if let Some(sent) = &event.old {
                for (k, v) in sent {
                    remembered.insert(k.clone(), v.clone());
                }
            }
            event.old = Some(remembered);
        }
    }

    if matches!(tracked, Tracked::All { fill_toast: true }) {
        if let Some(prev) = &remembered {
            fill_toast(prev, event);
        }
    }

    match (event.op, &event.new) {
        (Op::Delete, _) => Remember::Forget(row_key),
        (_, Some(new)) => {
            let mut values = pick(tracked, new, &key);
            // Unchanged TOAST columns keep their remembered value.
            if let Some(prev) = &remembered {
                for c in &event.unchanged_toast {
                    if let Some(v) = prev.get(c) {
                        values.insert(c.as_str().into(), v.clone());
                    }
                }
            }
            // A key change moves the row: forget it under its old key.
            let moved_from = event.old.as_ref().and_then(|old| {
                let old_key: Row = key
                    .keys()
                    .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                (old_key.len() == key.len() && old_key != key).then(|| json(&old_key))
            });
            Remember::Put {
                row_key,
                cols: json(&values),
                moved_from,
            }
        }
        _ => Remember::Nothing,
    }
}
