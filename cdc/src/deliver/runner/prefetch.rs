//! The next batch, read on a second journal connection while the sink delivers
//! the one in hand.

use super::JournalReader;
use super::{RunnerError, BATCH_BYTES};
use crate::journal::{JournalError, StoredEvent};

/// A read of the next batch: the reader and the buffer come back with the result.
type PrefetchTask =
    tokio::task::JoinHandle<(JournalReader, Vec<StoredEvent>, Result<(), JournalError>)>;

/// The largest batch buffer kept between batches, in bytes (the Kafka sink's
/// 5,000 events fit; a larger batch reads into fresh ones).
const KEEP_BYTES: usize = 4 << 20;

/// Batch buffers kept between batches: one for the read in hand, one for the
/// prefetch under way.
const KEEP_BUFFERS: usize = 2;

/// The next batch, read on a second journal connection while the sink delivers.
pub(super) struct Prefetch {
    reader: Option<JournalReader>,
    pending: Option<(i64, PrefetchTask)>,
    /// Emptied batch buffers, for the runner's reads and this one's (a fresh
    /// buffer for every batch touched new pages: a stream's most frequent page
    /// fault).
    spares: Vec<Vec<StoredEvent>>,
}

impl Prefetch {
    pub(super) fn new(reader: JournalReader) -> Prefetch {
        Prefetch {
            reader: Some(reader),
            pending: None,
            spares: Vec::new(),
        }
    }

    /// An empty buffer for a batch read: a kept one if there is one.
    pub(super) fn buffer(&mut self) -> Vec<StoredEvent> {
        self.spares.pop().unwrap_or_default()
    }

    /// Starts reading the batch after `from`.
    pub(super) fn start(&mut self, from: i64, limit: usize) {
        if let Some(reader) = self.reader.take() {
            let mut buf = self.buffer();
            self.pending = Some((
                from,
                tokio::task::spawn_blocking(move || {
                    let out = reader.read_batch_into(from, limit, BATCH_BYTES, &mut buf);
                    (reader, buf, out)
                }),
            ));
        }
    }

    /// The prefetched batch, if one was read after `from` (a reset makes it stale)
    /// and is not empty (the journal may have grown since).
    pub(super) async fn take(
        &mut self,
        sink: &str,
        from: i64,
    ) -> Result<Option<Vec<StoredEvent>>, RunnerError> {
        let Some((at, handle)) = self.pending.take() else {
            return Ok(None);
        };
        let (reader, batch, out) = handle
            .await
            .map_err(|e| RunnerError::Task(sink.to_string(), e.to_string()))?;
        self.reader = Some(reader);
        out?;
        if at == from && !batch.is_empty() {
            return Ok(Some(batch));
        }
        self.recycle(batch);
        Ok(None)
    }

    /// Keeps a batch's buffer, emptied, for a later read; one over [`KEEP_BYTES`],
    /// or past [`KEEP_BUFFERS`], is dropped.
    pub(super) fn recycle(&mut self, mut buf: Vec<StoredEvent>) {
        buf.clear();
        let fits = buf.capacity() * std::mem::size_of::<StoredEvent>() <= KEEP_BYTES;
        if fits && self.spares.len() < KEEP_BUFFERS {
            self.spares.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefetch() -> Prefetch {
        Prefetch {
            reader: None,
            pending: None,
            spares: Vec::new(),
        }
    }

    #[test]
    fn an_emptied_batch_buffer_is_kept_for_the_next_read() {
        let mut p = prefetch();
        // A Kafka batch's buffer (5,000 events) is kept, emptied: dropping it
        // made every batch touch fresh pages.
        p.recycle(Vec::with_capacity(5_000));
        let b = p.buffer();
        assert!(b.capacity() >= 5_000 && b.is_empty());
        // Two are kept, a third is dropped.
        for _ in 0..3 {
            p.recycle(Vec::with_capacity(1_000));
        }
        assert_eq!(p.spares.len(), KEEP_BUFFERS);
        // One over the bound is dropped.
        let mut p = prefetch();
        p.recycle(Vec::with_capacity(10_000));
        assert!(p.spares.is_empty());
        assert_eq!(p.buffer().capacity(), 0);
    }
}
