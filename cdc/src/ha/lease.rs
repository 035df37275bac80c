//! What the election does outside the state store: ending the old leader's
//! walsender on the source, and bounding each lease query in time. (The lease
//! itself is the store's: `crate::journal::LeaseSession`.)

use std::time::Duration;

use crate::replication::{connect_sql, SourceUrl};

/// Ends the walsender that still streams the slot for an old leader, so the new
/// one can start streaming at once rather than after `wal_sender_timeout`.
pub(crate) async fn end_slot_holder(source: &SourceUrl, slot: &str) -> anyhow::Result<bool> {
    let client = connect_sql(source)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the source at {source}: {e}"))?;
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// A bound on one lease query, so a partitioned database cannot hang a tick.
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("{what} took longer than {limit:?}"),
    }
}
