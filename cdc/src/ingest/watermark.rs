//! The reader's half of the watermark algorithm (DBLog, Debezium incremental
//! snapshots): a resync chunk is a SELECT bracketed by a low and a high
//! watermark written into the WAL. Between the two, in stream order, every
//! change of the chunk's table drops that row from the chunk, because the
//! stream carries a state at least as new as the SELECT saw. At the high
//! watermark the rows left are journaled as `read` events, in the high
//! watermark's transaction, so they come after every change committed
//! before it and before every change committed after it.
//!
//! ```text
//!  driver: open window ─ emit low ─ SELECT chunk ─ set rows ─ emit high ─ wait
//!  reader:               low seen ─ changes drop rows ──────── high: journal rest ─▶ reply
//! ```
//!
//! One window at a time; its rows (one chunk) bound the memory.
//!
//! A change the stream carried *before* the low watermark can still be missing
//! from the SELECT: Postgres sends a transaction as soon as its commit record is
//! flushed, and a snapshot sees it only a moment later (a round trip later under
//! synchronous replication). The driver hands over the transactions its snapshot
//! did not see (`ingest::visibility`); the reader remembers the last commits and
//! the keys the last transactions changed in the table under resync
//! ([`Recent`]), and drops the rows of such a transaction's keys too; when that
//! transaction is older than what it remembers of the table, it drops the chunk
//! and the driver reads it again.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use pgcdc_schema::event::Row;
use pgcdc_schema::{ChangeEvent, Op};
use tokio::sync::oneshot;

use pgcdc_schema::{Lsn, TableName};

/// Prefix of pgcdc's watermark messages (`pg_logical_emit_message`).
pub(crate) const PREFIX: &str = "pgcdc";

/// The rows a chunk's SELECT returned.
#[derive(Debug, Default)]
pub(crate) struct ChunkRows {
    /// Key and full row of each selected row, in key order.
    pub(crate) rows: Vec<(Row, Row)>,
    /// Key (raw text values, JSON) of the last selected row: the next chunk starts after it.
    pub(crate) last_key: Option<String>,
    /// Whether this is the table's last chunk.
    pub(crate) done: bool,
    /// The table's column types (see `Origin::column_types`).
    pub(crate) column_types: pgcdc_schema::event::ColumnTypes,
    /// The transactions the SELECT's snapshot did not see (`None`: unknown, as
    /// in tests that do not care).
    pub(crate) unseen: Option<Unseen>,
}

/// The transactions a snapshot does not see: those running when it was taken
/// (`xip`) and every one at or after `xmax` (the last finished one's successor:
/// a transaction that started before the snapshot can be among them). 32-bit
/// ids, as pgoutput sends them.
#[derive(Debug, Clone)]
pub(crate) struct Unseen {
    /// `pg_snapshot_xmax`.
    pub(crate) xmax: u32,
    /// `pg_snapshot_xip`.
    pub(crate) xip: Vec<u32>,
}

impl Unseen {
    /// Whether the snapshot does not see `xid` (one that has started).
    pub(crate) fn contains(&self, xid: u32) -> bool {
        // Modulo 2^32, as Postgres compares transaction ids.
        (xid.wrapping_sub(self.xmax) as i32) >= 0 || self.xip.contains(&xid)
    }
}

/// How many of the stream's last commits, and of the changes of the table under
/// resync, the reader remembers. A transaction a chunk's snapshot missed although
/// it committed before the low watermark is between writing its commit record and
/// becoming visible: a moment, or a synchronous standby's round trip.
const RECENT: usize = 16_384;

/// How much older (commit time) than the newest commit a commit may be and still
/// count as possibly not visible yet: an hour, in which far fewer than 2^31
/// transaction ids go by.
const STILL_COMMITTING: i64 = 3_600_000_000;

/// Bytes of keys remembered at most (with [`RECENT`]).
const RECENT_KEY_BYTES: usize = 4 << 20;

