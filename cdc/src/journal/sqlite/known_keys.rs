//! The keys the SQLite store knows of a table (see `StateStore::known_keys`).

use pgcdc_schema::event::Row;
use rusqlite::{params, Connection};

/// Every key of `table` whose latest journaled event is not a delete or truncate, and
/// every key in its row state, each once.
pub(super) fn known_keys(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare(
        "SELECT k FROM ( \
           SELECT json_extract(payload, '$.key') AS k, json_extract(payload, '$.op') AS op, \
                  ROW_NUMBER() OVER (PARTITION BY json_extract(payload, '$.key') ORDER BY pos DESC) AS rn \
           FROM events WHERE tbl = ?1) \
         WHERE rn = 1 AND op NOT IN ('delete', 'truncate') AND k IS NOT NULL \
         UNION SELECT row_key FROM row_state WHERE tbl = ?1",
    )?;
    let texts = stmt
        .query_map(params![table], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut keys: Vec<Row> = texts
        .iter()
        .filter_map(|t| serde_json::from_str::<Row>(t).ok())
        .collect();
    // Events and row state may spell one key with its members in another order.
    keys.sort_by_key(|k| serde_json::to_string(k).unwrap_or_default());
    keys.dedup();
    Ok(keys)
}
