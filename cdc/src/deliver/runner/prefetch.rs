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

/// The next batch, read on a second journal connection while the sink delivers.
pub(super) struct Prefetch {
    reader: Option<JournalReader>,
    pending: Option<(i64, PrefetchTask)>,
    /// The buffer the next read fills (see [`Prefetch::recycle`]).
    spare: Vec<StoredEvent>,
}

impl Prefetch {
    pub(super) fn new(reader: JournalReader) -> Prefetch {
        Prefetch {
            reader: Some(reader),
            pending: None,
            spare: Vec::new(),
        }
    }

    /// Starts reading the batch after `from`.
    pub(super) fn start(&mut self, from: i64, limit: usize) {
        if let Some(reader) = self.reader.take() {
            let mut buf = std::mem::take(&mut self.spare);
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

    /// Keeps an emptied batch's buffer for the next read, or gives it back to
    /// the runner when this already has one (`Some`). A buffer over
    /// [`KEEP_BYTES`] is dropped.
    pub(super) fn recycle(&mut self, mut buf: Vec<StoredEvent>) -> Option<Vec<StoredEvent>> {
        buf.clear();
        if buf.capacity() * std::mem::size_of::<StoredEvent>() > KEEP_BYTES {
            return None;
        }
        if self.spare.capacity() == 0 {
            self.spare = buf;
            None
        } else {
            Some(buf)
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
            spare: Vec::new(),
        }
    }

    #[test]
    fn an_emptied_batch_buffer_is_kept_for_the_next_read() {
        let mut p = prefetch();
        // A Kafka batch's buffer (5,000 events) is kept: dropping it made every
        // batch touch fresh pages.
        assert!(p.recycle(Vec::with_capacity(5_000)).is_none());
        assert!(p.spare.capacity() >= 5_000);
        // With one kept, the next goes back to the runner.
        let back = p.recycle(Vec::with_capacity(1_000));
        assert!(back.is_some_and(|b| b.capacity() >= 1_000 && b.is_empty()));
        // One over the bound is dropped.
        let mut p = prefetch();
        assert!(p.recycle(Vec::with_capacity(10_000)).is_none());
        assert_eq!(p.spare.capacity(), 0);
    }
}