/// What the reader remembers of the stream's recent past.
#[derive(Debug, Default)]
struct Recent {
    /// The last commits (transaction id, commit LSN, commit time in µs), oldest
    /// first; the last one is the transaction being decoded.
    commits: VecDeque<(u32, Lsn, i64)>,
    /// The table under resync (the last window's).
    table: Option<TableName>,
    /// Its last changes (transaction, commit LSN, key text; `None`: truncated), oldest first.
    changes: VecDeque<(u32, Lsn, Option<String>)>,
    key_bytes: usize,
    /// Transactions committed at or after this LSN are whole in `changes`.
    covered_from: Option<Lsn>,
}

impl Recent {
    fn begin(&mut self, xid: u32, commit_lsn: Lsn, commit_time: i64) {
        if self.commits.len() == RECENT {
            self.commits.pop_front();
        }
        self.commits.push_back((xid, commit_lsn, commit_time));
        if self.table.is_some() && self.covered_from.is_none() {
            self.covered_from = Some(commit_lsn);
        }
    }

    /// Starts remembering `table`'s changes (kept if it already is).
    fn track(&mut self, table: &TableName) {
        if self.table.as_ref() != Some(table) {
            *self = Recent {
                commits: std::mem::take(&mut self.commits),
                table: Some(table.clone()),
                ..Recent::default()
            };
        }
    }

    fn untrack(&mut self) {
        *self = Recent {
            commits: std::mem::take(&mut self.commits),
            ..Recent::default()
        };
    }

    fn tracks(&self, event: &ChangeEvent) -> bool {
        self.table
            .as_ref()
            .is_some_and(|t| *event.schema == *t.schema && *event.table == *t.table)
    }

    fn remember(&mut self, xid: u32, commit_lsn: Lsn, key: Option<String>) {
        self.key_bytes += key.as_ref().map_or(0, String::len);
        self.changes.push_back((xid, commit_lsn, key));
        while self.changes.len() > RECENT || self.key_bytes > RECENT_KEY_BYTES {
            let Some((_, at, key)) = self.changes.pop_front() else {
                break;
            };
            self.key_bytes -= key.as_ref().map_or(0, String::len);
            // That transaction may have lost a change: only later ones are whole.
            let after = Lsn(at.0.saturating_add(1));
            self.covered_from = Some(self.covered_from.map_or(after, |c| c.max(after)));
        }
    }

    /// The commits that may still be invisible: those less than [`STILL_COMMITTING`]
    /// older than the newest. (32-bit ids compare modulo 2^32: one that
    /// committed 2^31 ids ago would look like one not seen yet.)
    fn committing(&self) -> impl Iterator<Item = (u32, Lsn)> + '_ {
        let newest = self.commits.back().map_or(0, |c| c.2);
        self.commits
            .iter()
            .filter(move |c| c.2 >= newest.saturating_sub(STILL_COMMITTING))
            .map(|&(xid, at, _)| (xid, at))
    }

    /// For a window whose SELECT did not see `unseen`: the keys changed by those of
    /// them committed before `low` (`None` as a key: one truncated the table), or
    /// `None` when one of them committed before what is remembered of the table.
    fn missed(&self, unseen: &Unseen, low: Lsn) -> Option<Vec<Option<&str>>> {
        let mut keys = Vec::new();
        for (xid, at) in self
            .committing()
            .filter(|&(xid, at)| at < low && unseen.contains(xid))
        {
            if self.covered_from.is_none_or(|from| at < from) {
                return None;
            }
            keys.extend(
                self.changes
                    .iter()
                    .filter(|(x, c, _)| *x == xid && *c == at)
                    .map(|(_, _, key)| key.as_deref()),
            );
        }
        Some(keys)
    }
}

