//! The stored relation versions (see `journal::record`): read one by id for a
//! decoder, or all of them for the writer's encoder.

use super::Pg;
use crate::journal::record::Relation;
use crate::journal::JournalError;

/// The stored body of relation version `id` (see `journal::record`).
pub(super) fn relation_body(pg: &Pg, id: i64) -> Result<Option<String>, JournalError> {
    match pg.query_opt("SELECT body FROM relations WHERE id = $1", &[&id])? {
        Some(row) => Ok(Some(pg.get(&row, 0)?)),
        None => Ok(None),
    }
}

/// Every stored relation version, for the writer's encoder.
pub(super) fn relations(pg: &Pg) -> Result<Vec<(i64, Relation)>, JournalError> {
    let rows = pg.query("SELECT id, body FROM relations ORDER BY id", &[])?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = pg.get(row, 0)?;
        let body: String = pg.get(row, 1)?;
        let rel = Relation::from_stored(&body).map_err(|e| {
            pg.corrupt(format!(
                "relation version {id} cannot be read ({e}); the state is damaged"
            ))
        })?;
        out.push((id, rel));
    }
    Ok(out)
}
