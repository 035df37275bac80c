//! A resync chunk's snapshot, and the transactions it does not see.
//!
//! Postgres writes a transaction's commit record before the transaction becomes
//! visible, and logical decoding sends it as soon as the record is flushed. In
//! between, a snapshot does not see it: for a moment when the committing backend
//! is not scheduled, for a round trip when it waits for a synchronous standby.
//! A chunk SELECT whose snapshot misses a transaction that the stream carried
//! before the low watermark would journal the rows it changed as they were
//! before, after the change: stale rows. (`pg_xact_status` cannot tell such a
//! transaction from one still running: it asks the same process array.)
//!
//! So the chunk's transaction (REPEATABLE READ: its first statement takes the
//! snapshot the COPY then reads under) first lists the transactions its
//! snapshot does not see, and the window (`watermark`) drops the rows of those
//! the stream carried before the low watermark.

use std::time::Duration;

use super::resync::ResyncError;

/// The transactions the current snapshot does not see, as `xid8` text.
const UNSEEN_SQL: &str = "SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) x";

/// Begins the chunk's READ ONLY, REPEATABLE READ transaction with `statement_timeout`
/// and returns the transactions (32-bit ids, as pgoutput sends them) its snapshot
/// does not see.
pub(crate) async fn begin_chunk(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<Vec<u32>, ResyncError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await?;
    client
        .query(UNSEEN_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            let xid: &str = r.get(0);
            // The 32-bit id pgoutput sends: the epoch dropped.
            xid.parse::<u64>()
                .map(|x| x as u32)
                .map_err(|_| ResyncError::Definite(format!("unexpected transaction id {xid:?}")))
        })
        .collect()
}