/// One chunk's window, from the driver's open to the reader's high watermark.
#[derive(Debug)]
pub(crate) struct Window {
    /// Unique per attempt: watermarks of an abandoned attempt are ignored.
    pub(crate) token: String,
    /// The resync.
    pub(crate) resync_id: i64,
    /// The table.
    pub(crate) table: TableName,
    /// Only this sink receives the rows.
    pub(crate) target: Option<String>,
    /// Set by the driver after its SELECT (before it emits the high watermark).
    pub(crate) rows: Option<ChunkRows>,
    /// Told once the chunk is journaled.
    pub(crate) done: Option<oneshot::Sender<()>>,
    low_seen: bool,
    /// Commit LSN of the low watermark's transaction.
    low_commit: Lsn,
    truncated: bool,
    changed: HashSet<String>,
}

impl Window {
    /// A window not yet seen by the reader.
    pub(crate) fn new(
        token: String,
        resync_id: i64,
        table: TableName,
        target: Option<String>,
        done: oneshot::Sender<()>,
    ) -> Self {
        Window {
            token,
            resync_id,
            table,
            target,
            rows: None,
            done: Some(done),
            low_seen: false,
            low_commit: Lsn(0),
            truncated: false,
            changed: HashSet::new(),
        }
    }

    /// Drops the chunk's rows under these keys (`None`: the table was truncated).
    fn drop_keys(&mut self, keys: impl IntoIterator<Item = Option<String>>) {
        for key in keys {
            match key {
                Some(key) => {
                    self.changed.insert(key);
                }
                None => self.truncated = true,
            }
        }
    }

    /// The rows to journal: those no change touched inside the window.
    pub(crate) fn surviving_rows(&mut self) -> Vec<(Row, Row)> {
        let Some(chunk) = self.rows.as_mut() else {
            return Vec::new();
        };
        let rows = std::mem::take(&mut chunk.rows);
        if self.truncated {
            return Vec::new();
        }
        rows.into_iter()
            .filter(|(key, _)| !self.changed.contains(&key_text(key)))
            .collect()
    }
}

/// The row key as compared between stream and chunk.
pub(crate) fn key_text(key: &Row) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

/// What a watermark message means for the reader.
#[derive(Debug)]
pub(crate) enum Watermark {
    /// Not ours, or of an abandoned attempt.
    Ignored,
    /// Low watermark: the window is open.
    Low,
    /// High watermark: journal the window's surviving rows.
    High(Box<Window>),
    /// High watermark of a chunk whose SELECT missed a transaction committed
    /// before the low one, older than the table's changes remembered: dropped,
    /// the driver reads it again.
    Missed,
}

/// The open window and what the reader remembers, shared by the resync driver
/// and the reader.
#[derive(Debug, Clone, Default)]
pub(crate) struct Windows(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    window: Option<Window>,
    recent: Recent,
}

impl Windows {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a window (replacing any abandoned one); the reader remembers the
    /// table's changes from now on.
    pub(crate) fn open(&self, window: Window) {
        let mut shared = self.lock();
        shared.recent.track(&window.table);
        shared.window = Some(window);
    }

    /// The resync is over: its table's changes are no longer remembered.
    pub(crate) fn finished(&self) {
        let mut shared = self.lock();
        shared.window = None;
        shared.recent.untrack();
    }

    /// Hands the chunk's rows to the window; false when it is gone.
    pub(crate) fn set_rows(&self, token: &str, rows: ChunkRows) -> bool {
        match self.lock().window.as_mut() {
            Some(w) if w.token == token => {
                w.rows = Some(rows);
                true
            }
            _ => false,
        }
    }

    /// Closes the window if it is still this one (abandoned attempt, cancel).
    pub(crate) fn close(&self, token: &str) {
        let mut shared = self.lock();
        if shared.window.as_ref().is_some_and(|w| w.token == token) {
            shared.window = None;
        }
    }

    /// A transaction begins in the stream (pgoutput sends it whole, at its commit).
    pub(crate) fn on_begin(&self, xid: u32, commit_lsn: Lsn, commit_time: i64) {
        self.lock().recent.begin(xid, commit_lsn, commit_time);
    }

