//! The keys pgcdc knows of a table: those whose latest journaled event is not a delete,
//! and those in the row state. After a lost slot they are checked against the table:
//! a key that is gone was deleted while no slot held the changes.

use pgcdc_schema::event::Row;
use rusqlite::params;

use super::{JournalError, JournalReader};

impl JournalReader {
    /// Every key of `table` the journal (events, row state) knows to be live, each once.
    pub fn known_keys(&self, table: &str) -> Result<Vec<Row>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT k FROM ( \
                   SELECT json_extract(payload, '$.key') AS k, json_extract(payload, '$.op') AS op, \
                          ROW_NUMBER() OVER (PARTITION BY json_extract(payload, '$.key') ORDER BY pos DESC) AS rn \
                   FROM events WHERE tbl = ?1) \
                 WHERE rn = 1 AND op NOT IN ('delete', 'truncate') AND k IS NOT NULL \
                 UNION SELECT row_key FROM row_state WHERE tbl = ?1",
            )
            .map_err(|e| self.sqlite(e))?;
        let texts = stmt
            .query_map(params![table], |r| r.get::<_, String>(0))
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sqlite(e))?;
        let mut keys: Vec<Row> = texts
            .iter()
            .filter_map(|t| serde_json::from_str::<Row>(t).ok())
            .collect();
        // Events and row state may spell one key with its members in another order.
        keys.sort_by_key(|k| serde_json::to_string(k).unwrap_or_default());
        keys.dedup();
        Ok(keys)
    }
}
