use pgcdc_schema::{EventId, Op};
use serde_json::Map;

use std::path::PathBuf;

use pgcdc_schema::{ChangeEvent, Lsn};

use super::*;
use crate::journal::{AppendOutcome, JournalEntry, Tracked};

fn writer(dir: &Path) -> Result<Box<dyn JournalWriter>, JournalError> {
    Sqlite::new(dir).writer()
}

fn session(dir: &Path) -> Result<Box<dyn StateStore>, JournalError> {
    Sqlite::new(dir).open(Access::Existing)
}

fn append(
    w: &mut dyn JournalWriter,
    entries: &[JournalEntry],
    confirm: Option<Lsn>,
) -> Result<AppendOutcome, JournalError> {
    let all: Vec<(&JournalEntry, Option<&str>)> = entries.iter().map(|e| (e, None)).collect();
    w.append(&all, confirm, &[])
}

/// Advances a cursor the way a sink runner does: a batch commit at its generation.
fn advance(r: &mut dyn StateStore, sink: &str, pos: i64) -> Result<(), JournalError> {
    let generation = r.cursor_state(sink)?.generation;
    r.commit_batch(sink, pos, generation, &[], &Default::default())
}

fn entry(lsn: u64, seq: u32) -> JournalEntry {
    JournalEntry {
        table: "public.permits".into(),
        seq,
        commit_time_unix_us: Some(1_700_000_000_000_000 + lsn as i64),
        event: ChangeEvent {
            id: EventId::from_position(Lsn(lsn), seq),
            op: Op::Insert,
            schema: "public".into(),
            table: "permits".into(),
            key: Some(Map::new()),
            old: None,
            new: Some(Map::new()),
            trigger: None,
            lsn: Lsn(lsn),
            xid: Some(7),
            commit_time: None,
            unchanged_toast: vec![],
        },
    }
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id.to_string()).collect()
}

#[test]
fn appends_are_durable_and_replays_are_skipped() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    {
        let mut w = writer(dir.path())?;
        let out = append(&mut *w, &[entry(100, 0), entry(100, 1)], None)?;
        assert_eq!(
            out,
            AppendOutcome {
                appended: 2,
                skipped: 0
            }
        );
        // A partial transaction: its commit has not been confirmed.
        append(&mut *w, &[entry(200, 0)], Some(Lsn(150)))?;
        assert_eq!(
            w.head(),
            JournalHead {
                pos: 3,
                confirmed_lsn: Lsn(150)
            }
        );
    }
    // Restart: the slot replays transaction 200 whole, then more.
    let mut w = writer(dir.path())?;
    assert_eq!(
        w.head(),
        JournalHead {
            pos: 3,
            confirmed_lsn: Lsn(150)
        }
    );
    let out = append(
        &mut *w,
        &[entry(200, 0), entry(200, 1), entry(300, 0)],
        Some(Lsn(310)),
    )?;
    assert_eq!(
        out,
        AppendOutcome {
            appended: 2,
            skipped: 1
        }
    );
    // Confirmed LSN never moves back.
    append(&mut *w, &[], Some(Lsn(5)))?;
    assert_eq!(w.head().confirmed_lsn, Lsn(310));

    let r = session(dir.path())?;
    let all = r.read_after(0, 100)?;
    assert_eq!(
        ids(&all),
        [
            EventId::from_position(Lsn(100), 0).to_string(),
            EventId::from_position(Lsn(100), 1).to_string(),
            EventId::from_position(Lsn(200), 0).to_string(),
            EventId::from_position(Lsn(200), 1).to_string(),
            EventId::from_position(Lsn(300), 0).to_string(),
        ]
    );
    assert_eq!(
        all.iter().map(|e| e.pos).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        ids(&r.read_after(3, 1)?),
        [EventId::from_position(Lsn(200), 1).to_string()]
    );
    Ok(())
}

#[test]
fn cursors_only_move_forward() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let mut w = writer(dir.path())?;
    append(&mut *w, &[entry(1, 0), entry(2, 0), entry(3, 0)], None)?;
    let mut r = session(dir.path())?;
    assert_eq!(r.cursor("a")?, 0);
    advance(&mut *r, "a", 2)?;
    advance(&mut *r, "a", 1)?;
    assert_eq!(r.cursor("a")?, 2);
    assert_eq!(r.cursor("b")?, 0);
    let cursors = r.cursors()?;
    assert_eq!(cursors.len(), 2);
    assert_eq!(cursors[0].lag_events, 1);
    assert_eq!(
        cursors[0].oldest_pending_unix_us,
        Some(1_700_000_000_000_003)
    );
    assert_eq!(cursors[1].lag_events, 3);
    Ok(())
}

#[test]
fn reading_a_missing_journal_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    match Sqlite::new(&dir.path().join("nope")).open(Access::Existing) {
        Err(e) => assert!(e.to_string().contains("pgcdc run"), "{e}"),
        Ok(_) => panic!("opened a journal that does not exist"),
    }
}