    /// Whether a snapshot that does not see `unseen` misses one of the last
    /// commits the stream carried.
    pub(crate) fn misses_commits(&self, unseen: &Unseen) -> bool {
        let shared = self.lock();
        let missed = shared
            .recent
            .committing()
            .any(|(xid, _)| unseen.contains(xid));
        missed
    }

    /// A watermark message's content, as the reader sees it in the stream.
    pub(crate) fn on_message(&self, content: &[u8]) -> Watermark {
        let Ok(text) = std::str::from_utf8(content) else {
            return Watermark::Ignored;
        };
        let mut guard = self.lock();
        let shared = &mut *guard;
        let Some(window) = shared.window.as_mut() else {
            return Watermark::Ignored;
        };
        match text.split_once(':') {
            Some(("low", token)) if token == window.token => {
                window.low_seen = true;
                window.low_commit = shared.recent.commits.back().map_or(Lsn(0), |c| c.1);
                Watermark::Low
            }
            // A high watermark without the low one (never expected) or without rows
            // (the driver failed between them) journals nothing: the driver retries.
            Some(("high", token)) if token == window.token && window.low_seen => {
                let Some(mut w) = shared.window.take().filter(|w| w.rows.is_some()) else {
                    return Watermark::Ignored;
                };
                let unseen = w.rows.as_ref().and_then(|r| r.unseen.as_ref());
                match unseen.map_or(Some(Vec::new()), |u| shared.recent.missed(u, w.low_commit)) {
                    Some(keys) => {
                        if !keys.is_empty() {
                            tracing::info!(resync = w.resync_id, keys = keys.len(), "the chunk's snapshot missed transactions committed before its low watermark; their rows are left to the stream");
                        }
                        w.drop_keys(keys.into_iter().map(|k| k.map(str::to_string)));
                        Watermark::High(Box::new(w))
                    }
                    None => {
                        tracing::info!(resync = w.resync_id, "the chunk's snapshot missed a transaction committed before its low watermark, older than the changes remembered; reading the chunk again");
                        Watermark::Missed
                    }
                }
            }
            _ => Watermark::Ignored,
        }
    }

    /// A streamed change: remembered if its table is under resync; inside an open
    /// window, its row leaves the chunk.
    pub(crate) fn on_change(&self, event: &ChangeEvent) {
        let mut guard = self.lock();
        let shared = &mut *guard;
        if !shared.recent.tracks(event) {
            return;
        }
        let keys = change_keys(event);
        if let Some(xid) = event.xid {
            for key in &keys {
                shared.recent.remember(xid, event.lsn, key.clone());
            }
        }
        // The window's table is the one remembered (`open`).
        let Some(window) = shared.window.as_mut().filter(|w| w.low_seen) else {
            return;
        };
        window.drop_keys(keys);
    }
}

