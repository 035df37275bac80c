//! The progress record and the read-back that make Kafka delivery exactly once.
//!
//! After every batch is acknowledged, the sink writes a progress record to a
//! compacted topic (key = sink name): the journal position the batch covers
//! and, per topic it writes, the partition count and the next offset of each
//! partition it has written. On start, and after any producer failure, it
//! reads that record back, then reads every partition from the recorded
//! offset to its end: what is there was written after the record, so those
//! deliveries are skipped, by `pgcdc-event-id`, when they come round again.
//!
//! The read-back reads one topic at a time, because librdkafka reports the end
//! of a partition by partition number only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::context::SinkContext;
use serde::{Deserialize, Serialize};

/// Header naming the delivery (event id, `.N` for later transform outputs).
pub const H_EVENT_ID: &str = "pgcdc-event-id";
/// Header with the commit LSN.
pub const H_LSN: &str = "pgcdc-lsn";
/// Header with `schema.table`.
pub const H_TABLE: &str = "pgcdc-table";
/// Header with the operation (`insert`, `update`, ...).
pub const H_OP: &str = "pgcdc-op";
/// Header with the writing sink's name: the read-back's proof that pgcdc wrote a record.
pub const H_SINK: &str = "pgcdc-sink";

/// One sink's progress record (the value in the progress topic).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Format version.
    pub version: u32,
    /// Journal position covered: every event up to it is in Kafka.
    pub pos: i64,
    /// Id of the journal event at `pos`.
    pub event_id: String,
    /// The local cursor's generation when the record was written (a checkpoint reset
    /// raises it: then the reset position wins over this record).
    #[serde(default)]
    pub generation: i64,
    /// Topics this sink writes.
    pub topics: BTreeMap<String, TopicProgress>,
    /// HA epoch of the pgcdc that wrote it (none without HA): a record of an older
    /// epoch that lands after a newer one is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

/// Whether `next` (at a later offset) replaces `last` as the sink's progress: always,
/// unless it comes from an older HA epoch than `last` (a fenced leader's late write).
pub(crate) fn supersedes(last: Option<&Progress>, next: &Progress) -> bool {
    match (last.and_then(|l| l.epoch), next.epoch) {
        (Some(mine), Some(theirs)) => theirs >= mine,
        // A record without an epoch after one with: HA was turned off.
        _ => true,
    }
}

/// What a progress record says of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicProgress {
    /// Partition count when pgcdc first wrote it (a change is refused).
    pub partitions: i32,
    /// Next offset per partition: everything before it was there when the record was written.
    pub next: BTreeMap<i32, i64>,
}

/// Identity of one record pgcdc writes: delivery id, and whether it is a tombstone.
pub type RecordId = (String, bool);

/// Why a read-back failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    /// The broker did not answer in time or failed; worth retrying.
    #[error("reading back {what}: {message}")]
    Transient {
        /// What was being read.
        what: String,
        /// The error.
        message: String,
    },
    /// Something another writer or an operator did; retrying cannot help.
    #[error("{0}")]
    Definite(String),
}

/// The read-back's consumer type.
pub type ReadBackConsumer = BaseConsumer<SinkContext>;

/// A consumer for the read-back: manual assignment, no group, every record.
pub fn consumer(
    base: &ClientConfig,
    ctx: SinkContext,
    committed: bool,
) -> Result<ReadBackConsumer, ReadBackError> {
    let mut cfg = base.clone();
    // Under HA the sink writes in transactions: read what a read_committed
    // consumer reads (an aborted record is not there for it, so it is re-sent).
    let isolation = if committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    cfg.set("group.id", "pgcdc-read-back")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // The end of a partition is seen after one empty fetch: the broker holds
        // that fetch this long (500 ms by default, at every start and read-back).
        .set("fetch.wait.max.ms", "10")
        .set("auto.offset.reset", "error")
        .set("isolation.level", isolation)
        .set("allow.auto.create.topics", "false");
    let masked = ctx.clone();
    cfg.create_with_context(ctx)
        .map_err(|e| ReadBackError::Transient {
            what: "the Kafka consumer".into(),
            message: masked.mask(&e.to_string()),
        })
}