fn change(
    lsn: u64,
    op: Op,
    key: i64,
    new: Option<serde_json::Value>,
    old: Option<serde_json::Value>,
) -> JournalEntry {
    let mut e = entry(lsn, 0);
    e.event.op = op;
    e.event.key = serde_json::json!({ "id": key }).as_object().cloned();
    e.event.new = new.and_then(|v| v.as_object().cloned());
    e.event.old = old.and_then(|v| v.as_object().cloned());
    e
}

#[test]
fn old_is_filled_from_the_last_seen_row() -> Result<(), JournalError> {
    use serde_json::json;
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let mut w = writer(dir.path())?;
    w.set_old_tracking(
        [(
            "public.permits".to_string(),
            Tracked::Columns(vec!["status".into()]),
        )]
        .into(),
    );
    append(
        &mut *w,
        &[
            change(
                1,
                Op::Insert,
                1,
                Some(json!({"id": 1, "status": "pending", "fee": 3})),
                None,
            ),
            change(
                2,
                Op::Update,
                1,
                Some(json!({"id": 1, "status": "review", "fee": 3})),
                None,
            ),
            // First sight of row 2: nothing to fill from.
            change(
                3,
                Op::Update,
                2,
                Some(json!({"id": 2, "status": "approved"})),
                None,
            ),
            change(
                4,
                Op::Update,
                1,
                Some(json!({"id": 1, "status": "approved", "fee": 4})),
                None,
            ),
            change(5, Op::Delete, 1, None, Some(json!({"id": 1}))),
            change(
                6,
                Op::Update,
                1,
                Some(json!({"id": 1, "status": "x"})),
                None,
            ),
        ],
        None,
    )?;
    let r = session(dir.path())?;
    let olds: Vec<serde_json::Value> = r
        .read_after(0, 10)?
        .iter()
        .map(|e| json!(e.event.old))
        .collect();
    assert_eq!(
        olds,
        [
            json!(null),
            json!({"id": 1, "status": "pending"}),
            json!(null),
            json!({"id": 1, "status": "review"}),
            json!({"id": 1, "status": "approved"}),
            // The delete forgot row 1.
            json!(null),
        ]
    );
    Ok(())
}

#[test]
fn prune_keeps_what_a_cursor_still_needs() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let mut w = writer(dir.path())?;
    append(
        &mut *w,
        &[entry(1, 0), entry(2, 0), entry(3, 0), entry(4, 0)],
        None,
    )?;
    let mut r = session(dir.path())?;
    advance(&mut *r, "fast", 4)?;
    advance(&mut *r, "slow", 2)?;
    // Entries 1..=3 are older than the cutoff, but "slow" has not passed 3.
    assert_eq!(w.prune(1_700_000_000_000_004, 100)?, 2);
    assert_eq!(
        r.read_after(0, 10)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // The newest entry stays even when every cursor passed it: positions continue from it.
    advance(&mut *r, "slow", 4)?;
    assert_eq!(w.prune(i64::MAX, 100)?, 1);
    append(&mut *w, &[entry(5, 0)], None)?;
    assert_eq!(
        r.read_after(0, 10)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [4, 5]
    );
    Ok(())
}

#[test]
fn checkpoint_resets_move_one_cursor_and_respect_retention() -> Result<(), ResetError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let mut w = writer(dir.path())?;
    // Transactions at LSN 10 (2 changes), 20 and 30; commit times follow the LSN.
    append(
        &mut *w,
        &[entry(10, 0), entry(10, 1), entry(20, 0), entry(30, 0)],
        None,
    )?;
    let mut r = session(dir.path())?;
    advance(&mut *r, "a", 4)?;
    advance(&mut *r, "b", 4)?;
    let g0 = r.cursor_state("a")?.generation;
    // Back to the transaction at LSN 20: it and everything after is delivered again.
    let s = r.reset_cursor("a", ResetTarget::Lsn(Lsn(20)))?;
    assert_eq!((s.pos, s.generation), (2, g0 + 1));
    assert_eq!(r.cursor_state("b")?.pos, 4, "other sinks are untouched");
    // By time: entry(lsn) commits at 1_700_000_000_000_000 + lsn µs.
    assert_eq!(
        r.reset_cursor("a", ResetTarget::Time(1_700_000_000_000_030))?
            .pos,
        3
    );
    assert_eq!(r.reset_cursor("a", ResetTarget::Lsn(Lsn(1)))?.pos, 0);
    assert_eq!(r.reset_cursor("a", ResetTarget::Latest)?.pos, 4);
    // A stale runner's commit (old generation) no longer moves the reset cursor.
    r.reset_cursor("a", ResetTarget::Lsn(Lsn(20)))?;
    let mut r2 = session(dir.path())?;
    r2.commit_batch("a", 4, g0, &[], &Default::default())?;
    assert_eq!(r.cursor_state("a")?.pos, 2);

    // Prune the first transaction: a target before what is left is refused.
    advance(&mut *r, "b", 4)?;
    r.reset_cursor("a", ResetTarget::Latest)?;
    assert_eq!(w.prune(i64::MAX, 2)?, 2);
    match r.reset_cursor("a", ResetTarget::Lsn(Lsn(10))) {
        Err(ResetError::BeyondRetention { .. }) => {}
        other => panic!("expected a retention error, got {other:?}"),
    }
    let e = r
        .reset_cursor("a", ResetTarget::Time(1_700_000_000_000_000))
        .err();
    assert!(e.is_some_and(|e| e.to_string().contains("resync")));
    assert_eq!(r.reset_cursor("a", ResetTarget::Lsn(Lsn(20)))?.pos, 2);
    Ok(())
}

