//! The status report shared by `pgcdc status --json` and `GET /api/status`:
//! source and slot (over SQL), journal head and each sink's cursor, lag and
//! DLQ size (from the journal).

use pgcdc_schema::Lsn;
use serde_json::{json, Value};

use crate::config::Config;
use crate::journal::{DlqEntry, JournalError, JournalHead, OrphanedCursor, ResyncInfo, StateStore};
use crate::replication::connect_sql;
use crate::source;

/// The journal's part of the status (blocking reads: call off the async runtime
/// when a server shares it).
#[derive(Debug, Clone)]
pub(crate) struct JournalStatus {
    /// Durable head.
    pub(crate) head: JournalHead,
    /// Journal files on disk.
    pub(crate) bytes: u64,
    /// Live data in the journal (what `journal.max_bytes` limits).
    pub(crate) used_bytes: u64,
    /// Each configured sink's cursor, lag and DLQ size.
    pub(crate) sinks: Vec<SinkStatus>,
    /// Queued and running resyncs (and snapshots), and the latest finished ones.
    pub(crate) resyncs: Vec<ResyncInfo>,
    /// Cursors of sinks no longer configured: they hold the journal back.
    pub(crate) orphaned_cursors: Vec<OrphanedCursor>,
}

/// Finished resyncs the status still shows.
const RECENT_RESYNCS: usize = 5;

/// One sink's line of the status.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SinkStatus {
    /// Sink name.
    pub(crate) name: String,
    /// Last journal position the sink has finished with.
    pub(crate) cursor: i64,
    /// Journal entries after the cursor.
    pub(crate) lag_events: i64,
    /// Age, from commit time, of the oldest entry after the cursor (0 when caught up).
    pub(crate) lag_seconds: f64,
    /// Items in the sink's DLQ.
    pub(crate) dlq_events: i64,
}

/// Reads the journal head and each configured sink's cursor, lag and DLQ size.
pub(crate) fn read_journal(
    journal: &dyn StateStore,
    sink_names: &[String],
) -> Result<JournalStatus, JournalError> {
    let head = journal.head()?;
    let cursors = journal.cursors()?;
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut sinks = Vec::with_capacity(sink_names.len());
    for name in sink_names {
        let c = cursors.iter().find(|c| &c.sink == name);
        let lag_seconds = c
            .and_then(|c| c.oldest_pending_unix_us)
            .map(|t| ((now_us - t).max(0) as f64) / 1e6)
            .unwrap_or(0.0);
        sinks.push(SinkStatus {
            name: name.clone(),
            cursor: c.map_or(0, |c| c.pos),
            lag_events: c.map_or(head.pos, |c| c.lag_events),
            lag_seconds,
            dlq_events: journal.dlq_count(name)?,
        });
    }
    Ok(JournalStatus {
        head,
        bytes: journal.size_bytes(),
        used_bytes: journal.used_bytes()?,
        sinks,
        resyncs: journal.resyncs(RECENT_RESYNCS)?,
        orphaned_cursors: journal.orphaned_cursors(sink_names)?,
    })
}

/// The configured sinks' names.
pub(crate) fn sink_names(config: &Config) -> Vec<String> {
    config.sink.iter().map(|s| s.name().to_string()).collect()
}

/// The full status document: queries the source, then joins the journal's part.
pub(crate) async fn status_json(config: &Config, journal: JournalStatus) -> Value {
    if let Some(deliver) = &config.deliver {
        return deliver_status_json(deliver, journal).await;
    }
    let mut source_json = json!({ "reachable": false });
    let client = match config.source_url() {
        Ok(url) => connect_sql(&url).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match client {
        Err(e) => source_json["error"] = json!(e),
        Ok(client) => {
            source_json["reachable"] = json!(true);
            let wal: Option<String> = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .ok()
                .map(|r| r.get(0));
            let current = wal.as_deref().and_then(|w| w.parse::<Lsn>().ok());
            source_json["current_wal_lsn"] = json!(wal);
            source_json["lag_bytes"] =
                json!(current.map(|c| c.0.saturating_sub(journal.head.confirmed_lsn.0)));
            source_json["slot"] = match source::slot_info(&client, &config.source.slot).await {
                Ok(Some(s)) => json!({
                    "name": config.source.slot,
                    "active": s.active_pid.is_some(),
                    "active_pid": s.active_pid,
                    "confirmed_flush_lsn": s.confirmed_flush_lsn,
                    "wal_status": s.wal_status,
                    "retained_wal_bytes": s.retained_bytes,
                }),
                Ok(None) => json!(null),
                Err(e) => json!({ "error": source::sql_message(&e) }),
            };
        }
    }
    json!({
        "source": source_json,
        "journal": {
            "head": journal.head.pos,
            "confirmed_lsn": journal.head.confirmed_lsn.to_string(),
            "bytes": journal.bytes,
            "used_bytes": journal.used_bytes,
            "max_bytes": config.journal.max_bytes,
            "reader_paused": config.journal.max_bytes.is_some_and(|m| journal.used_bytes >= m),
        },
        "sinks": journal.sinks,
        "orphaned_cursors": journal.orphaned_cursors,
        "resyncs": journal.resyncs,
        "schedules": schedules_json(config, chrono::Utc::now()),
    })
}

/// `pgcdc deliver`: the group, the partitions with their lag (in a worker: the
/// ones it holds; elsewhere: the whole group's, read from Kafka), each sink's DLQ.
async fn deliver_status_json(
    deliver: &crate::config::DeliverConfig,
    journal: JournalStatus,
) -> Value {
    use crate::deliver::group;
    let (scope, partitions) = match group::group_state() {
        Some(state) => ("worker", json!(state.lags())),
        None => match group::consumer::group_lag(deliver).await {
            Ok(lags) => ("group", json!(lags)),
            Err(e) => ("group", json!({ "error": e.to_string() })),
        },
    };
    json!({
        "deliver": {
            "group": deliver.group,
            "topics": deliver.topics,
            "scope": scope,
            "partitions": partitions,
        },
        "sinks": journal.sinks,
    })
}

/// Each `[[schedule]]` with its next run time.
pub(crate) fn schedules_json(config: &Config, now: chrono::DateTime<chrono::Utc>) -> Value {
    config
        .schedule
        .iter()
        .map(|s| {
            json!({
                "cron": s.cron,
                "time_zone": s.time_zone,
                "table": s.resync.table.to_string(),
                "sink": s.resync.sink,
                "where": s.resync.where_sql,
                "next_run": s.next_after(now).map(|t| t.to_rfc3339()),
            })
        })
        .collect()
}

/// One DLQ item as `pgcdc dlq list --json` and `GET /api/sinks/{sink}/dlq` show it.
pub(crate) fn dlq_entry_json(e: &DlqEntry) -> Value {
    json!({
        "id": e.delivery_id,
        "row": e.row,
        "state": format!("{:?}", e.state).to_lowercase(),
        "error": e.error,
        "replay_pending": e.replay,
        "created_at": e.created_at,
        "event": e.item.event,
        "body": e.item.body,
    })
}