/// The keys a change touches as key texts (its key, and its old key when the key
/// changed); `None` for a truncate.
fn change_keys(event: &ChangeEvent) -> Vec<Option<String>> {
    if event.op == Op::Truncate {
        return vec![None];
    }
    let Some(key) = &event.key else {
        return Vec::new();
    };
    let mut keys = vec![Some(key_text(key))];
    // A key change also drops the row under its old key.
    if let Some(old) = &event.old {
        let old_key: Row = key
            .keys()
            .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        if old_key.len() == key.len() {
            let old_key = Some(key_text(&old_key));
            if old_key != keys[0] {
                keys.push(old_key);
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcdc_schema::{EventId, Lsn};
    use serde_json::json;

    fn row(id: i64, v: &str) -> (Row, Row) {
        let mut key = Row::new();
        key.insert("id".into(), json!(id));
        let mut full = key.clone();
        full.insert("v".into(), json!(v));
        (key, full)
    }

    fn change(op: Op, id: i64) -> ChangeEvent {
        ChangeEvent {
            id: EventId::from_position(Lsn(1), 0),
            op,
            schema: "public".into(),
            table: "t".into(),
            key: Some(row(id, "").0),
            old: None,
            new: None,
            trigger: None,
            lsn: Lsn(1),
            xid: None,
            commit_time: None,
            unchanged_toast: Vec::new(),
            columns: None,
            previous: None,
            origin: Default::default(),
        }
    }

    fn window(w: &Windows) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let table = TableName::parse("public.t").unwrap_or_else(|e| panic!("{e}"));
        w.open(Window::new("1.0.x".into(), 1, table, None, tx));
        rx
    }

    #[test]
    fn changes_inside_the_window_drop_their_rows() {
        let w = Windows::default();
        let _rx = window(&w);
        // Before the low watermark: no effect.
        w.on_change(&change(Op::Update, 1));
        assert!(matches!(w.on_message(b"low:1.0.x"), Watermark::Low));
        w.on_change(&change(Op::Update, 2));
        w.on_change(&change(Op::Delete, 3));
        let rows = ChunkRows {
            rows: vec![row(1, "a"), row(2, "b"), row(3, "c"), row(4, "d")],
            last_key: None,
            done: true,
            column_types: Default::default(),
            unseen: None,
        };
        assert!(w.set_rows("1.0.x", rows));
        let Watermark::High(mut win) = w.on_message(b"high:1.0.x") else {
            panic!("high watermark not recognised");
        };
        let ids: Vec<_> = win
            .surviving_rows()
            .iter()
            .map(|(k, _)| k["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(1), json!(4)]);
    }

    #[test]
    fn foreign_or_abandoned_watermarks_are_ignored() {
        let w = Windows::default();
        let _rx = window(&w);
        assert!(matches!(w.on_message(b"low:other"), Watermark::Ignored));
        // High before low: ignored, the driver retries.
        assert!(matches!(w.on_message(b"high:1.0.x"), Watermark::Ignored));
        w.close("1.0.x");
        assert!(matches!(w.on_message(b"low:1.0.x"), Watermark::Ignored));
    }

    #[test]
    fn truncate_inside_the_window_drops_the_chunk() {
        let w = Windows::default();
        let _rx = window(&w);
        w.on_message(b"low:1.0.x");
        w.on_change(&change(Op::Truncate, 0));
        w.set_rows(
            "1.0.x",
            ChunkRows {
                rows: vec![row(1, "a")],
                last_key: None,
                done: true,
                column_types: Default::default(),
                unseen: None,
            },
        );
        let Watermark::High(mut win) = w.on_message(b"high:1.0.x") else {
            panic!("high watermark not recognised");
        };
        assert!(win.surviving_rows().is_empty());
    }

    fn change_in(op: Op, id: i64, xid: u32, commit: u64) -> ChangeEvent {
        ChangeEvent {
            xid: Some(xid),
            lsn: Lsn(commit),
            ..change(op, id)
        }
    }

    /// A snapshot that misses `xip` (and everything from 1000 on).
    fn chunk(ids: &[i64], xip: Vec<u32>) -> ChunkRows {
        ChunkRows {
            rows: ids.iter().map(|&id| row(id, "a")).collect(),
            last_key: None,
            done: true,
            column_types: Default::default(),
            unseen: Some(Unseen { xmax: 1000, xip }),
        }
    }

    fn surviving(w: &Windows) -> Vec<serde_json::Value> {
        let Watermark::High(mut win) = w.on_message(b"high:1.0.x") else {
            panic!("high watermark not recognised");
        };
        win.surviving_rows()
            .iter()
            .map(|(k, _)| k["id"].clone())
            .collect()
    }

    #[test]
    fn a_transaction_committed_before_the_low_watermark_but_unseen_drops_its_rows() {
        let w = Windows::default();
        let _rx = window(&w);
        // Committed before the low watermark: 42 (running when the SELECT's
        // snapshot was taken) changes row 2, 1043 (at or after its xmax) row 3,
        // 44 (seen by it) row 4.
        w.on_begin(42, Lsn(200), 0);
        w.on_change(&change_in(Op::Update, 2, 42, 200));
        w.on_begin(1043, Lsn(250), 0);
        w.on_change(&change_in(Op::Update, 3, 1043, 250));
        w.on_begin(44, Lsn(260), 0);
        w.on_change(&change_in(Op::Update, 4, 44, 260));
        w.on_begin(45, Lsn(300), 0);
        assert!(matches!(w.on_message(b"low:1.0.x"), Watermark::Low));
        // 46 commits after the high watermark: the read rows come first.
        assert!(w.set_rows("1.0.x", chunk(&[1, 2, 3, 4], vec![42, 46])));
        w.on_begin(47, Lsn(400), 0);
        assert_eq!(surviving(&w), vec![json!(1), json!(4)]);
    }

    #[test]
    fn a_commit_an_hour_older_than_the_newest_counts_as_visible() {
        let w = Windows::default();
        let hour = 3_600_000_000;
        // Its id looks like one at or after xmax modulo 2^32, but it is old.
        w.on_begin(2000, Lsn(10), 0);
        w.on_begin(43, Lsn(20), hour + 1);
        let unseen = Unseen {
            xmax: 1000,
            xip: vec![],
        };
        assert!(!w.misses_commits(&unseen));
        w.on_begin(1001, Lsn(30), hour + 2);
        assert!(w.misses_commits(&unseen));
    }

    #[test]
    fn transaction_ids_compare_modulo_2_32() {
        let unseen = Unseen {
            xmax: 5,
            xip: vec![u32::MAX - 1],
        };
        assert!(unseen.contains(5) && unseen.contains(7) && unseen.contains(u32::MAX - 1));
        assert!(!unseen.contains(4) && !unseen.contains(u32::MAX - 3));
    }

    #[test]
    fn an_unseen_transaction_older_than_the_changes_remembered_drops_the_chunk() {
        let w = Windows::default();
        // 41 commits before the table is under resync: its changes are not remembered.
        w.on_begin(41, Lsn(100), 0);
        w.on_change(&change_in(Op::Update, 2, 41, 100));
        let mut rx = window(&w);
        w.on_begin(43, Lsn(300), 0);
        assert!(matches!(w.on_message(b"low:1.0.x"), Watermark::Low));
        assert!(w.set_rows("1.0.x", chunk(&[1, 2], vec![41])));
        assert!(matches!(w.on_message(b"high:1.0.x"), Watermark::Missed));
        // The window is gone: the driver's wait ends and it reads the chunk again.
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));

        // Remembered changes are bounded: a transaction that lost some is not trusted.
        let _rx = window(&w);
        w.on_begin(50, Lsn(1000), 0);
        for id in 0..RECENT as i64 + 1 {
            w.on_change(&change_in(Op::Update, id, 50, 1000));
        }
        w.on_begin(51, Lsn(1100), 0);
        w.on_message(b"low:1.0.x");
        w.set_rows("1.0.x", chunk(&[1], vec![50]));
        assert!(matches!(w.on_message(b"high:1.0.x"), Watermark::Missed));
        let shared = w.lock();
        assert_eq!(shared.recent.changes.len(), RECENT);
        assert!(shared.recent.commits.len() <= RECENT);
    }

    #[test]
    fn the_table_is_forgotten_when_the_resync_ends() {
        let w = Windows::default();
        let _rx = window(&w);
        w.on_begin(1, Lsn(1), 0);
        w.on_change(&change_in(Op::Insert, 1, 1, 1));
        w.finished();
        w.on_begin(2, Lsn(2), 0);
        w.on_change(&change_in(Op::Insert, 2, 2, 2));
        let shared = w.lock();
        assert!(shared.recent.changes.is_empty() && shared.recent.table.is_none());
    }
}
