//! The keys the Postgres store knows of a table (see `StateStore::known_keys`).

use pgcdc_schema::event::Row;

use super::relations::relation_body;
use super::Pg;
use crate::journal::record::Decoder;
use crate::journal::{live_keys, JournalError};

/// Every key of `table` whose latest journaled event is not a delete or truncate, and
/// every key in its row state, each once. Records are decoded here (v2 records are
/// not JSON the database could look into); this runs only after a lost slot.
pub(super) fn known_keys(
    pg: &Pg,
    decoder: &std::cell::RefCell<Decoder>,
    table: &str,
) -> Result<Vec<Row>, JournalError> {
    let mut decoder = decoder.borrow_mut();
    let mut newest_first = Vec::new();
    // In pages, so that no more than one page of records is held at once.
    let mut before = i64::MAX;
    loop {
        let rows = pg.query(
            "SELECT pos, payload FROM events WHERE tbl = $1 AND pos < $2 ORDER BY pos DESC LIMIT 1000",
            &[&table, &before],
        )?;
        let Some(last) = rows.last() else { break };
        before = pg.get(last, 0)?;
        for row in &rows {
            let pos: i64 = pg.get(row, 0)?;
            let payload: &[u8] = pg.get(row, 1)?;
            let event = decoder
                .decode(payload, |id| relation_body(pg, id))
                .map_err(|e| e.at(pos))?;
            newest_first.push((event.op, event.key));
        }
    }
    let remembered = pg
        .query("SELECT row_key FROM row_state WHERE tbl = $1", &[&table])?
        .iter()
        .map(|r| pg.get::<String>(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(live_keys(newest_first, &remembered))
}
