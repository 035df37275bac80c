//! The two-phase loop: a batch is booked while the sink works on the next one,
//! and its cursor moves only after its own settle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgcdc_schema::Lsn;
use pgcdc_sinks::{AuditLog, Checkpoint, ItemResult, Outgoing, Sink, SinkError};
use tokio::sync::watch;

use crate::config::Config;
use crate::deliver::plan::{triggers, SinkPlan};
use crate::journal::{Access, JournalEntry, JournalHead, Store};

/// A two-phase sink that logs each call with the cursor stored at that moment.
struct Recording {
    store: Store,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn note(&self, what: String) {
        let cursor = self
            .store
            .open(Access::Existing)
            .and_then(|mut r| r.cursor_state("rec"))
            .map_or(-1, |s| s.pos);
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("{what} (cursor {cursor})"));
        }
    }
}

fn span(items: &[Outgoing]) -> String {
    let lsn = |i: Option<&Outgoing>| i.map_or(0, |i| i.event.lsn.0);
    format!("{}-{}", lsn(items.first()), lsn(items.last()))
}

impl Sink for Recording {
    fn name(&self) -> &str {
        "rec"
    }

    fn batch_size(&self) -> usize {
        2
    }

    async fn deliver(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        self.note(format!("deliver {}", span(items)));
        Ok(vec![ItemResult::Delivered; items.len()])
    }

    async fn submit(&mut self, items: &[Outgoing]) -> Result<bool, SinkError> {
        self.note(format!("submit {}", span(items)));
        Ok(true)
    }

    async fn settle(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        self.note(format!("settle {}", span(items)));
        Ok(vec![ItemResult::Delivered; items.len()])
    }

    async fn checkpoint(&mut self, at: &Checkpoint) -> Result<(), SinkError> {
        self.note(format!("checkpoint {}", at.pos));
        Ok(())
    }
}

fn entry(lsn: u64) -> JournalEntry {
    let id: pgcdc_schema::event::Row = serde_json::json!({"id": lsn})
        .as_object()
        .cloned()
        .map(Into::into)
        .unwrap_or_default();
    crate::journal::insert_into("permits", lsn, Some(id.clone()), id)
}

/// A journal in `dir` holding six inserts, at LSNs 1 to 6.
fn journal_of_six(dir: &std::path::Path) -> Store {
    let store = Store::sqlite(dir);
    let entries: Vec<JournalEntry> = (1..=6).map(entry).collect();
    let all: Vec<(&JournalEntry, Option<&str>)> = entries.iter().map(|e| (e, None)).collect();
    let mut writer = store.writer().unwrap_or_else(|e| panic!("{e}"));
    writer
        .append(&all, Some(Lsn(6)), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    store
}

/// The runner of `sink` (a stdout sink named `name` in the config) over `store`,
/// whose head is at 6; stop it with the sender returned.
fn start<S: Sink + Send + 'static>(
    sink: S,
    name: &str,
    store: &Store,
) -> (
    tokio::task::JoinHandle<Result<(), super::RunnerError>>,
    watch::Sender<JournalHead>,
    watch::Sender<bool>,
) {
    let config = Config::parse(
        &format!(
            "[source]\nurl = \"postgres://u@localhost/db\"\ntables = [\"public.permits\"]\n\n\
             [[sink]]\nname = \"{name}\"\ntype = \"stdout\"\n"
        ),
        std::path::Path::new("t.toml"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = SinkPlan::new(&config.sink[0], &triggers(&config));
    let (head_tx, head) = watch::channel(JournalHead {
        pos: 6,
        confirmed_lsn: Lsn(6),
    });
    let (stop_tx, stop) = watch::channel(false);
    let runner = tokio::spawn(super::run(
        sink,
        plan,
        AuditLog::disabled(),
        store.clone(),
        head,
        stop,
    ));
    (runner, head_tx, stop_tx)
}

#[tokio::test]
async fn a_batch_is_booked_while_the_next_one_is_in_flight() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = journal_of_six(dir.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Recording {
        store: store.clone(),
        log: log.clone(),
    };
    let (runner, _head_tx, stop_tx) = start(sink, "rec", &store);
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lock().map_or(0, |l| l.len()) < 9 {
        assert!(Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    runner
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(
        log,
        [
            "submit 1-2 (cursor 0)",
            "settle 1-2 (cursor 0)",
            "submit 3-4 (cursor 0)",
            "checkpoint 2 (cursor 0)",
            "settle 3-4 (cursor 2)",
            "submit 5-6 (cursor 2)",
            "checkpoint 4 (cursor 2)",
            "settle 5-6 (cursor 4)",
            "checkpoint 6 (cursor 4)",
        ]
    );
    let cursor = store
        .open(Access::Existing)
        .and_then(|mut r| r.cursor_state("rec"))
        .map_or(-1, |s| s.pos);
    assert_eq!(cursor, 6);
}

/// A sink that delivers in one phase and logs what it delivered.
struct OnePhase {
    log: Arc<Mutex<Vec<String>>>,
}

impl Sink for OnePhase {
    fn name(&self) -> &str {
        "one"
    }

    fn batch_size(&self) -> usize {
        2
    }

    async fn deliver(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("deliver {}", span(items)));
        }
        Ok(vec![ItemResult::Delivered; items.len()])
    }
}

/// The booked batch's commit waits for the store's write lock (the journal thread
/// holds it for most of a backlog's drain); a one-phase sink delivers the next batch
/// meanwhile, and the cursor lands once the lock is free.
#[tokio::test]
async fn a_one_phase_sink_delivers_the_next_batch_while_the_commit_waits() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = journal_of_six(dir.path());
    let cursor = |store: &Store| {
        store
            .open(Access::Existing)
            .and_then(|mut r| r.cursor_state("one"))
            .map_or(-1, |s| s.pos)
    };
    assert_eq!(cursor(&store), 0);
    // Another connection holds the write lock: no commit can land.
    let holder =
        rusqlite::Connection::open(dir.path().join("journal.db")).unwrap_or_else(|e| panic!("{e}"));
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .unwrap_or_else(|e| panic!("{e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (runner, _head_tx, stop_tx) = start(OnePhase { log: log.clone() }, "one", &store);
    // Well inside the store's 30 s lock wait.
    let deadline = Instant::now() + Duration::from_secs(15);
    while log.lock().map_or(0, |l| l.len()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the second batch waited for the first one's commit: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cursor(&store), 0, "a commit landed under the lock");
    holder
        .execute_batch("ROLLBACK")
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while cursor(&store) < 6 {
        assert!(Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    runner
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(log, ["deliver 1-2", "deliver 3-4", "deliver 5-6"]);
}
