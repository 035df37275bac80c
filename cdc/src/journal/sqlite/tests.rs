//! What only the SQLite store does (the contract both stores keep is tested in
//! tests/tests/state_store.rs, against each).

use std::path::PathBuf;

use super::*;

fn writer(dir: &Path) -> Result<Box<dyn JournalWriter>, JournalError> {
    Sqlite::new(dir).writer()
}

fn session(dir: &Path) -> Result<Box<dyn StateStore>, JournalError> {
    Sqlite::new(dir).open(Access::Existing)
}

#[test]
fn reading_a_missing_journal_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    match Sqlite::new(&dir.path().join("nope")).open(Access::Existing) {
        Err(e) => assert!(e.to_string().contains("pgcdc run"), "{e}"),
        Ok(_) => panic!("opened a journal that does not exist"),
    }
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

/// An audit file of an earlier release (per-event rows only, `user_version` 0)
/// gets the batch table on first use; its rows still answer.
#[test]
fn an_older_audit_file_gains_the_batch_table() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    drop(writer(dir.path())?);
    let path = dir.path().join(AUDIT_FILE);
    let err = |e| store_error(&path, e);
    {
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(&audit::schema("main")).map_err(err)?;
        conn.execute(
            "INSERT INTO audit(event_id, sink, attempt, at, status, error, latency_ms, outcome) \
             VALUES ('ev-1', 'kafka', 1, '2026-01-01T00:00:00Z', NULL, NULL, 4, 'delivered')",
            [],
        )
        .map_err(err)?;
    }
    let mut r = session(dir.path())?;
    assert_eq!(r.audit_by_event("ev-1")?.len(), 1);
    let mut ids = pgcdc_sinks::DeliveryIds::default();
    ids.push("ev-2");
    r.audit_insert_batches(&[pgcdc_sinks::BatchAttempt {
        sink: "kafka".into(),
        attempt: 1,
        at: pgcdc_sinks::AttemptTime::now(),
        latency_ms: 1,
        outcome: pgcdc_sinks::AttemptOutcome::Delivered,
        ids,
    }])?;
    assert_eq!(r.audit_by_event("ev-2")?.len(), 1);
    let conn = Connection::open(&path).map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    assert_eq!(version, 1);
    Ok(())
}
