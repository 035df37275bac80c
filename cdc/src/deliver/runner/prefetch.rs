//! The next batch, read on a second journal connection while the sink delivers
//! the one in hand.

use super::JournalReader;
use super::{RunnerError, BATCH_BYTES};
use crate::journal::{JournalError, StoredEvent};

/// A read of the next batch: the reader comes back with the result.
type PrefetchTask =
    tokio::task::JoinHandle<(JournalReader, Result<Vec<StoredEvent>, JournalError>)>;

/// The next batch, read on a second journal connection while the sink delivers.
pub(super) struct Prefetch {
    reader: Option<JournalReader>,
    pending: Option<(i64, PrefetchTask)>,
}

impl Prefetch {
    pub(super) fn new(reader: JournalReader) -> Prefetch {
        Prefetch {
            reader: Some(reader),
            pending: None,
        }
    }

    /// Starts reading the batch after `from`.
    pub(super) fn start(&mut self, from: i64, limit: usize) {
        if let Some(reader) = self.reader.take() {
            self.pending = Some((
                from,
                tokio::task::spawn_blocking(move || {
                    let out = reader.read_batch(from, limit, BATCH_BYTES);
                    (reader, out)
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
        let (reader, out) = handle
            .await
            .map_err(|e| RunnerError::Task(sink.to_string(), e.to_string()))?;
        self.reader = Some(reader);
        let batch = out?;
        Ok((at == from && !batch.is_empty()).then_some(batch))
    }
}
