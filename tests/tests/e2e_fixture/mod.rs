//! Fixture shared by the `e2e_*` tests. The reusable parts live in the harness
//! (`pgcdc_tests::fixture`) and are re-exported here for tests that
//! `mod e2e_fixture;`; what reads the journal file stays here.

// Each e2e_* test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};

pub use pgcdc_tests::fixture::*;

pub mod view;

/// What the journal file holds.
#[derive(Debug, PartialEq, Eq)]
pub struct JournalStats {
    /// Rows in `events`.
    pub events: i64,
    /// Distinct event ids among them.
    pub distinct_ids: i64,
    /// Distinct (commit_lsn, seq) positions.
    pub distinct_positions: i64,
    /// Distinct `table:key` of insert events.
    pub distinct_insert_keys: i64,
}

/// Reads `state/journal.db` (read-only; pgcdc may be running: SQLite WAL mode allows it).
pub fn journal_stats(state: &Path) -> anyhow::Result<JournalStats> {
    let path = state.join("journal.db");
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let stats = conn.query_row(
        "SELECT COUNT(*), COUNT(DISTINCT json_extract(payload, '$.id')), \
         COUNT(DISTINCT commit_lsn || '-' || seq), \
         COUNT(DISTINCT CASE WHEN json_extract(payload, '$.op') = 'insert' \
               THEN tbl || ':' || json_extract(payload, '$.key') END) FROM events",
        [],
        |r| {
            Ok(JournalStats {
                events: r.get(0)?,
                distinct_ids: r.get(1)?,
                distinct_positions: r.get(2)?,
                distinct_insert_keys: r.get(3)?,
            })
        },
    )?;
    Ok(stats)
}

/// Asserts the journal holds each of the `rows` inserts exactly once.
pub fn assert_journal_exact(state: &Path, rows: u64) -> anyhow::Result<()> {
    let s = journal_stats(state)?;
    let rows = rows as i64;
    ensure!(
        s.events == rows && s.distinct_ids == rows && s.distinct_positions == rows,
        "journal must hold each of {rows} changes exactly once: {s:?}"
    );
    ensure!(s.distinct_insert_keys == rows, "journal keys: {s:?}");
    Ok(())
}