#[test]
fn a_removed_or_replaced_journal_file_is_noticed() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: "tmp".into(),
        message: e.to_string(),
    })?;
    let w = writer(dir.path())?;
    w.check_intact()?;
    let path = dir.path().join(JOURNAL_FILE);
    let _ = std::fs::remove_file(&path);
    assert!(matches!(
        w.check_intact(),
        Err(JournalError::Replaced { .. })
    ));
    let _ = std::fs::write(&path, b"");
    let err = w
        .check_intact()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("replaced"), "{err}");
    Ok(())
}

#[test]
fn entries_keep_the_captured_tables_name_beside_the_events_name() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: "tmp".into(),
        message: e.to_string(),
    })?;
    let mut w = writer(dir.path())?;
    let mut e = entry(0x10, 0);
    e.event.table = "permits_v2".into();
    append(&mut *w, &[e], None)?;
    let r = session(dir.path())?;
    let got = r.read_after(0, 10)?;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].table.as_str(), got[0].event.table.as_str()),
        ("public.permits", "permits_v2")
    );
    Ok(())
}

#[test]
fn read_batch_stops_at_its_byte_budget_but_returns_one_event() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let big = |seq: u32| {
        let mut e = entry(100, seq);
        let mut row = Map::new();
        row.insert("v".into(), serde_json::Value::String("x".repeat(10_000)));
        e.event.new = Some(row);
        e
    };
    let mut w = writer(dir.path())?;
    append(&mut *w, &[big(0), big(1), big(2), big(3)], None)?;
    let r = session(dir.path())?;
    // Each event's JSON is a little over 10 kB: two fit in 25 kB, a third does not.
    assert_eq!(r.read_batch(0, 100, 25_000)?.len(), 2);
    assert_eq!(
        r.read_batch(2, 100, 25_000)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // One event larger than the whole budget still comes, alone.
    assert_eq!(r.read_batch(0, 100, 1)?.len(), 1);
    // The count limit still applies.
    assert_eq!(r.read_batch(0, 3, usize::MAX)?.len(), 3);
    assert_eq!(r.read_after(0, 100)?.len(), 4);
    Ok(())
}

fn attempt(n: u32) -> pgcdc_sinks::Attempt {
    pgcdc_sinks::Attempt {
        event_id: format!("ev-{n}"),
        sink: "hook".into(),
        attempt: n,
        at: "2026-01-01T00:00:00.000000Z".parse().expect("a valid time"),
        status: Some(503),
        error: Some("x".repeat(500)),
        latency_ms: 3,
        outcome: pgcdc_sinks::AttemptOutcome::Retrying,
    }
}

/// `journal.max_bytes` limits the journal: delivery attempts recorded meanwhile (a
/// sink retrying against a full journal) do not fill it.
#[test]
fn the_audit_log_does_not_count_against_the_journal() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let mut w = writer(dir.path())?;
    append(&mut *w, &[entry(1, 0)], None)?;
    let mut r = session(dir.path())?;
    let before = (w.used_bytes()?, r.used_bytes()?);
    for chunk in 0..20 {
        let attempts: Vec<_> = (0..100).map(|n| attempt(chunk * 100 + n)).collect();
        r.audit_insert(&attempts)?;
    }
    assert_eq!(
        r.audit_by_sink("hook", "2000-01-01T00:00:00Z", 5000)?.len(),
        2000
    );
    assert_eq!((w.used_bytes()?, r.used_bytes()?), before);
    Ok(())
}

/// A journal of an earlier release keeps its audit table in `journal.db`: the first
/// open moves the attempts to the audit log's own file.
#[test]
fn an_older_journals_audit_rows_move_to_the_audit_file() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let path = dir.path().join(JOURNAL_FILE);
    let err = |e| store_error(&path, e);
    {
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(&audit::schema("main")).map_err(err)?;
        conn.execute(
            "INSERT INTO audit(event_id, sink, attempt, at, status, error, latency_ms, outcome) \
             VALUES ('ev-1', 'hook', 1, '2026-01-01T00:00:00Z', 200, NULL, 4, 'delivered')",
            [],
        )
        .map_err(err)?;
    }
    let r = session(dir.path())?;
    let got = r.audit_by_event("ev-1")?;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].sink.as_str(), got[0].latency_ms), ("hook", 4));
    let conn = Connection::open(&path).map_err(err)?;
    let left: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    assert_eq!(left, 0, "the journal keeps no audit table");
    // Opening again moves nothing twice.
    drop(r);
    assert_eq!(session(dir.path())?.audit_by_event("ev-1")?.len(), 1);
    Ok(())
}
