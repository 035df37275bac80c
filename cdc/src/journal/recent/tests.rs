use pgcdc_schema::Lsn;

use super::*;
use crate::journal::insert_entry;

fn entry(n: u64, text_bytes: usize) -> (JournalEntry, Option<String>) {
    (insert_entry(n, text_bytes), None)
}

fn batch(lsns: std::ops::RangeInclusive<u64>) -> Vec<(JournalEntry, Option<String>)> {
    lsns.map(|n| entry(n, 10)).collect()
}

/// Every entry of the batch stored at `first`, `first + 1`, ...
fn at(first: i64, n: usize) -> Vec<Appended> {
    (0..n)
        .map(|i| Appended {
            index: i,
            pos: first + i as i64,
            filled: None,
        })
        .collect()
}

fn positions(events: Option<Vec<Shared>>) -> Vec<i64> {
    events.unwrap_or_default().iter().map(|e| e.pos).collect()
}

/// A tail and one reader that has read up to `pos`.
fn tail_read_to(pos: i64, max_bytes: usize) -> (Arc<Recent>, RecentReader) {
    let recent = Arc::new(Recent::with_max_bytes(max_bytes));
    let reader = recent.reader();
    assert!(reader.read(pos, 10, usize::MAX).is_none(), "empty");
    (recent, reader)
}

#[test]
fn a_cursor_inside_the_tail_reads_what_follows_it() {
    let (recent, r) = tail_read_to(10, RECENT_BYTES);
    let mut entries = batch(1..=5);
    recent.push(&mut entries, at(11, 5));
    assert!(entries.is_empty(), "the entries are taken, not copied");
    let got = r.read(12, 10, usize::MAX).unwrap_or_default();
    assert_eq!(got.iter().map(|e| e.pos).collect::<Vec<_>>(), [13, 14, 15]);
    assert_eq!(
        got[0].event.lsn,
        Lsn(3),
        "position 13 is the batch's third entry"
    );
    // Until the next push, what was read can be read again.
    assert_eq!(positions(r.read(10, 2, usize::MAX)), [11, 12]);
    // Before the tail, at its end or past it: the store answers.
    assert!(r.read(9, 10, usize::MAX).is_none());
    assert!(r.read(15, 10, usize::MAX).is_none());
    assert!(r.read(i64::MAX, 10, usize::MAX).is_none());
    assert!(r.read(i64::MIN, 10, usize::MAX).is_none());
}

#[test]
fn only_appended_entries_are_kept_at_their_positions_and_as_stored() {
    let (recent, r) = tail_read_to(6, RECENT_BYTES);
    let mut entries = batch(1..=4);
    // The first two were journaled before (skipped); the fourth was stored filled in.
    let mut filled = entries[3].0.event.clone();
    filled.trigger = Some("as stored".into());
    let appended = vec![
        Appended {
            index: 2,
            pos: 7,
            filled: None,
        },
        Appended {
            index: 3,
            pos: 8,
            filled: Some(Box::new(filled)),
        },
    ];
    recent.push(&mut entries, appended);
    let got = r.read(6, 10, usize::MAX).unwrap_or_default();
    assert_eq!(got.iter().map(|e| e.pos).collect::<Vec<_>>(), [7, 8]);
    assert_eq!(got[0].event.lsn, Lsn(3));
    assert_eq!(got[1].event.trigger.as_deref(), Some("as stored"));
}

#[test]
fn a_batch_that_does_not_follow_starts_the_tail_anew() {
    let (recent, r) = tail_read_to(0, RECENT_BYTES);
    recent.push(&mut batch(1..=3), at(1, 3));
    assert!(r.read(5, 10, usize::MAX).is_none(), "past the tail");
    // Positions 4..=5 were written without the writer saying where: a gap.
    recent.push(&mut batch(6..=7), at(6, 2));
    assert!(r.read(0, 10, usize::MAX).is_none(), "1..=3 are forgotten");
    assert!(r.read(3, 10, usize::MAX).is_none(), "4 was never kept");
    assert_eq!(positions(r.read(5, 10, usize::MAX)), [6, 7]);
    // A batch with a gap inside keeps what follows the gap only.
    let mut gappy = batch(8..=10);
    let mut appended = at(8, 3);
    appended[2].pos = 20;
    assert!(r.read(19, 10, usize::MAX).is_none());
    recent.push(&mut gappy, appended);
    assert!(r.read(7, 10, usize::MAX).is_none());
    assert_eq!(positions(r.read(19, 10, usize::MAX)), [20]);
    // An index the batch does not have: nothing is kept.
    let mut short = batch(11..=11);
    let mut appended = at(21, 1);
    appended[0].index = 5;
    recent.push(&mut short, appended);
    assert!(r.read(19, 10, usize::MAX).is_none());
    assert!(r.read(20, 10, usize::MAX).is_none());
    // A writer that does not say where keeps nothing new.
    recent.push(&mut batch(12..=12), Vec::new());
    assert!(r.read(21, 10, usize::MAX).is_none());
}

