//! Prometheus metrics (`prometheus-client`), served by the admin API at `/metrics`.
//!
//! ```text
//!  reader ── source_lag(received, durable) ─┐
//!  runner ── delivered(sink, items, results) ┤
//!  audit writer ── attempt(a) ───────────────┼─▶ METRICS (one registry) ─▶ GET /metrics
//!  admin: slot poller (10 s), journal/cursors ┘        (gauges read at scrape time)
//! ```
//!
//! Counters and the latency histogram are updated where things happen;
//! gauges that describe stored state (journal size, cursors, DLQ) are read
//! from the journal when `/metrics` is scraped, so they are never stale.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use pgcdc_schema::ChangeEvent;
use pgcdc_sinks::{Attempt, AttemptOutcome, ItemResult, Outgoing};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// `wal_status` values of `pg_replication_slots`, one series each.
pub(crate) const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Every pgcdc metric, registered once per process.
pub(crate) struct Metrics {
    registry: Registry,
    /// Server WAL end minus what the journal holds durably, in bytes.
    pub(crate) source_lag_bytes: Gauge,
    /// WAL the slot keeps on the server (`pg_current_wal_lsn() - restart_lsn`).
    pub(crate) slot_retained_wal_bytes: Gauge,
    /// `safe_wal_size` of the slot (-1: unlimited, `max_slot_wal_keep_size` unset).
    pub(crate) slot_safe_wal_bytes: Gauge,
    /// 1 for the slot's current `wal_status`, 0 for the others.
    pub(crate) slot_wal_status: Family<Labels, Gauge>,
    /// Journal files on disk.
    pub(crate) journal_bytes: Gauge,
    /// 1 while the reader is paused on a full journal.
    pub(crate) reader_paused: Gauge,
    /// WAL position up to which the journal is durable.
    pub(crate) journal_head_lsn: Gauge,
    /// Journal position of the last entry.
    pub(crate) journal_head_position: Gauge,
    /// 1 while the replication stream is connected.
    pub(crate) replication_connected: Gauge,
    /// Journal entries after each sink's cursor.
    pub(crate) sink_lag_events: Family<Labels, Gauge>,
    /// Age, from commit time, of each sink's oldest undelivered event.
    pub(crate) sink_lag_seconds: Family<Labels, FloatGauge>,
    /// 1 while the sink's runner runs.
    pub(crate) sink_running: Family<Labels, Gauge>,
    /// Items by sink and outcome (delivered, dead_lettered, parked, skipped).
    pub(crate) deliveries: Family<Labels, Counter>,
    /// Batches a sink runner read, by where from (`memory`: the events this
    /// process journaled last; `journal`: the store).
    pub(crate) sink_batch_reads: Family<Labels, Counter>,
    /// Attempts that failed and will be retried, by sink.
    pub(crate) delivery_retries: Family<Labels, Counter>,
    /// Items in each sink's DLQ.
    pub(crate) dlq_events: Family<Labels, Gauge>,
    /// Commit-to-acknowledgement time of delivered items, by sink.
    pub(crate) delivery_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Rows copied by resyncs.
    pub(crate) resync_rows: Counter,
    /// Journal writes (one store transaction each) that held changes.
    pub(crate) journal_writes: Counter,
    /// Changes (and resync rows) those writes stored (not those a replay skipped).
    pub(crate) journal_changes: Counter,
    /// Times the replication slot was found lost (missing, or wal_status = lost).
    pub(crate) slot_lost: Counter,
    /// 1 while this process leads (always, without HA), 0 while it stands by.
    pub(crate) leader: Gauge,
    /// `pgcdc deliver`: records after the group's committed offset, per partition held.
    pub(crate) deliver_partition_lag_records: Family<Labels, Gauge>,
    /// `pgcdc deliver`: age of the oldest record not yet settled, per partition held.
    pub(crate) deliver_partition_lag_seconds: Family<Labels, FloatGauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn sink_label(sink: &str) -> Labels {
    vec![("sink".to_string(), sink.to_string())]
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            source_lag_bytes: Gauge::default(),
            slot_retained_wal_bytes: Gauge::default(),
            slot_safe_wal_bytes: Gauge::default(),
            slot_wal_status: Family::default(),
            journal_bytes: Gauge::default(),
            reader_paused: Gauge::default(),
            journal_head_lsn: Gauge::default(),
            journal_head_position: Gauge::default(),
            replication_connected: Gauge::default(),
            sink_lag_events: Family::default(),
            sink_lag_seconds: Family::default(),
            sink_running: Family::default(),
            deliveries: Family::default(),
            sink_batch_reads: Family::default(),
            delivery_retries: Family::default(),
            dlq_events: Family::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            resync_rows: Counter::default(),
            journal_writes: Counter::default(),
            journal_changes: Counter::default(),
            slot_lost: Counter::default(),
            leader: Gauge::default(),
            deliver_partition_lag_records: Family::default(),
            deliver_partition_lag_seconds: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "pgcdc_source_lag_bytes",
            "Server WAL end minus the WAL position the journal holds durably",
            m.source_lag_bytes.clone(),
        );
        r.register(
            "pgcdc_slot_retained_wal_bytes",
            "WAL retained on the server by the replication slot",
            m.slot_retained_wal_bytes.clone(),
        );
        r.register(
            "pgcdc_slot_safe_wal_bytes",
            "Bytes the slot may still fall behind before Postgres removes WAL it needs (-1: unlimited)",
            m.slot_safe_wal_bytes.clone(),
        );
        r.register(
            "pgcdc_slot_wal_status",
            "1 for the slot's wal_status (reserved, extended, unreserved, lost)",
            m.slot_wal_status.clone(),
        );
        r.register(
            "pgcdc_journal_bytes",
            "Size of the journal files on disk",
            m.journal_bytes.clone(),
        );
        r.register(
            "pgcdc_journal_head_lsn",
            "WAL position (as a number) up to which the journal is durable",
            m.journal_head_lsn.clone(),
        );
        r.register(
            "pgcdc_journal_head_position",
            "Journal position of the last entry",
            m.journal_head_position.clone(),
        );
        r.register(
            "pgcdc_replication_connected",
            "1 while the replication stream is connected",
            m.replication_connected.clone(),
        );
        r.register(
            "pgcdc_reader_paused",
            "1 while the reader is paused because the journal reached journal.max_bytes",
            m.reader_paused.clone(),
        );
        r.register(
            "pgcdc_sink_lag_events",
            "Journal entries after the sink's cursor",
            m.sink_lag_events.clone(),
        );
        r.register(
            "pgcdc_sink_lag_seconds",
            "Age, from commit time, of the sink's oldest undelivered event",
            m.sink_lag_seconds.clone(),
        );
        r.register(
            "pgcdc_sink_running",
            "1 while the sink's runner runs",
            m.sink_running.clone(),
        );
        r.register(
            "pgcdc_deliveries",
            "Items handled by a sink, by outcome (delivered, dead_lettered, parked, skipped)",
            m.deliveries.clone(),
        );
        r.register(
            "pgcdc_sink_batch_reads",
            "Batches a sink runner read, by source (memory: events this process journaled last; journal: read back from the store)",
            m.sink_batch_reads.clone(),
        );
        r.register(
            "pgcdc_delivery_retries",
            "Delivery attempts that failed and will be retried",
            m.delivery_retries.clone(),
        );
        r.register(
            "pgcdc_dlq_events",
            "Items in the sink's dead-letter queue",
            m.dlq_events.clone(),
        );
        r.register(
            "pgcdc_delivery_latency_seconds",
            "Time from commit to the destination's acknowledgement",
            m.delivery_latency.clone(),
        );
        r.register(
            "pgcdc_resync_rows",
            "Rows copied by resyncs",
            m.resync_rows.clone(),
        );
        r.register(
            "pgcdc_journal_writes",
            "Journal writes that held changes (one state-store transaction, and with SQLite one fsync, each)",
            m.journal_writes.clone(),
        );
        r.register(
            "pgcdc_journal_changes",
            "Changes and resync rows the journal writes stored",
            m.journal_changes.clone(),
        );
        r.register(
            "pgcdc_slot_lost",
            "Times the replication slot was found lost (missing after a failover, or wal_status = lost)",
            m.slot_lost.clone(),
        );
        r.register(
            "pgcdc_leader",
            "1 while this process leads (streams and delivers), 0 while it stands by ([ha])",
            m.leader.clone(),
        );
        r.register(
            "pgcdc_deliver_partition_lag_records",
            "pgcdc deliver: records after the group's committed offset, per partition this worker holds",
            m.deliver_partition_lag_records.clone(),
        );
        r.register(
            "pgcdc_deliver_partition_lag_seconds",
            "pgcdc deliver: age of the oldest record not yet settled, per partition this worker holds",
            m.deliver_partition_lag_seconds.clone(),
        );
        m
    }

    /// `pgcdc deliver`: the lag of each partition held now, (topic, partition,
    /// records, seconds); partitions no longer held lose their series.
    pub(crate) fn set_partition_lags(&self, lags: &[(String, i32, i64, f64)]) {
        self.deliver_partition_lag_records.clear();
        self.deliver_partition_lag_seconds.clear();
        for (topic, partition, records, seconds) in lags {
            let l = vec![
                ("topic".to_string(), topic.clone()),
                ("partition".to_string(), partition.to_string()),
            ];
            self.deliver_partition_lag_records
                .get_or_create(&l)
                .set(*records);
            self.deliver_partition_lag_seconds
                .get_or_create(&l)
                .set(*seconds);
        }
    }

    /// Creates the per-sink series at 0 so dashboards see every sink from the start.
    pub(crate) fn register_sinks<'a>(&self, sinks: impl IntoIterator<Item = &'a str>) {
        // `get_or_create_owned` creates the series; the returned handle is not needed.
        for sink in sinks {
            for outcome in ["delivered", "dead_lettered", "parked", "skipped"] {
                self.deliveries
                    .get_or_create_owned(&outcome_labels(sink, outcome));
            }
            let l = sink_label(sink);
            self.delivery_retries.get_or_create_owned(&l);
            self.delivery_latency.get_or_create_owned(&l);
            self.dlq_events.get_or_create_owned(&l);
            self.sink_lag_events.get_or_create_owned(&l);
            self.sink_lag_seconds.get_or_create_owned(&l);
            self.sink_running.get_or_create_owned(&l);
        }
    }

    /// The slot's `wal_status`: 1 on its series, 0 on the others (all 0 when unknown).
    pub(crate) fn set_wal_status(&self, status: Option<&str>) {
        for s in WAL_STATUSES {
            self.slot_wal_status
                .get_or_create(&vec![("status".to_string(), s.to_string())])
                .set(i64::from(status == Some(s)));
        }
    }

    /// Sets a per-sink gauge.
    pub(crate) fn set_sink(&self, family: &Family<Labels, Gauge>, sink: &str, value: i64) {
        family.get_or_create(&sink_label(sink)).set(value);
    }

    /// Sets a sink's lag in seconds.
    pub(crate) fn set_sink_lag_seconds(&self, sink: &str, seconds: f64) {
        self.sink_lag_seconds
            .get_or_create(&sink_label(sink))
            .set(seconds);
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn outcome_labels(sink: &str, outcome: &str) -> Labels {
    sink_and(sink, "outcome", outcome)
}

/// The sink's label and one more.
fn sink_and(sink: &str, key: &str, value: &str) -> Labels {
    vec![
        ("sink".to_string(), sink.to_string()),
        (key.to_string(), value.to_string()),
    ]
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

/// Reader: the server's WAL end it has seen and the journal's durable position.
pub(crate) fn source_lag(server_wal_end: u64, durable: u64) {
    let lag = server_wal_end.saturating_sub(durable);
    metrics()
        .source_lag_bytes
        .set(i64::try_from(lag).unwrap_or(i64::MAX));
}

/// Journal thread: one write of `changes` changes (and resync rows).
pub(crate) fn journal_written(changes: usize) {
    let m = metrics();
    m.journal_writes.inc();
    m.journal_changes.inc_by(changes as u64);
}

/// Runner: counts a batch's results and observes commit-to-ack latency of delivered items.
pub(crate) fn delivered(sink: &str, items: &[Outgoing], results: &[ItemResult]) {
    let m = metrics();
    let now = chrono::Utc::now();
    let (mut delivered, mut dead, mut parked) = (0u64, 0u64, 0u64);
    let latency = m.delivery_latency.get_or_create(&sink_label(sink));
    for (item, result) in items.iter().zip(results) {
        match result {
            ItemResult::Delivered => {
                delivered += 1;
                if let Some(s) = commit_age_seconds(&item.event, now) {
                    latency.observe(s);
                }
            }
            ItemResult::DeadLettered { .. } => dead += 1,
            ItemResult::Parked => parked += 1,
        }
    }
    for (outcome, n) in [
        ("delivered", delivered),
        ("dead_lettered", dead),
        ("parked", parked),
    ] {
        if n > 0 {
            m.deliveries
                .get_or_create(&outcome_labels(sink, outcome))
                .inc_by(n);
        }
    }
}

/// Runner: a batch was read, from memory or from the journal.
pub(crate) fn batch_read(sink: &str, from_memory: bool) {
    let source = if from_memory { "memory" } else { "journal" };
    metrics()
        .sink_batch_reads
        .get_or_create(&sink_and(sink, "source", source))
        .inc();
}

/// Audit writer: counts retries and skipped items (the runner counts final outcomes).
pub(crate) fn attempt(a: &Attempt) {
    let m = metrics();
    match a.outcome {
        AttemptOutcome::Retrying => {
            m.delivery_retries.get_or_create(&sink_label(&a.sink)).inc();
        }
        AttemptOutcome::Skipped => {
            m.deliveries
                .get_or_create(&outcome_labels(&a.sink, "skipped"))
                .inc();
        }
        AttemptOutcome::Delivered | AttemptOutcome::Failed => {}
    }
}

fn commit_age_seconds(event: &ChangeEvent, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    let committed = chrono::DateTime::parse_from_rfc3339(event.commit_time.as_deref()?).ok()?;
    let age = now.signed_duration_since(committed).num_microseconds()?;
    // Clock skew between the database and this host must not produce negative latencies.
    Some((age.max(0) as f64) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_documented_names() {
        let m = Metrics::new();
        m.register_sinks(["hook"]);
        m.set_wal_status(Some("extended"));
        m.deliveries
            .get_or_create(&outcome_labels("hook", "delivered"))
            .inc_by(3);
        let text = m.encode().unwrap_or_default();
        for name in [
            "pgcdc_source_lag_bytes ",
            "pgcdc_slot_retained_wal_bytes ",
            "pgcdc_slot_wal_status{status=\"extended\"} 1",
            "pgcdc_slot_wal_status{status=\"lost\"} 0",
            "pgcdc_journal_bytes ",
            "pgcdc_journal_head_lsn ",
            "pgcdc_sink_lag_events{sink=\"hook\"} 0",
            "pgcdc_sink_lag_seconds{sink=\"hook\"} 0",
            "pgcdc_deliveries_total{sink=\"hook\",outcome=\"delivered\"} 3",
            "pgcdc_delivery_retries_total{sink=\"hook\"} 0",
            "pgcdc_dlq_events{sink=\"hook\"} 0",
            "pgcdc_delivery_latency_seconds_bucket{le=\"0.001\",sink=\"hook\"} 0",
            "pgcdc_resync_rows_total 0",
            "pgcdc_journal_writes_total ",
            "pgcdc_journal_changes_total ",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }

    #[test]
    fn latency_is_commit_to_now_and_never_negative() {
        let now = chrono::Utc::now();
        let mut event: ChangeEvent = serde_json::from_value(serde_json::json!({
            "id": "0000000001000000-00000000", "op": "insert", "schema": "public",
            "table": "t", "key": {"id": 1}, "old": null, "new": {"id": 1},
            "trigger": null, "lsn": "0/1000000", "xid": 1,
            "commit_time": (now - chrono::Duration::milliseconds(1500)).to_rfc3339(),
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let age = commit_age_seconds(&event, now).unwrap_or(-1.0);
        assert!((1.49..1.51).contains(&age), "{age}");
        event.commit_time = Some((now + chrono::Duration::seconds(5)).to_rfc3339().into());
        assert_eq!(commit_age_seconds(&event, now), Some(0.0));
    }
}