/// Reads `partitions` of `topic` from their start offsets to their ends, calling
/// `visit` for each record. Fails if the broker does not let it progress for `stall`.
pub fn read_to_end(
    consumer: &ReadBackConsumer,
    topic: &str,
    partitions: &[(i32, Offset)],
    stall: Duration,
    mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), ReadBackError>,
) -> Result<(), ReadBackError> {
    if partitions.is_empty() {
        return Ok(());
    }
    let transient = |message: String| ReadBackError::Transient {
        what: format!("topic {topic}"),
        message,
    };
    // A partition read from its beginning has its offsets asked first: that
    // teaches librdkafka the partition's leader, which it would otherwise wait
    // half a second to ask for the start offset from (the start of every sink
    // with an empty progress topic took a second), and an empty partition is
    // not read at all. The next offset nisshi answers is the start of the last
    // record batch plus one, which tells an empty partition (0) from one with
    // records but not where one ends: a partition read from a recorded offset
    // is always read to the end the broker's fetch reports.
    let mut tpl = TopicPartitionList::new();
    let mut open: HashSet<i32> = HashSet::new();
    for (p, offset) in partitions {
        if *offset == Offset::Beginning {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, stall)
                .map_err(|e| transient(format!("offsets of partition {p}: {e}")))?;
            if low >= high {
                continue;
            }
        }
        tpl.add_partition_offset(topic, *p, *offset)
            .map_err(|e| transient(e.to_string()))?;
        open.insert(*p);
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&tpl)
        .map_err(|e| transient(e.to_string()))?;
    let mut last_progress = Instant::now();
    let result = loop {
        if open.is_empty() {
            break Ok(());
        }
        if last_progress.elapsed() > stall {
            break Err(transient(format!(
                "no answer from the broker for {}s (partitions still open: {open:?})",
                stall.as_secs()
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(msg)) => {
                last_progress = Instant::now();
                visit(&msg)?;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                open.remove(&p);
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("Offset out of range") || text.contains("OffsetOutOfRange") {
                    break Err(ReadBackError::Definite(format!(
                        "topic {topic}: a partition ends before the offset pgcdc recorded in its progress \
                         record ({text}): the broker lost records it had acknowledged, or the topic was \
                         deleted and re-created. pgcdc cannot tell what consumers saw; restore the topic, \
                         or delete this sink's progress record and reset its checkpoint to re-send"
                    )));
                }
                break Err(transient(text));
            }
        }
    };
    if let Err(e) = consumer.unassign() {
        tracing::debug!(topic, error = %e, "unassign after read-back failed");
    }
    result
}

/// The header `name` of `msg` as text.
pub fn header<'a>(msg: &'a rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Reads the last progress record of `sink` from `progress_topic` (partitions `0..n`).
pub fn read_progress(
    consumer: &ReadBackConsumer,
    progress_topic: &str,
    partitions: i32,
    sink: &str,
    stall: Duration,
) -> Result<Option<Progress>, ReadBackError> {
    let parts: Vec<(i32, Offset)> = (0..partitions).map(|p| (p, Offset::Beginning)).collect();
    let mut last: Option<(i64, Progress)> = None;
    read_to_end(consumer, progress_topic, &parts, stall, |msg| {
        if msg.key() != Some(sink.as_bytes()) {
            return Ok(());
        }
        let Some(payload) = msg.payload() else {
            // A tombstone: an operator deleted this sink's progress.
            last = None;
            return Ok(());
        };
        let progress: Progress = serde_json::from_slice(payload).map_err(|e| {
            ReadBackError::Definite(format!(
                "progress topic {progress_topic}, partition {}, offset {}: the record for sink {sink} \
                 is not a pgcdc progress record ({e}); another program writes to this topic: give \
                 the sink its own `progress_topic`",
                msg.partition(),
                msg.offset()
            ))
        })?;
        match &last {
            Some((o, _)) if msg.offset() <= *o => {}
            Some((_, l)) if !supersedes(Some(l), &progress) => tracing::warn!(
                sink,
                partition = msg.partition(),
                offset = msg.offset(),
                epoch = ?progress.epoch,
                "ignored a progress record of an older HA epoch (a leader that was taken over)"
            ),
            _ => last = Some((msg.offset(), progress)),
        }
        Ok(())
    })?;
    Ok(last.map(|(_, p)| p))
}

/// What a read-back of the written partitions found.
#[derive(Debug, Default)]
pub struct Found {
    /// Records pgcdc's sink wrote after the progress record, each with where it
    /// was read: (topic, partition) and offset.
    pub records: HashMap<RecordId, ((String, i32), i64)>,
}

impl Found {
    /// Whether the read-back found record `id`.
    pub fn contains(&self, id: &RecordId) -> bool {
        self.records.contains_key(id)
    }

    /// The ids of the records found.
    pub fn ids(&self) -> HashSet<RecordId> {
        self.records.keys().cloned().collect()
    }

    /// Per partition, the offset after the last found record that `counts`
    /// accepts. A progress record may only name offsets whose records belong
    /// to events at or before its position: a record still awaiting its replay
    /// (found by the read-back at start, not yet skipped) must not count, or a
    /// crash after the next progress record would re-send what lies between.
    pub fn next_where(&self, counts: impl Fn(&RecordId) -> bool) -> BTreeMap<(String, i32), i64> {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (id, (tp, offset)) in &self.records {
            if counts(id) {
                let e = next.entry(tp.clone()).or_insert(0);
                *e = (*e).max(offset + 1);
            }
        }
        next
    }
}

/// Reads every partition of `progress.topics` from its recorded offset to its end,
/// collecting what `sink` wrote there; a record of any other writer is an error.
pub fn read_written(
    consumer: &ReadBackConsumer,
    progress: &Progress,
    sink: &str,
    stall: Duration,
) -> Result<Found, ReadBackError> {
    let mut found = Found::default();
    for (topic, tp) in &progress.topics {
        let parts: Vec<(i32, Offset)> = (0..tp.partitions)
            .map(|p| {
                let offset = tp.next.get(&p).copied().unwrap_or(0);
                (p, Offset::Offset(offset))
            })
            .collect();
        read_to_end(consumer, topic, &parts, stall, |msg| {
            let id = header(msg, H_EVENT_ID);
            let writer = header(msg, H_SINK);
            match (id, writer) {
                (Some(id), Some(w)) if w == sink => {
                    found.records.insert(
                        (id.to_string(), msg.payload().is_none()),
                        ((topic.clone(), msg.partition()), msg.offset()),
                    );
                    Ok(())
                }
                _ => Err(ReadBackError::Definite(format!(
                    "topic {topic}, partition {}, offset {} holds a record that sink {sink} did not \
                     write ({}). pgcdc must be the only writer of the partitions it writes, or it \
                     cannot deliver exactly once. Stop the other producer; then either delete the \
                     foreign records' topic and let pgcdc re-send (reset the sink's checkpoint), or \
                     point the sink at a new topic",
                    msg.partition(),
                    msg.offset(),
                    match (id, writer) {
                        (None, _) => format!("no {H_EVENT_ID} header"),
                        (Some(_), Some(w)) => format!("written by sink {w:?}"),
                        (Some(_), None) => format!("no {H_SINK} header"),
                    }
                ))),
            }
        })?;
    }
    Ok(found)
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    fn at(pos: i64, epoch: Option<i64>) -> Progress {
        Progress {
            pos,
            epoch,
            ..Progress::default()
        }
    }

    #[test]
    fn an_older_epochs_late_record_never_wins() {
        assert!(supersedes(None, &at(1, Some(1))));
        assert!(supersedes(Some(&at(1, Some(1))), &at(2, Some(1))));
        assert!(supersedes(Some(&at(5, Some(1))), &at(4, Some(2))));
        assert!(!supersedes(Some(&at(4, Some(2))), &at(9, Some(1))));
        assert!(supersedes(Some(&at(4, None)), &at(9, Some(1))));
        assert!(supersedes(Some(&at(4, Some(3))), &at(9, None)));
    }
}
