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

fn tempdir() -> Result<tempfile::TempDir, JournalError> {
    tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })
}

/// Entry `n` (1-based) of the tests below: commit LSN 1000 + n / 2 (two per
/// transaction), commit time 10 * n µs, tables `a` and `b` in runs of 100.
fn numbered(n: u64) -> crate::journal::JournalEntry {
    let mut row = serde_json::Map::new();
    row.insert("n".into(), serde_json::json!(n));
    let table = if (n / 100).is_multiple_of(2) {
        "a"
    } else {
        "b"
    };
    let mut e =
        crate::journal::insert_into(table, 1000 + n / 2, Some(row.clone().into()), row.into());
    e.seq = (n % 2) as u32;
    e.commit_time_unix_us = Some(10 * n as i64);
    e
}

fn append_numbered(w: &mut dyn JournalWriter, from: u64, to: u64) -> Result<(), JournalError> {
    let entries: Vec<_> = (from..=to).map(numbered).collect();
    let refs: Vec<_> = entries.iter().map(|e| (e, None)).collect();
    w.append(&refs, None, &[])?;
    Ok(())
}

/// How many blocks are stored packed.
fn packed_blocks(dir: &Path) -> i64 {
    let conn = Connection::open(dir.join(JOURNAL_FILE)).unwrap_or_else(|e| panic!("{e}"));
    conn.query_row(
        "SELECT count(*) FROM event_blocks WHERE substr(body, 1, ?1) = ?2",
        rusqlite::params![blocks::PACKED.len(), blocks::PACKED],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn blocks(dir: &Path) -> Vec<(i64, i64, i64)> {
    let conn = Connection::open(dir.join(JOURNAL_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let mut stmt = conn
        .prepare("SELECT first_pos, last_pos, count FROM event_blocks ORDER BY last_pos")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap_or_else(|e| panic!("{e}"));
    rows.collect::<Result<_, _>>().unwrap_or_default()
}

/// Events span blocks (an append of more than `BLOCK_EVENTS` makes several, each
/// append at least one): every position reads back once and in order from
/// anywhere, the head and the last position survive a reopen, and resets, lag and
/// orphaned cursors count across block bounds.
#[test]
fn events_read_and_count_the_same_across_block_bounds() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempdir()?;
    let mut w = writer(dir.path())?;
    append_numbered(&mut *w, 1, 300)?;
    append_numbered(&mut *w, 301, 600)?;
    append_numbered(&mut *w, 601, 700)?;
    let b = blocks(dir.path());
    assert_eq!(
        b,
        [
            (1, 256, 256),
            (257, 300, 44),
            (301, 556, 256),
            (557, 600, 44),
            (601, 700, 100)
        ]
    );
    drop(w);
    let w = writer(dir.path())?;
    assert_eq!(w.head().pos, 700);
    assert_eq!(w.last_position(), Some((1000 + 350, 0)));
    let mut s = session(dir.path())?;
    assert_eq!(s.head()?.pos, 700);
    for from in [0, 1, 255, 256, 257, 299, 300, 555, 699] {
        let page = s.read_batch(from, 50, usize::MAX)?;
        let want: Vec<i64> = ((from + 1)..=(from + 50).min(700)).collect();
        assert_eq!(
            page.iter().map(|e| e.pos).collect::<Vec<_>>(),
            want,
            "after {from}"
        );
        for e in &page {
            assert_eq!(
                e.event.new.as_ref().map(|r| r["n"].clone()),
                Some(serde_json::json!(e.pos))
            );
            assert_eq!(
                &*e.table,
                if (e.pos / 100) % 2 == 0 {
                    "public.a"
                } else {
                    "public.b"
                }
            );
        }
    }
    assert!(s.read_batch(700, 50, usize::MAX)?.is_empty());
    // One buffer, emptied between reads, reads what fresh ones do.
    let mut buf = Vec::new();
    for from in [0, 299, 555, 699, 700] {
        buf.clear();
        s.read_batch_into(from, 50, usize::MAX, &mut buf)?;
        let fresh = s.read_batch(from, 50, usize::MAX)?;
        assert_eq!(
            buf.iter()
                .map(|e| (e.pos, e.event.id.to_string()))
                .collect::<Vec<_>>(),
            fresh
                .iter()
                .map(|e| (e.pos, e.event.id.to_string()))
                .collect::<Vec<_>>(),
            "after {from}"
        );
    }
    // A byte bound stops inside a block, never before the first event.
    assert_eq!(s.read_batch(10, 1000, 1)?.len(), 1);
    assert_eq!(
        s.event_id_at(257)?,
        Some(numbered(257).event.id.to_string())
    );

    // Resets: the newest event before an LSN or a time, wherever it is.
    let lsn_of = |n: u64| Lsn(1000 + n / 2);
    assert_eq!(s.reset_cursor("x", ResetTarget::Lsn(lsn_of(258)))?.pos, 257);
    assert_eq!(s.reset_cursor("x", ResetTarget::Lsn(lsn_of(1)))?.pos, 0);
    assert_eq!(s.reset_cursor("x", ResetTarget::Time(10 * 301))?.pos, 300);
    assert_eq!(s.reset_cursor("x", ResetTarget::Time(1_000_000))?.pos, 700);
    assert_eq!(s.reset_cursor("x", ResetTarget::Latest)?.pos, 700);
    // Lag: the first pending event's commit time, inside a block or at its start.
    s.reset_cursor("x", ResetTarget::Time(10 * 300))?;
    s.reset_cursor("y", ResetTarget::Time(10 * 261))?;
    let lag: Vec<_> = s
        .cursors()?
        .into_iter()
        .map(|c| (c.sink, c.pos, c.oldest_pending_unix_us))
        .collect();
    assert_eq!(
        lag,
        [
            ("x".into(), 299, Some(10 * 300)),
            ("y".into(), 260, Some(10 * 261))
        ]
    );
    // An orphaned cursor holds the events between it and the others' floor.
    s.reset_cursor("y", ResetTarget::Time(10 * 11))?;
    s.reset_cursor("x", ResetTarget::Time(10 * 601))?;
    let orphaned = s.orphaned_cursors(&["x".to_string()])?;
    assert_eq!(orphaned.len(), 1);
    assert_eq!(
        (orphaned[0].cursor, orphaned[0].held_events),
        (10, 600 - 10)
    );
    Ok(())
}

/// Pruning removes exactly the events every cursor passed (a block that keeps
/// some is written again without the others), never the newest, up to its limit.
#[test]
fn pruning_removes_passed_events_across_and_inside_blocks() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempdir()?;
    let mut w = writer(dir.path())?;
    append_numbered(&mut *w, 1, 300)?;
    append_numbered(&mut *w, 301, 400)?;
    // Alike events: their blocks are stored packed, and pruning inside one
    // unpacks it and writes what stays.
    assert_eq!(packed_blocks(dir.path()), 3);
    let mut s = session(dir.path())?;
    // Cursor inside the second block: the first goes whole, the second keeps 280..
    s.reset_cursor("x", ResetTarget::Time(10 * 280))?;
    assert_eq!(w.prune(i64::MAX, 50_000)?, 279);
    assert_eq!(blocks(dir.path()), [(280, 300, 21), (301, 400, 100)]);
    // The limit stops inside a block.
    s.reset_cursor("x", ResetTarget::Latest)?;
    assert_eq!(w.prune(i64::MAX, 5)?, 5);
    assert_eq!(blocks(dir.path()), [(285, 300, 16), (301, 400, 100)]);
    // The newest event stays however far the cursor is.
    assert_eq!(w.prune(i64::MAX, 50_000)?, 16 + 99);
    assert_eq!(w.prune(i64::MAX, 50_000)?, 0);
    assert_eq!(blocks(dir.path()), [(400, 400, 1)]);
    // Nothing younger than the cutoff.
    append_numbered(&mut *w, 401, 410)?;
    s.reset_cursor("x", ResetTarget::Latest)?;
    assert_eq!(w.prune(10 * 400, 50_000)?, 0);
    assert_eq!(w.prune(10 * 405, 50_000)?, 5);
    let left: Vec<i64> = s
        .read_batch(0, 100, usize::MAX)?
        .iter()
        .map(|e| e.pos)
        .collect();
    assert_eq!(left, [405, 406, 407, 408, 409, 410]);
    // A reset before what is kept says what the oldest is.
    assert!(s.reset_cursor("x", ResetTarget::Time(5)).is_err());
    Ok(())
}

/// A journal of an earlier release (one `events` row per event, positions with
/// gaps where pruning skipped) is moved into blocks when opened, and reads and
/// continues as before.
#[test]
fn an_older_journals_event_rows_move_into_blocks() -> Result<(), JournalError> {
    let dir = tempdir()?;
    let path = dir.path().join(JOURNAL_FILE);
    let err = |e| store_error(&path, e);
    // A journal made by this release, then turned into the old layout.
    let mut w = writer(dir.path())?;
    append_numbered(&mut *w, 1, 300)?;
    let written = session(dir.path())?.read_batch(0, 1000, usize::MAX)?;
    drop(w);
    {
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute("DELETE FROM events", []).map_err(err)?;
        let mut insert = conn
            .prepare(
                "INSERT INTO events(pos, commit_lsn, seq, commit_time_us, tbl, payload, target) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(err)?;
        let mut stmt = conn
            .prepare("SELECT first_pos, body FROM event_blocks ORDER BY last_pos")
            .map_err(err)?;
        let bodies: Vec<(i64, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        for (first, body) in &bodies {
            for e in blocks::events(*first, body, &mut Vec::new()) {
                let e = e.map_err(|(pos, m)| damaged_block(pos, m))?;
                // Every tenth position was pruned already; every 7th is for one sink.
                if e.pos % 10 == 5 {
                    continue;
                }
                let target = (e.pos % 7 == 0).then_some("kafka");
                insert
                    .execute(params![
                        e.pos,
                        e.commit_lsn as i64,
                        e.seq,
                        e.commit_time_us,
                        e.table,
                        e.record,
                        target
                    ])
                    .map_err(err)?;
            }
        }
        conn.execute("DELETE FROM event_blocks", []).map_err(err)?;
    }
    let s = session(dir.path())?;
    let read = s.read_batch(0, 1000, usize::MAX)?;
    let want: Vec<_> = written.iter().filter(|e| e.pos % 10 != 5).collect();
    assert_eq!(read.len(), want.len());
    for (got, want) in read.iter().zip(want) {
        assert_eq!(
            (got.pos, got.seq, &got.event, &got.table),
            (want.pos, want.seq, &want.event, &want.table)
        );
        assert_eq!(got.target.as_deref(), (got.pos % 7 == 0).then_some("kafka"));
    }
    let conn = Connection::open(&path).map_err(err)?;
    let left: Vec<(i64, Vec<u8>)> = conn
        .prepare("SELECT pos, payload FROM events")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(err)?;
    assert_eq!(
        left,
        [(300, blocks::HEAD_MARK.to_vec())],
        "only the head mark stays"
    );
    drop(s);
    let mut w = writer(dir.path())?;
    assert_eq!((w.head().pos, w.last_position()), (300, Some((1150, 0))));
    append_numbered(&mut *w, 301, 301)?;
    let s = session(dir.path())?;
    assert_eq!(
        s.read_batch(299, 10, usize::MAX)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [300, 301]
    );
    Ok(())
}

/// A release before blocks reads `events`: it finds the head there (and so would
/// continue positions after it), and a reader of it behind the head stops at the
/// mark with the error that a newer release wrote the journal.
#[test]
fn a_release_before_blocks_sees_the_head_and_stops_at_the_mark() -> Result<(), JournalError> {
    let dir = tempdir()?;
    let path = dir.path().join(JOURNAL_FILE);
    let err = |e| store_error(&path, e);
    let mut w = writer(dir.path())?;
    append_numbered(&mut *w, 1, 300)?;
    append_numbered(&mut *w, 301, 310)?;
    let conn = Connection::open(&path).map_err(err)?;
    // What that release asked at open: the head and the last position.
    let head: i64 = conn
        .query_row("SELECT COALESCE(MAX(pos), 0) FROM events", [], |r| r.get(0))
        .map_err(err)?;
    let last: (i64, u32) = conn
        .query_row(
            "SELECT commit_lsn, seq FROM events ORDER BY pos DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    assert_eq!((head, last), (310, (1155, 0)));
    // Its runner reads `events` after its cursor and decodes the record.
    let payload: Vec<u8> = conn
        .query_row(
            "SELECT payload FROM events WHERE pos > 299 ORDER BY pos",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    let e = Decoder::default()
        .decode(&payload, |_| Ok(None))
        .err()
        .map(|e| e.at(310).to_string())
        .unwrap_or_default();
    assert!(e.contains("a newer release wrote this journal"), "{e}");
    Ok(())
}

/// Runners read their cursor every batch while the journal thread holds the write
/// lock for most of a backlog's drain: reading an existing cursor takes no write lock
/// (an INSERT that changes nothing would wait for it, up to the busy timeout).
#[test]
fn reading_a_cursor_does_not_wait_for_the_write_lock() -> Result<(), JournalError> {
    let dir = tempfile::tempdir().map_err(|e| JournalError::StateDir {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    drop(writer(dir.path())?);
    let mut s = session(dir.path())?;
    assert_eq!(s.cursor_state("a")?.pos, 0);
    let path = dir.path().join(JOURNAL_FILE);
    let err = |e| store_error(&path, e);
    let holder = Connection::open(&path).map_err(err)?;
    holder.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let read = s.cursor_state("a");
    let cursor = s.cursor("a");
    holder.execute_batch("ROLLBACK").map_err(err)?;
    assert_eq!(read?.pos, 0);
    assert_eq!(cursor?, 0);
    Ok(())
}

/// Bulk appends (snapshot and resync chunks, which carry progress) leave the WAL
/// to the writer's checkpoint thread: every `CHECKPOINT_BYTES` committed, the
/// thread copies the WAL into `journal.db` (so the file grows though the writer
/// never reached its raised threshold). Streamed changes keep SQLite's own.
#[test]
fn the_checkpoint_thread_copies_the_wal_while_the_writer_appends_chunks(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempdir()?;
    let mut w = writer::SqliteWriter::open(dir.path())?;
    let threshold = |w: &writer::SqliteWriter| -> rusqlite::Result<i64> {
        w.conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
    };
    let file_len = || std::fs::metadata(dir.path().join(JOURNAL_FILE)).map_or(0, |m| m.len());
    let before = file_len();
    // 1 KiB of letters per row that do not repeat: blocks stay as large stored
    // as written (alike rows would be packed to a fraction).
    let wide = |n: u64| -> String {
        let mut rng = crate::pgoutput::tests_generator::XorShift::new(n);
        (0..1024)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect()
    };
    let chunk = |batch: u64| -> Vec<crate::journal::JournalEntry> {
        (1..=2048)
            .map(|i| {
                let n = batch * 2048 + i;
                let mut row = serde_json::Map::new();
                row.insert("n".into(), serde_json::json!(n));
                row.insert("w".into(), serde_json::json!(wide(n)));
                crate::journal::insert_into("a", 1000 + n, None, row.into())
            })
            .collect()
    };
    let progress = [crate::journal::ResyncProgress {
        id: 1,
        last_key: None,
        rows: 2048,
        done: false,
    }];
    // 8 MiB in four chunks: two nudges, half the raised threshold.
    for batch in 0..4u64 {
        let entries = chunk(batch);
        let refs: Vec<_> = entries.iter().map(|e| (e, None)).collect();
        JournalWriter::append(&mut w, &refs, None, &progress)?;
        assert_eq!(threshold(&w)?, wal::BACKSTOP_PAGES);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (w.checkpointer.runs() < 2 || file_len() < 6 << 20)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        w.checkpointer.runs(),
        2,
        "one checkpoint per 4 MiB committed"
    );
    assert!(
        file_len() >= 6 << 20,
        "the WAL was copied into the file: {before} -> {} bytes",
        file_len()
    );
    // A streamed batch of the same size: SQLite's threshold, no nudge.
    let entries = chunk(4);
    let refs: Vec<_> = entries.iter().map(|e| (e, None)).collect();
    JournalWriter::append(&mut w, &refs, None, &[])?;
    assert_eq!(threshold(&w)?, wal::DEFAULT_PAGES);
    for batch in 5..7 {
        let entries = chunk(batch);
        let refs: Vec<_> = entries.iter().map(|e| (e, None)).collect();
        JournalWriter::append(&mut w, &refs, None, &[])?;
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(w.checkpointer.runs(), 2, "streamed changes do not nudge");
    Ok(())
}
