//! Polls `pg_replication_slots` for the slot's retained WAL, `wal_status` and
//! `safe_wal_size`, on its own SQL connection (reconnected when lost), for
//! `/metrics`; and the journal for sinks whose oldest pending event is too old.
//! What endangers the portal database or shows a blocked sink is logged, and
//! `/readyz` fails while it lasts.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::health::health;
use crate::journal::{Access, Store};
use crate::replication::connect_sql;
use crate::{metrics, source};

/// How often the slot is looked at.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(10);

/// Sinks whose oldest pending event is older than `max`, with its age in seconds.
fn blocked_sinks(config: &Config, max: Duration) -> Vec<(String, f64)> {
    let Ok(reader) = Store::from_config(&config.state).open(Access::Existing) else {
        return Vec::new();
    };
    let now_us = chrono::Utc::now().timestamp_micros();
    let configured: Vec<&str> = config.sink.iter().map(|s| s.name()).collect();
    reader
        .cursors()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| configured.contains(&c.sink.as_str()))
        .filter_map(|c| {
            let age = (now_us - c.oldest_pending_unix_us?).max(0) as f64 / 1e6;
            (age > max.as_secs_f64()).then_some((c.sink, age))
        })
        .collect()
}

/// Polls until aborted (never an error: it reconnects by itself; the signature is
/// what `supervise` runs, which restarts it should it panic).
pub(crate) async fn run(config: Arc<Config>) -> Result<(), std::convert::Infallible> {
    let Ok(url) = config.source_url() else {
        return Ok(());
    };
    let slot = config.source.slot.clone();
    let max_lag = config.admin.ready_max_sink_lag();
    let min_safe = config.admin.min_safe_wal_bytes;
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
        let mut warnings: Vec<String> = blocked_sinks(&config, max_lag)
            .into_iter()
            .map(|(sink, age)| {
                format!(
                    "sink {sink} is blocked: its oldest undelivered event is {age:.0} s old \
                     (admin.ready_max_sink_lag = {}); see `pgcdc status` and `pgcdc audit --sink {sink}`",
                    humantime::format_duration(config.admin.ready_max_sink_lag)
                )
            })
            .collect();
        let Some(c) = &client else {
            health().set_warnings(warnings);
            continue;
        };
        let m = metrics::metrics();
        match source::slot_info(c, &slot).await {
            Ok(Some(info)) => {
                m.slot_retained_wal_bytes
                    .set(info.retained_bytes.unwrap_or(0));
                m.set_wal_status(info.wal_status.as_deref());
                m.slot_safe_wal_bytes.set(info.safe_wal_size.unwrap_or(-1));
                if let Some(s @ ("extended" | "unreserved" | "lost")) = info.wal_status.as_deref() {
                    warnings.push(format!(
                        "slot {slot} has wal_status {s}: Postgres keeps more WAL than max_wal_size for it \
                         and may remove WAL pgcdc still needs; check the source lag and the sinks"
                    ));
                }
                if let Some(safe) = info.safe_wal_size.filter(|b| *b < min_safe) {
                    tracing::warn!(slot = %slot, safe_wal_size = safe, "the slot is close to losing WAL (safe_wal_size below admin.min_safe_wal_bytes)");
                    warnings.push(format!(
                        "slot {slot} can only fall {safe} more bytes behind before Postgres removes WAL it needs \
                         (safe_wal_size < admin.min_safe_wal_bytes = {min_safe}); check the source lag and the sinks"
                    ));
                }
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
        health().set_warnings(warnings);
    }
}
