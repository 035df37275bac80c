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
//! snapshot does not see (`xip`, and every id from `xmax` on: `xmax` follows
//! the last *finished* transaction, so a committed but not yet visible one can
//! be at or after it), and the window (`watermark`) drops the rows of those the
//! stream carried before the low watermark.
//!
//! The reader's catalog look-ups (a Relation message's column types, primary
//! key, partition) have the same gap: a migration that creates a domain and a
//! column of it and writes rows, in one transaction, arrives before the domain
//! is visible. Before them the reader waits until every transaction the
//! stream carried is visible ([`wait_for_stream`]).

use std::time::Duration;

use super::watermark::{Unseen, Windows};
use crate::replication::ReplicationError;

/// How long the reader waits for the stream's transactions to become visible
/// before it looks the catalog up anyway (with a warning).
const STREAM_VISIBLE_WAIT: Duration = Duration::from_secs(60);

/// The current snapshot's `xmax` and `xip`, as `xid8` text.
const UNSEEN_SQL: &str = "SELECT pg_snapshot_xmax(s)::text, \
                          ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x) \
                          FROM pg_current_snapshot() s";

/// Begins the chunk's READ ONLY, REPEATABLE READ transaction with `statement_timeout`
/// and returns the transactions (32-bit ids, as pgoutput sends them) its snapshot
/// does not see.
pub(crate) async fn begin_chunk(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<Unseen, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await?;
    unseen(client).await
}

/// The transactions the current snapshot does not see.
async fn unseen(client: &tokio_postgres::Client) -> Result<Unseen, tokio_postgres::Error> {
    let row = client.query_one(UNSEEN_SQL, &[]).await?;
    // The 32-bit ids pgoutput sends: the epoch dropped.
    let xid = |text: &str| text.parse::<u64>().map_or(0, |x| x as u32);
    Ok(Unseen {
        xmax: xid(row.get(0)),
        xip: row.get::<_, Vec<&str>>(1).into_iter().map(xid).collect(),
    })
}

/// Waits until no transaction among the stream's last commits (`windows`) is
/// missing from a snapshot of `client`: catalog look-ups then see what the
/// stream's messages refer to. Gives up after a minute (a synchronous standby
/// that does not answer), with a warning.
pub(crate) async fn wait_for_stream(
    client: &tokio_postgres::Client,
    windows: &Windows,
) -> Result<(), ReplicationError> {
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        let unseen = unseen(client).await?;
        if !windows.misses_commits(&unseen) {
            return Ok(());
        }
        if started.elapsed() >= STREAM_VISIBLE_WAIT {
            tracing::warn!(waited_s = STREAM_VISIBLE_WAIT.as_secs(), "transactions the stream carried are still not visible to catalog queries (a synchronous standby that does not answer?); looking the catalog up anyway");
            return Ok(());
        }
        if !warned {
            tracing::info!("waiting for transactions the stream carried to become visible before reading the catalog");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
