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

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use pgcdc_schema::event::Row;
use pgcdc_schema::{ChangeEvent, Op};
use tokio::sync::oneshot;

use pgcdc_schema::TableName;

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
            truncated: false,
            changed: HashSet::new(),
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
}

/// The open window, shared by the resync driver and the reader.
#[derive(Debug, Clone, Default)]
pub(crate) struct Windows(Arc<Mutex<Option<Window>>>);

impl Windows {
    fn lock(&self) -> MutexGuard<'_, Option<Window>> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a window (replacing any abandoned one).
    pub(crate) fn open(&self, window: Window) {
        *self.lock() = Some(window);
    }

    /// Hands the chunk's rows to the window; false when it is gone.
    pub(crate) fn set_rows(&self, token: &str, rows: ChunkRows) -> bool {
        match self.lock().as_mut() {
            Some(w) if w.token == token => {
                w.rows = Some(rows);
                true
            }
            _ => false,
        }
    }

    /// Closes the window if it is still this one (abandoned attempt, cancel).
    pub(crate) fn close(&self, token: &str) {
        let mut guard = self.lock();
        if guard.as_ref().is_some_and(|w| w.token == token) {
            *guard = None;
        }
    }

    /// A watermark message's content, as the reader sees it in the stream.
    pub(crate) fn on_message(&self, content: &[u8]) -> Watermark {
        let Ok(text) = std::str::from_utf8(content) else {
            return Watermark::Ignored;
        };
        let mut guard = self.lock();
        let Some(window) = guard.as_mut() else {
            return Watermark::Ignored;
        };
        match text.split_once(':') {
            Some(("low", token)) if token == window.token => {
                window.low_seen = true;
                Watermark::Low
            }
            // A high watermark without the low one (never expected) or without rows
            // (the driver failed between them) journals nothing: the driver retries.
            Some(("high", token)) if token == window.token && window.low_seen => {
                match guard.take() {
                    Some(w) if w.rows.is_some() => Watermark::High(Box::new(w)),
                    _ => Watermark::Ignored,
                }
            }
            _ => Watermark::Ignored,
        }
    }

    /// A streamed change: inside an open window, its row leaves the chunk.
    pub(crate) fn on_change(&self, event: &ChangeEvent) {
        let mut guard = self.lock();
        let Some(window) = guard.as_mut().filter(|w| w.low_seen) else {
            return;
        };
        if *event.schema != *window.table.schema || *event.table != *window.table.table {
            return;
        }
        if event.op == Op::Truncate {
            window.truncated = true;
            return;
        }
        let Some(key) = &event.key else {
            return;
        };
        window.changed.insert(key_text(key));
        // A key change also drops the row under its old key.
        if let Some(old) = &event.old {
            let old_key: Row = key
                .keys()
                .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            if old_key.len() == key.len() {
                window.changed.insert(key_text(&old_key));
            }
        }
    }
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
            },
        );
        let Watermark::High(mut win) = w.on_message(b"high:1.0.x") else {
            panic!("high watermark not recognised");
        };
        assert!(win.surviving_rows().is_empty());
    }
}
