//! Polls `pg_replication_slots` for the slot's retained WAL and `wal_status`,
//! on its own SQL connection (reconnected when lost), for `/metrics`.

use std::time::Duration;

use crate::replication::{connect_sql, SourceUrl};
use crate::{metrics, source};

/// How often the slot is looked at.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(10);

/// Polls until aborted.
pub(crate) async fn run(url: SourceUrl, slot: String) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last_status: Option<String> = None;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match connect_sql(&url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "slot poller cannot connect to the source");
                    None
                }
            };
        }
        let Some(c) = &client else { continue };
        let m = metrics::metrics();
        match source::slot_info(c, &slot).await {
            Ok(Some(info)) => {
                m.slot_retained_wal_bytes
                    .set(info.retained_bytes.unwrap_or(0));
                m.set_wal_status(info.wal_status.as_deref());
                if info.wal_status != last_status {
                    if let Some(s @ ("extended" | "unreserved" | "lost")) =
                        info.wal_status.as_deref()
                    {
                        tracing::warn!(
                            slot = %slot, wal_status = s,
                            "the slot retains more WAL than max_wal_size; Postgres may remove WAL pgcdc still needs: \
                             check the source lag and sinks, or raise max_slot_wal_keep_size"
                        );
                    }
                    last_status = info.wal_status;
                }
            }
            Ok(None) => m.set_wal_status(None),
            Err(e) => {
                tracing::debug!(error = %source::sql_message(&e), "slot poller query failed");
                client = None;
            }
        }
    }
}
