//! The events this process journaled last, kept in memory so that a sink
//! runner that keeps up reads them from here instead of reading their records
//! back from the store and decoding them again.
//!
//! ```text
//!  journal thread ── append (durable) ── push(entries, where the writer put them)
//!                                             │
//!                                  Recent: positions first..=last, contiguous,
//!                                  at most RECENT_BYTES (oldest dropped first)
//!                                             │
//!  sink runner ── read(cursor) ── cursor + 1 in first..=last? those events (shared)
//!                               └─ otherwise: None, the runner reads the store
//! ```
//!
//! Only what the store holds durably is pushed (after the append's commit), at
//! the positions the writer stored it, as the writer stored it (old values
//! filled in from row state included); a batch that does not follow the last
//! one (the writer skipped or could not say where entries went) starts the
//! tail anew. A position's event never changes once written, so serving it
//! from here or from the store gives the same event; reading the store stays
//! the path for everything else (a restart, a reset cursor, a slow sink, other
//! processes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use pgcdc_schema::event::Row;
use pgcdc_schema::ChangeEvent;

use super::{JournalEntry, StoredEvent};

/// Estimated bytes of events kept at most (the newest ones).
pub(crate) const RECENT_BYTES: usize = 8 << 20;

/// Where the writer stored one entry of an append.
#[derive(Debug)]
pub struct Appended {
    /// The entry's index in the appended batch.
    pub index: usize,
    /// Its journal position.
    pub pos: i64,
    /// The event as stored, when it is not the entry's (old values filled in).
    pub filled: Option<ChangeEvent>,
}

/// The newest journaled events (see the module doc). Shared by a store's clones.
#[derive(Debug)]
pub struct Recent {
    inner: Mutex<Tail>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Tail {
    /// Consecutive positions, oldest first, with each event's estimated bytes.
    events: VecDeque<(StoredEvent, usize)>,
    bytes: usize,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent::with_max_bytes(RECENT_BYTES)
    }
}

impl Recent {
    /// A tail that keeps events up to `max_bytes` (estimated).
    pub fn with_max_bytes(max_bytes: usize) -> Recent {
        Recent {
            inner: Mutex::new(Tail::default()),
            max_bytes,
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A panic while holding the lock leaves whole entries: still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets every event (a new writer starts).
    pub fn clear(&self) {
        let old = std::mem::take(&mut *self.tail());
        drop(old);
    }

    /// Keeps the entries of a durable append, taking them from `entries` (the
    /// batch, as appended, with each entry's sink target): `appended` says where
    /// the writer stored which of them, in order.
    pub fn push(&self, entries: &mut Vec<(JournalEntry, Option<String>)>, appended: Vec<Appended>) {
        if appended.is_empty() {
            return;
        }
        // Both in batch order: one pass takes each appended entry.
        let mut fresh = Vec::with_capacity(appended.len());
        let mut appended = appended.into_iter().peekable();
        for (index, (entry, target)) in entries.drain(..).enumerate() {
            let Some(a) = appended.next_if(|a| a.index == index) else {
                continue;
            };
            let event = a.filled.unwrap_or(entry.event);
            let bytes = approx_bytes(&event);
            fresh.push((
                StoredEvent {
                    pos: a.pos,
                    seq: entry.seq,
                    event: Arc::new(event),
                    target,
                    table: entry.table,
                },
                bytes,
            ));
        }
        if appended.next().is_some() {
            // An index the batch does not have, or out of order: nothing can be trusted.
            drop(fresh);
            self.clear();
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut tail = self.tail();
            let follows = |prev: i64, next: i64| prev.checked_add(1) == Some(next);
            let contiguous = fresh.windows(2).all(|w| follows(w[0].0.pos, w[1].0.pos));
            let joins = match (tail.events.back(), fresh.first()) {
                (Some((last, _)), Some((first, _))) => follows(last.pos, first.pos),
                _ => true,
            };
            if !contiguous {
                dropped.extend(tail.events.drain(..));
                tail.bytes = 0;
                // Keep what follows the last break only.
                let cut = fresh
                    .windows(2)
                    .rposition(|w| !follows(w[0].0.pos, w[1].0.pos))
                    .map_or(0, |i| i + 1);
                dropped.extend(fresh.drain(..cut));
            } else if !joins {
                dropped.extend(tail.events.drain(..));
                tail.bytes = 0;
            }
            for (event, bytes) in fresh {
                tail.bytes += bytes;
                tail.events.push_back((event, bytes));
            }
            while tail.bytes > self.max_bytes {
                let Some((event, bytes)) = tail.events.pop_front() else {
                    break;
                };
                tail.bytes -= bytes;
                dropped.push((event, bytes));
            }
        }
        // Freed outside the lock.
        drop(dropped);
    }

    /// The events after position `pos`, as [`super::StateStore::read_batch`]
    /// gives them (up to `limit`, stopping before `max_bytes` but never empty),
    /// if this tail holds the one right after `pos`; None otherwise.
    pub fn read(&self, pos: i64, limit: usize, max_bytes: usize) -> Option<Vec<StoredEvent>> {
        let tail = self.tail();
        let first = tail.events.front()?.0.pos;
        let skip = usize::try_from(pos.checked_add(1)?.checked_sub(first)?).ok()?;
        if skip >= tail.events.len() {
            return None;
        }
        let mut out = Vec::with_capacity(limit.min(tail.events.len() - skip));
        let mut bytes = 0usize;
        for (event, size) in tail.events.iter().skip(skip).take(limit) {
            bytes = bytes.saturating_add(*size);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(event.clone());
        }
        Some(out)
    }
}

/// Rough heap size of an event: its rows' values plus a fixed overhead.
pub(crate) fn approx_bytes(event: &ChangeEvent) -> usize {
    let rows = [&event.key, &event.old, &event.new];
    // The origin's column types and the rows' column names are shared with the
    // relation: a pointer each. The event's own strings (id, schema, table).
    let own = event.id.as_str().len() + event.schema.len() + event.table.len();
    256 + own
        + rows
            .into_iter()
            .flatten()
            .map(Row::heap_bytes)
            .sum::<usize>()
}

#[cfg(test)]
mod tests;
