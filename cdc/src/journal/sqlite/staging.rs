//! The staging of streamed transactions (see `journal::staging`), in
//! `staging.db` beside `journal.db`: `journal.max_bytes` measures the journal's
//! file, and staged rows, freed only by reading on to the transaction's end,
//! must never make it pause the reader that would free them.

use std::path::{Path, PathBuf};

use pgcdc_schema::Lsn;
use rusqlite::{params, Connection};

use super::{connect, store_error, Durability};
use crate::journal::{JournalError, StagedMessage, StagingOp};

/// File name of the staging inside `state.dir`.
const STAGING_FILE: &str = "staging.db";

/// Opens (or creates) the staging file of the state dir `dir`, with its table.
pub(super) fn open(dir: &Path) -> Result<(Connection, PathBuf), JournalError> {
    let (conn, path) = connect(dir, STAGING_FILE, true, Durability::Fsync)?;
    conn.execute_batch(SCHEMA)
        .map_err(|e| store_error(&path, e))?;
    Ok((conn, path))
}

/// Rows are read back by (xid, seq) and discarded by (xid, subxid).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_staging (
    xid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    subxid INTEGER NOT NULL,
    lsn INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (xid, seq)
);
CREATE INDEX IF NOT EXISTS stream_staging_sub ON stream_staging(xid, subxid);
";

/// Applies `ops` in order (the caller's transaction makes them one).
pub(super) fn apply(conn: &Connection, ops: &[StagingOp]) -> rusqlite::Result<()> {
    // A plain INSERT: a row already at (xid, seq) is staging left from an earlier
    // session, which must have been cleared; failing beats overwriting it.
    let mut put = conn.prepare_cached(
        "INSERT INTO stream_staging(xid, seq, subxid, lsn, body) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for op in ops {
        match op {
            StagingOp::Put(m) => {
                put.execute(params![m.xid, m.seq, m.subxid, m.lsn.0 as i64, m.body])?;
            }
            StagingOp::Discard { xid, subxid: None } => {
                conn.execute("DELETE FROM stream_staging WHERE xid = ?1", [xid])?;
            }
            StagingOp::Discard {
                xid,
                subxid: Some(sub),
            } => {
                conn.execute(
                    "DELETE FROM stream_staging WHERE xid = ?1 AND subxid = ?2",
                    [xid, sub],
                )?;
            }
            StagingOp::Clear => {
                conn.execute("DELETE FROM stream_staging", [])?;
            }
        }
    }
    Ok(())
}

/// A page of `xid`'s staged messages after `after_seq` (see `StateStore::staged`).
pub(super) fn page(
    conn: &Connection,
    xid: u32,
    after_seq: i64,
    limit: usize,
    max_bytes: usize,
) -> rusqlite::Result<Vec<StagedMessage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, subxid, lsn, body FROM stream_staging \
         WHERE xid = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![xid, after_seq, limit.min(i64::MAX as usize) as i64])?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let body: Vec<u8> = row.get(3)?;
        bytes = bytes.saturating_add(body.len());
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        out.push(StagedMessage {
            xid,
            seq: row.get(0)?,
            subxid: row.get(1)?,
            lsn: Lsn(row.get::<_, i64>(2)? as u64),
            body,
        });
    }
    Ok(out)
}
