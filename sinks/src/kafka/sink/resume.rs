//! The progress record: writing it, and resuming from it at start.

use std::time::Instant;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};

use super::deliver::hand_over;
use super::retry::Failure;
use super::{KafkaSink, STALL};
use crate::kafka::progress::{self, Progress};
use crate::Checkpoint;

impl KafkaSink {
    pub(super) async fn write_progress(&mut self, record: &Progress) -> Result<(), Failure> {
        let value = serde_json::to_vec(record).map_err(|e| Failure::Encode(e.to_string()))?;
        let producer = self.writing_producer().await?;
        let lot = producer.client().context().acks.open(1);
        let record = BaseRecord::with_opaque_to(&self.config.progress_topic, lot.opaque(0))
            .key(self.name.as_bytes())
            .payload(&value);
        hand_over(&producer, record)
            .await
            .map_err(|e| Failure::Broker(format!("progress record: {e}")))?;
        // A lot of one gives one outcome.
        match lot
            .outcomes()
            .await
            .pop()
            .unwrap_or(Err(KafkaError::Canceled))
        {
            Ok(_) => {}
            Err(e) if super::transaction::is_fenced(&e) => {
                return Err(Failure::Fenced(format!(
                    "lost leadership: a newer producer of this sink fenced this one ({e})"
                )))
            }
            Err(e) => return Err(Failure::Broker(format!("progress record: {e}"))),
        }
        // Under HA the record is its own transaction: visible once committed.
        self.commit().await?;
        self.last_progress_write = Instant::now();
        Ok(())
    }

    /// The progress record for `at`: the last one plus the offsets acknowledged since.
    pub(super) fn progress_at(&self, at: &Checkpoint) -> Progress {
        let mut record = self.progress.clone();
        record.version = 1;
        record.epoch = self.epoch;
        record.pos = at.pos;
        record.event_id = at.event_id.clone();
        record.generation = at.generation;
        for ((topic, partition), next) in &self.next {
            if let Some(tp) = record.topics.get_mut(topic) {
                tp.next.insert(*partition, *next);
            }
        }
        record
    }

    pub(super) async fn try_resume(
        &mut self,
        local: &Checkpoint,
    ) -> Result<Option<Checkpoint>, Failure> {
        // Under HA: fence the previous leader's producer (and end its open
        // transaction) before reading what it wrote.
        let began = Instant::now();
        self.fence_others().await?;
        let topic = self.config.progress_topic.clone();
        let partitions = match self.partition_count(&topic).await? {
            Some(n) => n,
            None => {
                self.create_topic(&topic, 1, true).await?;
                self.partition_count(&topic).await?.ok_or_else(|| {
                    Failure::Broker(format!("progress topic {topic} not visible after creation"))
                })?
            }
        };
        let metadata_ms = began.elapsed().as_millis() as u64;
        let base = self.base.clone();
        let name = self.name.clone();
        let ctx = self.context();
        let committed = self.transactional();
        let stored = tokio::task::spawn_blocking(move || {
            let consumer = progress::consumer(&base, ctx, committed)?;
            progress::read_progress(&consumer, &topic, partitions, &name, STALL)
        })
        .await
        .map_err(|e| Failure::Broker(e.to_string()))??;
        tracing::debug!(sink = %self.name, metadata_ms, read_ms = began.elapsed().as_millis() as u64 - metadata_ms,
            "progress record read");
        let Some(stored) = stored else {
            tracing::info!(sink = %self.name, progress_topic = %self.config.progress_topic, "no progress record yet: starting from the local cursor");
            // The first record written (at the first topic's registration) says so too.
            self.progress.pos = local.pos;
            self.progress.event_id = local.event_id.clone();
            self.progress.generation = local.generation;
            return Ok(None);
        };
        for (t, tp) in &stored.topics {
            match self.partition_count(t).await? {
                Some(n) if n == tp.partitions => {}
                Some(n) => {
                    return Err(Failure::Topics(format!(
                        "topic {t} has {n} partitions, but had {} when pgcdc started writing it: keys \
                         now map to other partitions, so per-key order and the read-back would break. \
                         Restore the partition count, or write to a new topic (change `topic`) and \
                         delete this sink's progress record",
                        tp.partitions
                    )))
                }
                None => {
                    return Err(Failure::Topics(format!(
                        "topic {t}, which this sink's progress record lists, no longer exists; \
                         re-create it, or delete the sink's progress record (a null value for key \
                         {:?} in {}) to start over",
                        self.name, self.config.progress_topic
                    )))
                }
            }
        }
        let reset = stored.generation < local.generation;
        self.progress = stored;
        let found = self.recover().await?;
        if reset {
            // What the broker holds was written before the reset and is sent again:
            // no later read-back may take it for a delivery of the re-sent events.
            self.count_offsets(found.next_where(|_| true));
            // An operator reset the checkpoint after this record: re-send from there,
            // records already in Kafka included. The offsets stay, for later read-backs.
            tracing::info!(sink = %self.name, from = local.pos, recorded = self.progress.pos,
                "the checkpoint was reset after the last progress record; resuming at the reset position");
            self.progress.pos = local.pos;
            self.progress.event_id = local.event_id.clone();
            self.progress.generation = local.generation;
            self.dirty = true;
            return Ok(None);
        }
        tracing::info!(sink = %self.name, pos = self.progress.pos, found = found.records.len(),
            "resuming from the progress record; records found after it will not be written again");
        // Every record found belongs to an event after the record's position: its
        // offset counts for a progress record only once this process has passed
        // the event (then a record it sends after it moves the offset anyway).
        self.seen = found.ids();
        self.dirty = false;
        Ok(Some(Checkpoint {
            pos: self.progress.pos,
            event_id: self.progress.event_id.clone(),
            generation: self.progress.generation,
        }))
    }
}