#[test]
fn the_oldest_events_go_once_past_the_byte_budget() {
    let one = approx_bytes(&entry(1, 1000).0.event);
    let recent = Arc::new(Recent::with_max_bytes(3 * one));
    let (slow, fast) = (recent.reader(), recent.reader());
    assert!(slow.read(0, 10, usize::MAX).is_none());
    assert!(fast.read(2, 10, usize::MAX).is_none());
    let mut entries: Vec<_> = (1..=5).map(|n| entry(n, 1000)).collect();
    recent.push(&mut entries, at(1, 5));
    assert!(slow.read(0, 10, usize::MAX).is_none(), "1 and 2 are gone");
    // A read stops before its byte limit, but never comes back empty.
    assert_eq!(positions(fast.read(2, 10, 1)), [3]);
    assert_eq!(positions(fast.read(2, 10, 2 * one)), [3, 4]);
    assert_eq!(positions(fast.read(2, 10, usize::MAX)), [3, 4, 5]);
    recent.clear();
    assert!(fast.read(2, 10, usize::MAX).is_none());
}

#[test]
fn events_every_reader_has_read_go_at_the_next_push() {
    let recent = Arc::new(Recent::default());
    let (a, b) = (recent.reader(), recent.reader());
    assert!(a.read(0, 10, usize::MAX).is_none());
    assert!(b.read(0, 10, usize::MAX).is_none());
    recent.push(&mut batch(1..=4), at(1, 4));
    assert_eq!(positions(a.read(0, 10, usize::MAX)), [1, 2, 3, 4]);
    assert_eq!(positions(b.read(0, 2, usize::MAX)), [1, 2]);
    recent.push(&mut batch(5..=5), at(5, 1));
    // b has read up to 2: 1 and 2 are gone, 3 stays for it.
    assert!(a.read(0, 10, usize::MAX).is_none());
    assert_eq!(positions(b.read(2, 10, usize::MAX)), [3, 4, 5]);
    // A reader that goes away holds nothing back.
    drop(b);
    assert_eq!(positions(a.read(4, 10, usize::MAX)), [5]);
    recent.push(&mut batch(6..=6), at(6, 1));
    assert!(
        a.read(4, 10, usize::MAX).is_none(),
        "5 is read by every reader left"
    );
    assert_eq!(positions(a.read(5, 10, usize::MAX)), [6]);
    // No reader at all: nothing is kept.
    drop(a);
    recent.push(&mut batch(7..=7), at(7, 1));
    let c = recent.reader();
    assert!(c.read(6, 10, usize::MAX).is_none());
}

#[test]
fn a_reader_behind_the_tail_empties_it_until_it_catches_up() {
    let (recent, r) = tail_read_to(0, RECENT_BYTES);
    recent.push(&mut batch(1..=3), at(1, 3));
    assert_eq!(positions(r.read(0, 1, usize::MAX)), [1]);
    // The sink fell behind: 2 and 3 unread when 1 was all it took. A push that
    // finds it behind the tail's first event keeps nothing.
    recent.push(&mut batch(4..=4), at(4, 1));
    assert_eq!(
        positions(r.read(1, 10, usize::MAX)),
        [2, 3, 4],
        "still in reach"
    );
    let (recent, r) = tail_read_to(0, 3 * approx_bytes(&entry(1, 10).0.event));
    recent.push(&mut batch(1..=5), at(1, 5));
    assert!(r.read(0, 10, usize::MAX).is_none(), "out of reach: emptied");
    recent.push(&mut batch(6..=6), at(6, 1));
    assert!(
        r.read(4, 10, usize::MAX).is_none(),
        "still behind (it reads the store)"
    );
    // Caught up (at the head, 6): the next push is kept for it.
    assert!(r.read(6, 10, usize::MAX).is_none());
    recent.push(&mut batch(7..=8), at(7, 2));
    assert_eq!(positions(r.read(6, 10, usize::MAX)), [7, 8]);
}

#[test]
fn events_read_from_the_tail_are_shared_not_copied() {
    let (recent, r) = tail_read_to(0, RECENT_BYTES);
    recent.push(&mut batch(1..=1), at(1, 1));
    let a = r.read(0, 1, usize::MAX).unwrap_or_default();
    let b = r.read(0, 1, usize::MAX).unwrap_or_default();
    assert!(Arc::ptr_eq(&a[0].event, &b[0].event));
}
