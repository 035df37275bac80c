//! Last-seen row values, so that triggers can compare `.old` with `.new` on
//! tables with the default REPLICA IDENTITY, where Postgres sends no old row.
//!
//! Kept only for the columns triggers read from `.old` (plus the key), per
//! table, in the journal file, and updated in the same transaction as the
//! event is appended: a replayed change finds exactly the state it found the
//! first time.

use std::collections::HashMap;

use pgcdc_schema::event::Row;
use pgcdc_schema::{ChangeEvent, Op};
use rusqlite::{params, OptionalExtension, Transaction};

/// Which columns of a table to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// Every column.
    All,
    /// These columns (the key is always kept).
    Columns(Vec<String>),
}

/// Tracked columns per `schema.table`.
pub type OldTracking = HashMap<String, Tracked>;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS row_state (
    tbl TEXT NOT NULL,
    row_key TEXT NOT NULL,
    cols TEXT NOT NULL,
    PRIMARY KEY (tbl, row_key)
) WITHOUT ROWID;
";

fn pick(tracked: &Tracked, row: &Row, key: &Row) -> Row {
    match tracked {
        Tracked::All => row.clone(),
        Tracked::Columns(cols) => {
            let mut out = key.clone();
            for c in cols {
                if let Some(v) = row.get(c) {
                    out.insert(c.clone(), v.clone());
                }
            }
            out
        }
    }
}

/// Fills `event.old` from the remembered row when Postgres sent none (or only the key),
/// then remembers the new values.
pub(super) fn apply(
    tx: &Transaction<'_>,
    tracking: &OldTracking,
    table: &str,
    event: &mut ChangeEvent,
) -> rusqlite::Result<()> {
    let Some(tracked) = tracking.get(table) else {
        return Ok(());
    };
    if event.op == Op::Truncate {
        tx.execute("DELETE FROM row_state WHERE tbl = ?1", [&table])?;
        return Ok(());
    }
    let Some(key) = event.key.clone() else {
        return Ok(());
    };
    let row_key = serde_json::to_string(&key).unwrap_or_default();
    let remembered: Option<Row> = tx
        .query_row(
            "SELECT cols FROM row_state WHERE tbl = ?1 AND row_key = ?2",
            params![table, row_key],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|s| pgcdc_schema::event::from_stored_json(&s).ok());

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

    match (event.op, &event.new) {
        (Op::Delete, _) => {
            tx.execute(
                "DELETE FROM row_state WHERE tbl = ?1 AND row_key = ?2",
                params![table, row_key],
            )?;
        }
        (_, Some(new)) => {
            let mut values = pick(tracked, new, &key);
            // Unchanged TOAST columns keep their remembered value.
            if let Some(prev) = &remembered {
                for c in &event.unchanged_toast {
                    if let Some(v) = prev.get(c) {
                        values.insert(c.clone(), v.clone());
                    }
                }
            }
            tx.execute(
                "INSERT INTO row_state(tbl, row_key, cols) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(tbl, row_key) DO UPDATE SET cols = excluded.cols",
                params![
                    table,
                    row_key,
                    serde_json::to_string(&values).unwrap_or_default()
                ],
            )?;
            // A key change moves the row: forget it under its old key.
            if let Some(old) = &event.old {
                let old_key: Row = key
                    .keys()
                    .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                if old_key.len() == key.len() && old_key != key {
                    let old_row_key = serde_json::to_string(&old_key).unwrap_or_default();
                    tx.execute(
                        "DELETE FROM row_state WHERE tbl = ?1 AND row_key = ?2",
                        params![table, old_row_key],
                    )?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}
