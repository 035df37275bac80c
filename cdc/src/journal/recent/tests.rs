use pgcdc_schema::{EventId, Lsn, Op};
use serde_json::{Map, Value};

use super::*;

fn entry(n: u64, text_bytes: usize) -> (JournalEntry, Option<String>) {
    let mut row = Map::new();
    row.insert("v".into(), Value::String("x".repeat(text_bytes)));
    let event = ChangeEvent {
        id: EventId::from_position(Lsn(n), 0),
        op: Op::Insert,
        schema: "public".into(),
        table: "t".into(),
        key: None,
        old: None,
        new: Some(row.into()),
        trigger: None,
        lsn: Lsn(n),
        xid: None,
        commit_time: None,
        unchanged_toast: vec![],
        columns: None,
        previous: None,
        origin: Default::default(),
    };
    let entry = JournalEntry {
        table: "public.t".into(),
        seq: 0,
        commit_time_unix_us: None,
        event,
    };
    (entry, None)
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

fn positions(events: &[StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.pos).collect()
}

#[test]
fn a_cursor_inside_the_tail_reads_what_follows_it() {
    let recent = Recent::default();
    let mut entries = batch(1..=5);
    recent.push(&mut entries, at(11, 5));
    assert!(entries.is_empty(), "the entries are taken, not copied");
    let got = recent.read(12, 10, usize::MAX).unwrap_or_default();
    assert_eq!(positions(&got), [13, 14, 15]);
    assert_eq!(
        got[0].event.lsn,
        Lsn(3),
        "position 13 is the batch's third entry"
    );
    assert_eq!(
        positions(&recent.read(10, 2, usize::MAX).unwrap_or_default()),
        [11, 12]
    );
    // Before the tail, at its end or past it: the store answers.
    assert!(recent.read(9, 10, usize::MAX).is_none());
    assert!(recent.read(15, 10, usize::MAX).is_none());
    assert!(recent.read(i64::MAX, 10, usize::MAX).is_none());
    assert!(recent.read(i64::MIN, 10, usize::MAX).is_none());
}

#[test]
fn only_appended_entries_are_kept_at_their_positions_and_as_stored() {
    let recent = Recent::default();
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
            filled: Some(filled),
        },
    ];
    recent.push(&mut entries, appended);
    let got = recent.read(6, 10, usize::MAX).unwrap_or_default();
    assert_eq!(positions(&got), [7, 8]);
    assert_eq!(got[0].event.lsn, Lsn(3));
    assert_eq!(got[1].event.trigger.as_deref(), Some("as stored"));
}

#[test]
fn a_batch_that_does_not_follow_starts_the_tail_anew() {
    let recent = Recent::default();
    recent.push(&mut batch(1..=3), at(1, 3));
    // Positions 4..=5 were written without the writer saying where: a gap.
    recent.push(&mut batch(6..=7), at(6, 2));
    assert!(
        recent.read(2, 10, usize::MAX).is_none(),
        "1..=3 are forgotten"
    );
    assert!(recent.read(3, 10, usize::MAX).is_none(), "4 was never kept");
    assert_eq!(
        positions(&recent.read(5, 10, usize::MAX).unwrap_or_default()),
        [6, 7]
    );
    // A batch with a gap inside keeps what follows the gap only.
    let mut gappy = batch(8..=10);
    let mut appended = at(8, 3);
    appended[2].pos = 20;
    recent.push(&mut gappy, appended);
    assert!(recent.read(7, 10, usize::MAX).is_none());
    assert_eq!(
        positions(&recent.read(19, 10, usize::MAX).unwrap_or_default()),
        [20]
    );
    // An index the batch does not have: nothing is kept.
    let mut short = batch(11..=11);
    let mut appended = at(21, 1);
    appended[0].index = 5;
    recent.push(&mut short, appended);
    assert!(recent.read(19, 10, usize::MAX).is_none());
    assert!(recent.read(20, 10, usize::MAX).is_none());
    // A writer that does not say where keeps nothing new.
    recent.push(&mut batch(12..=12), Vec::new());
    assert!(recent.read(21, 10, usize::MAX).is_none());
}

#[test]
fn the_oldest_events_go_once_past_the_byte_budget() {
    let one = approx_bytes(&entry(1, 1000).0.event);
    let recent = Recent::with_max_bytes(3 * one);
    let mut entries: Vec<_> = (1..=5).map(|n| entry(n, 1000)).collect();
    recent.push(&mut entries, at(1, 5));
    assert!(recent.read(1, 10, usize::MAX).is_none(), "1 and 2 are gone");
    assert_eq!(
        positions(&recent.read(2, 10, usize::MAX).unwrap_or_default()),
        [3, 4, 5]
    );
    // A read stops before its byte limit, but never comes back empty.
    assert_eq!(
        positions(&recent.read(2, 10, 2 * one).unwrap_or_default()),
        [3, 4]
    );
    assert_eq!(positions(&recent.read(2, 10, 1).unwrap_or_default()), [3]);
    recent.clear();
    assert!(recent.read(2, 10, usize::MAX).is_none());
}

#[test]
fn events_read_from_the_tail_are_shared_not_copied() {
    let recent = Recent::default();
    recent.push(&mut batch(1..=1), at(1, 1));
    let a = recent.read(0, 1, usize::MAX).unwrap_or_default();
    let b = recent.read(0, 1, usize::MAX).unwrap_or_default();
    assert!(Arc::ptr_eq(&a[0].event, &b[0].event));
}
