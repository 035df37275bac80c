//! The keys the Postgres store knows of a table (see `StateStore::known_keys`).

use pgcdc_schema::event::Row;

use super::Pg;
use crate::journal::JournalError;

/// Every key of `table` whose latest journaled event is not a delete or truncate, and
/// every key in its row state, each once (jsonb compares keys whatever the order of
/// their members).
pub(super) fn known_keys(pg: &Pg, table: &str) -> Result<Vec<Row>, JournalError> {
    let rows = pg.query(
        "SELECT k::text FROM ( \
           SELECT DISTINCT ON (e.k) e.k, e.op FROM ( \
             SELECT convert_from(payload, 'UTF8')::jsonb -> 'key' AS k, \
                    convert_from(payload, 'UTF8')::jsonb ->> 'op' AS op, pos \
             FROM events WHERE tbl = $1) e \
           WHERE jsonb_typeof(e.k) = 'object' \
           ORDER BY e.k, e.pos DESC) latest \
         WHERE op IS NULL OR op NOT IN ('delete', 'truncate') \
         UNION SELECT row_key::jsonb::text FROM row_state WHERE tbl = $1",
        &[&table],
    )?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        let text: String = pg.get(r, 0)?;
        if let Ok(key) = serde_json::from_str::<Row>(&text) {
            keys.push(key);
        }
    }
    keys.sort_by_key(|k| serde_json::to_string(k).unwrap_or_default());
    keys.dedup();
    Ok(keys)
}
