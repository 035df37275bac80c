//! Row state in SQLite (what to remember is decided in `journal::row_state`).

use rusqlite::{params, OptionalExtension, Transaction};

use crate::journal::row_state::{self, Lookup, Remember};
use crate::journal::OldTracking;
use pgcdc_schema::ChangeEvent;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS row_state (
    tbl TEXT NOT NULL,
    row_key TEXT NOT NULL,
    cols TEXT NOT NULL,
    PRIMARY KEY (tbl, row_key)
) WITHOUT ROWID;
";

/// Fills `event.old` from the remembered row and remembers the new values, inside the
/// writer's append transaction.
pub(super) fn apply(
    tx: &Transaction<'_>,
    tracking: &OldTracking,
    table: &str,
    event: &mut ChangeEvent,
) -> rusqlite::Result<()> {
    let Some(tracked) = tracking.get(table) else {
        return Ok(());
    };
    let row_key = match row_state::lookup(event) {
        Lookup::Nothing => return Ok(()),
        Lookup::ForgetTable => {
            tx.execute("DELETE FROM row_state WHERE tbl = ?1", [&table])?;
            return Ok(());
        }
        Lookup::Row(row_key) => row_key,
    };
    let remembered = tx
        .query_row(
            "SELECT cols FROM row_state WHERE tbl = ?1 AND row_key = ?2",
            params![table, row_key],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|s| row_state::parse(&s));
    let forget = |key: &str| {
        tx.execute(
            "DELETE FROM row_state WHERE tbl = ?1 AND row_key = ?2",
            params![table, key],
        )
    };
    match row_state::merge(tracked, row_key, remembered, event) {
        Remember::Nothing => {}
        Remember::Forget(key) => {
            forget(&key)?;
        }
        Remember::Put {
            row_key,
            cols,
            moved_from,
        } => {
            tx.execute(
                "INSERT INTO row_state(tbl, row_key, cols) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(tbl, row_key) DO UPDATE SET cols = excluded.cols",
                params![table, row_key, cols],
            )?;
            if let Some(old) = moved_from {
                forget(&old)?;
            }
        }
    }
    Ok(())
}
