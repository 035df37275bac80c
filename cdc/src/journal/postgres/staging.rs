//! The staging of streamed transactions in the `stream_staging` table (see
//! `journal::staging`). Consecutive puts go in one multi-row INSERT.

use pgcdc_schema::Lsn;

use super::Pg;
use crate::journal::{JournalError, StagedMessage, StagingOp};

/// Puts not inserted yet, column by column (one array parameter each).
#[derive(Default)]
struct Puts<'a> {
    xid: Vec<i64>,
    seq: Vec<i64>,
    subxid: Vec<i64>,
    lsn: Vec<i64>,
    body: Vec<&'a [u8]>,
}

impl Puts<'_> {
    fn flush(&mut self, pg: &Pg) -> Result<(), JournalError> {
        if self.xid.is_empty() {
            return Ok(());
        }
        // A plain INSERT: a row already at (xid, seq) is staging left from an earlier
        // session, which must have been cleared; failing beats overwriting it.
        pg.execute(
            "INSERT INTO stream_staging(xid, seq, subxid, lsn, body) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[])",
            &[&self.xid, &self.seq, &self.subxid, &self.lsn, &self.body],
        )?;
        *self = Puts::default();
        Ok(())
    }
}

/// Applies `ops` in order (the caller's transaction makes them one).
pub(super) fn apply(pg: &Pg, ops: &[StagingOp]) -> Result<(), JournalError> {
    let mut puts = Puts::default();
    for op in ops {
        match op {
            StagingOp::Put(m) => {
                puts.xid.push(i64::from(m.xid));
                puts.seq.push(m.seq);
                puts.subxid.push(i64::from(m.subxid));
                puts.lsn.push(m.lsn.0 as i64);
                puts.body.push(&m.body);
            }
            StagingOp::Discard { xid, subxid } => {
                puts.flush(pg)?;
                let xid = i64::from(*xid);
                match subxid {
                    None => pg.execute("DELETE FROM stream_staging WHERE xid = $1", &[&xid])?,
                    Some(sub) => pg.execute(
                        "DELETE FROM stream_staging WHERE xid = $1 AND subxid = $2",
                        &[&xid, &i64::from(*sub)],
                    )?,
                };
            }
            StagingOp::Clear => {
                puts.flush(pg)?;
                pg.execute("DELETE FROM stream_staging", &[])?;
            }
        }
    }
    puts.flush(pg)
}

/// A page of `xid`'s staged messages after `after_seq` (see `StateStore::staged`).
pub(super) fn page(
    pg: &Pg,
    xid: u32,
    after_seq: i64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<StagedMessage>, JournalError> {
    let rows = pg.query(
        "SELECT seq, subxid, lsn, body FROM stream_staging \
         WHERE xid = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[
            &i64::from(xid),
            &after_seq,
            &(limit.min(i64::MAX as usize) as i64),
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    for row in &rows {
        let body: Vec<u8> = pg.get(row, 3)?;
        bytes = bytes.saturating_add(body.len());
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        out.push(StagedMessage {
            xid,
            seq: pg.get(row, 0)?,
            subxid: u32::try_from(pg.get::<i64>(row, 1)?).unwrap_or(u32::MAX),
            lsn: Lsn(pg.get::<i64>(row, 2)? as u64),
            body,
        });
    }
    Ok(out)
}
