//! Fixture shared by the `e2e_*` tests. The reusable parts live in the harness
//! (`pgcdc_tests::fixture`) and are re-exported here for tests that
//! `mod e2e_fixture;`; what reads the journal (through pgcdc's store API) stays here.

// Each e2e_* test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::collections::HashSet;
use std::path::Path;

use anyhow::{ensure, Context};

pub use pgcdc_tests::fixture::*;

pub mod ha;
pub mod view;

/// The store of the state dir `state` (Postgres when [`with_pg_state`] moved it).
pub fn store(state: &Path) -> anyhow::Result<pgcdc::journal::Store> {
    Ok(match pg_state_url(state) {
        Some(url) => pgcdc::journal::Store::postgres(url.parse()?, PG_STATE_SCHEMA),
        None => pgcdc::journal::Store::sqlite(state),
    })
}

/// What the journal holds.
#[derive(Debug, PartialEq, Eq)]
pub struct JournalStats {
    /// Events in the journal.
    pub events: i64,
    /// Distinct event ids among them.
    pub distinct_ids: i64,
    /// Distinct (commit_lsn, seq) positions.
    pub distinct_positions: i64,
    /// Distinct `table:key` of insert events.
    pub distinct_insert_keys: i64,
}

/// Opens a session on the journal in `state` (pgcdc may be running).
pub fn journal(state: &Path) -> anyhow::Result<Box<dyn pgcdc::journal::StateStore>> {
    store(state)?
        .open(pgcdc::journal::Access::Existing)
        .with_context(|| format!("open the journal in {}", state.display()))
}

/// Every event the journal holds, in journal order.
pub fn journal_events(state: &Path) -> anyhow::Result<Vec<pgcdc::journal::StoredEvent>> {
    let journal = journal(state)?;
    let mut out = Vec::new();
    loop {
        let after = out
            .last()
            .map_or(0, |e: &pgcdc::journal::StoredEvent| e.pos);
        let page = journal.read_after(after, 10_000)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// Counts what the journal in `state` holds (through pgcdc's store API).
pub fn journal_stats(state: &Path) -> anyhow::Result<JournalStats> {
    let events = journal_events(state)?;
    let ids: HashSet<String> = events.iter().map(|e| e.event.id.to_string()).collect();
    let positions: HashSet<(u64, u32)> = events.iter().map(|e| (e.event.lsn.0, e.seq)).collect();
    let insert_keys: HashSet<String> = events
        .iter()
        .filter(|e| e.event.op == pgcdc_schema::Op::Insert)
        .filter_map(|e| {
            let key = serde_json::to_string(e.event.key.as_ref()?).ok()?;
            Some(format!("{}:{key}", e.table))
        })
        .collect();
    Ok(JournalStats {
        events: events.len() as i64,
        distinct_ids: ids.len() as i64,
        distinct_positions: positions.len() as i64,
        distinct_insert_keys: insert_keys.len() as i64,
    })
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
