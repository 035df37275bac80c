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
//!  sink runner ── RecentReader::read(cursor) ── cursor + 1 in first..=last?
//!                    those events (shared); otherwise None: the runner reads the store
//! ```
//!
//! Memory: an event stays only while a registered reader may still read it
//! from here. Events every reader has read go at the next push; when every
//! reader is behind the tail (a sink draining a backlog from the store), the
//! tail is emptied, and it fills again from the push after one catches up. So
//! a sink that keeps up holds about one batch here, a backlog holds nothing,
//! and sinks of different speeds hold at most `RECENT_BYTES`.
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

/// A journaled event, shared with the sink runners that read it.
pub type Shared = StoredEvent<Arc<ChangeEvent>>;

/// Estimated bytes of events kept at most (the newest ones).
pub(crate) const RECENT_BYTES: usize = 2 << 20;

/// Where the writer stored one entry of an append.
#[derive(Debug)]
pub struct Appended {
    /// The entry's index in the appended batch.
    pub index: usize,
    /// Its journal position.
    pub pos: i64,
    /// The event as stored, when it is not the entry's (old values filled in).
    pub filled: Option<Box<ChangeEvent>>,
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
    events: VecDeque<(Shared, usize)>,
    bytes: usize,
    /// Each registered reader's position: it has every event up to it (None:
    /// the slot is free).
    readers: Vec<Option<i64>>,
}

impl Tail {
    /// The events after `pos` (see [`RecentReader::read`]).
    fn read(&self, pos: i64, limit: usize, max_bytes: usize) -> Option<Vec<Shared>> {
        let first = self.events.front()?.0.pos;
        let skip = usize::try_from(pos.checked_add(1)?.checked_sub(first)?).ok()?;
        if skip >= self.events.len() {
            return None;
        }
        let mut out = Vec::with_capacity(limit.min(self.events.len() - skip));
        let mut bytes = 0usize;
        for (event, size) in self.events.iter().skip(skip).take(limit) {
            bytes = bytes.saturating_add(*size);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(event.clone());
        }
        Some(out)
    }

    /// The position the furthest reader has (None: no reader).
    fn lead(&self) -> Option<i64> {
        self.readers.iter().flatten().copied().max()
    }

    /// Drops events no reader can use any more.
    fn trim(&mut self, max_bytes: usize) {
        // Every reader has them (no reader: nobody ever will).
        let behind = self.readers.iter().flatten().copied().min();
        while let Some((first, _)) = self.events.front() {
            if behind.is_some_and(|b| first.pos > b) {
                break;
            }
            self.pop();
        }
        // Every reader is behind the tail: each reads the store until it catches up.
        if let (Some((first, _)), Some(lead)) = (self.events.front(), self.lead()) {
            if lead < first.pos - 1 {
                self.empty();
            }
        }
        while self.bytes > max_bytes && self.pop() {}
    }

    fn pop(&mut self) -> bool {
        let Some((_, bytes)) = self.events.pop_front() else {
            return false;
        };
        self.bytes -= bytes;
        true
    }

    fn empty(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }
}

/// One sink runner's view of a [`Recent`]: what it reads tells the tail which
/// events it no longer needs. Dropping it lets the tail forget the reader.
#[derive(Debug)]
pub struct RecentReader {
    recent: Arc<Recent>,
    slot: usize,
}

impl RecentReader {
    /// The reader has every event up to `pos` (read from the store, or nothing
    /// left to read): events up to it are no longer kept for it.
    pub fn at(&self, pos: i64) {
        if let Some(at) = self.recent.tail().readers.get_mut(self.slot) {
            *at = Some(pos);
        }
    }

    /// The events after position `pos`, as [`super::StateStore::read_batch`]
    /// gives them (up to `limit`, stopping before `max_bytes` but never empty),
    /// if the tail holds the one right after `pos`; None otherwise.
    pub fn read(&self, pos: i64, limit: usize, max_bytes: usize) -> Option<Vec<Shared>> {
        let mut tail = self.recent.tail();
        let got = tail.read(pos, limit, max_bytes);
        let read_to = got.as_ref().and_then(|b| b.last()).map_or(pos, |e| e.pos);
        if let Some(at) = tail.readers.get_mut(self.slot) {
            *at = Some(read_to);
        }
        got
    }
}

impl Drop for RecentReader {
    fn drop(&mut self) {
        if let Some(at) = self.recent.tail().readers.get_mut(self.slot) {
            *at = None;
        }
    }
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
        self.tail().empty();
    }

    /// Keeps the entries of a durable append, taking them from `entries` (the
    /// batch, as appended, with each entry's sink target): `appended` says where
    /// the writer stored which of them, in order. Entries it does not keep stay
    /// in `entries`.
    pub fn push(&self, entries: &mut Vec<(JournalEntry, Option<String>)>, appended: Vec<Appended>) {
        let follows = |prev: i64, next: i64| prev.checked_add(1) == Some(next);
        let mut tail = self.tail();
        let sound = appended.windows(2).all(|w| w[0].index < w[1].index)
            && appended.last().is_none_or(|a| a.index < entries.len());
        if !sound {
            // Indexes the batch does not have, or out of order: nothing can be trusted.
            tail.empty();
            return;
        }
        // Only the last run of consecutive positions can be kept.
        let cut = appended
            .windows(2)
            .rposition(|w| !follows(w[0].pos, w[1].pos))
            .map_or(0, |i| i + 1);
        let Some(first_new) = appended.get(cut).map(|a| a.pos) else {
            return;
        };
        let joins = tail
            .events
            .back()
            .is_none_or(|(last, _)| follows(last.pos, first_new));
        if cut > 0 || !joins {
            tail.empty();
        }
        // No reader could read them from here: not worth keeping (the journal
        // thread drops the entries as it always did).
        let first = tail.events.front().map_or(first_new, |(e, _)| e.pos);
        if tail.lead().is_none_or(|lead| lead < first - 1) {
            tail.empty();
            return;
        }
        let mut appended = appended.into_iter().skip(cut).peekable();
        for (index, (entry, target)) in entries.drain(..).enumerate() {
            let Some(a) = appended.next_if(|a| a.index == index) else {
                continue;
            };
            let event = a.filled.map_or(entry.event, |filled| *filled);
            let bytes = approx_bytes(&event);
            tail.bytes += bytes;
            tail.events.push_back((
                Shared {
                    pos: a.pos,
                    seq: entry.seq,
                    event: Arc::new(event),
                    target,
                    table: entry.table,
                },
                bytes,
            ));
        }
        tail.trim(self.max_bytes);
    }

    /// A reader for one sink runner (see [`RecentReader`]).
    pub fn reader(self: &Arc<Self>) -> RecentReader {
        let mut tail = self.tail();
        let slot = match tail.readers.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                tail.readers.push(None);
                tail.readers.len() - 1
            }
        };
        // Until its first read it holds nothing back, and is taken to be behind.
        tail.readers[slot] = Some(i64::MIN);
        RecentReader {
            recent: Arc::clone(self),
            slot,
        }
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
