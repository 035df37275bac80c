//! The keys the SQLite store knows of a table (see `StateStore::known_keys`).

use pgcdc_schema::event::Row;
use rusqlite::params;

use super::{blocks, damaged_block, record_bytes, relation_body, SqliteStore};
use crate::journal::{live_keys, JournalError};

/// Every key of `table` whose latest journaled event is not a delete or truncate, and
/// every key in its row state, each once. Records are decoded here (v2 records are
/// not JSON the database could look into); this runs only after a lost slot.
pub(super) fn known_keys(store: &SqliteStore, table: &str) -> Result<Vec<Row>, JournalError> {
    let err = |e| store.sqlite(e);
    let mut stmt = store
        .conn
        .prepare("SELECT first_pos, body FROM event_blocks ORDER BY last_pos DESC")
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut decoder = store.decoder.borrow_mut();
    let mut newest_first = Vec::new();
    let mut buf = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let first: i64 = row.get(0).map_err(err)?;
        let body = record_bytes(row.get_ref(1).map_err(err)?).map_err(err)?;
        let mut block = Vec::new();
        for stored in blocks::events(first, body, &mut buf) {
            let stored = stored.map_err(|(pos, m)| damaged_block(pos, m))?;
            if stored.table != table {
                continue;
            }
            let event = decoder
                .decode(stored.record, |id| {
                    relation_body(&store.conn, id).map_err(err)
                })
                .map_err(|e| e.at(stored.pos))?;
            block.push((event.op, event.key));
        }
        newest_first.extend(block.into_iter().rev());
    }
    let mut stmt = store
        .conn
        .prepare("SELECT row_key FROM row_state WHERE tbl = ?1")
        .map_err(err)?;
    let remembered = stmt
        .query_map(params![table], |r| r.get::<_, String>(0))
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok(live_keys(newest_first, &remembered))
}
