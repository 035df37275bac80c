//! The delivery audit log in Postgres: single attempts in `audit`, batches a
//! sink settled as a whole (Kafka) in `audit_batch`, one row each with its
//! delivery ids in a blob; the queries answer for each id as for a single
//! attempt (`journal::audit`).

use pgcdc_sinks::{Attempt, AttemptTime, BatchAttempt};

use super::{Params, Pg};
use crate::journal::audit::{self as shared, outcome_parse, outcome_str, BatchRow};
use crate::journal::JournalError;

/// Stores attempts (one statement).
pub(super) fn audit_insert(pg: &Pg, attempts: &[Attempt]) -> Result<(), JournalError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let event_ids: Vec<&str> = attempts.iter().map(|a| a.event_id.as_str()).collect();
    let sinks: Vec<&str> = attempts.iter().map(|a| a.sink.as_str()).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt as i32).collect();
    let ats: Vec<String> = attempts.iter().map(|a| a.at.to_string()).collect();
    let statuses: Vec<Option<i32>> = attempts.iter().map(|a| a.status.map(i32::from)).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let latencies: Vec<i64> = attempts
        .iter()
        .map(|a| a.latency_ms.min(i64::MAX as u64) as i64)
        .collect();
    let outcomes: Vec<&str> = attempts.iter().map(|a| outcome_str(a.outcome)).collect();
    pg.write_one(
        "INSERT INTO audit(event_id, sink, attempt, at, status, error, latency_ms, outcome) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::int4[], \
         $6::text[], $7::int8[], $8::text[])",
        &[
            &event_ids, &sinks, &numbers, &ats, &statuses, &errors, &latencies, &outcomes,
        ],
    )?;
    Ok(())
}

/// The attempt time stored in column `i` (text, see `AttemptTime`).
fn attempt_time(pg: &Pg, r: &tokio_postgres::Row, i: usize) -> Result<AttemptTime, JournalError> {
    pg.get::<String>(r, i)?
        .parse()
        .map_err(|e: pgcdc_sinks::ParseAttemptTimeError| pg.corrupt(e.to_string()))
}

fn attempts(pg: &Pg, sql: &str, params: Params<'_>) -> Result<Vec<Attempt>, JournalError> {
    let rows = pg.query(sql, params)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(Attempt {
            event_id: pg.get(r, 0)?,
            sink: pg.get(r, 1)?,
            attempt: pg.get::<i32>(r, 2)?.max(0) as u32,
            at: attempt_time(pg, r, 3)?,
            status: pg
                .get::<Option<i32>>(r, 4)?
                .and_then(|s| u16::try_from(s).ok()),
            error: pg.get(r, 5)?,
            latency_ms: pg.get::<i64>(r, 6)?.max(0) as u64,
            outcome: outcome_parse(pg.get(r, 7)?),
        });
    }
    Ok(out)
}

/// Stores batches, one row each (one statement).
pub(super) fn audit_insert_batches(pg: &Pg, batches: &[BatchAttempt]) -> Result<(), JournalError> {
    let batches: Vec<&BatchAttempt> = batches.iter().filter(|b| !b.ids.is_empty()).collect();
    if batches.is_empty() {
        return Ok(());
    }
    let sinks: Vec<&str> = batches.iter().map(|b| b.sink.as_str()).collect();
    let numbers: Vec<i32> = batches.iter().map(|b| b.attempt as i32).collect();
    let ats: Vec<String> = batches.iter().map(|b| b.at.to_string()).collect();
    let latencies: Vec<i64> = batches
        .iter()
        .map(|b| b.latency_ms.min(i64::MAX as u64) as i64)
        .collect();
    let outcomes: Vec<&str> = batches.iter().map(|b| outcome_str(b.outcome)).collect();
    let events: Vec<i32> = batches
        .iter()
        .map(|b| b.ids.len().min(i32::MAX as usize) as i32)
        .collect();
    let mins: Vec<&str> = batches.iter().map(|b| b.ids.min()).collect();
    let maxs: Vec<&str> = batches.iter().map(|b| b.ids.max()).collect();
    let ids: Vec<&[u8]> = batches.iter().map(|b| b.ids.as_bytes()).collect();
    pg.write_one(
        "INSERT INTO audit_batch(sink, attempt, at, latency_ms, outcome, events, min_id, max_id, ids) \
         SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::int8[], $5::text[], \
         $6::int4[], $7::text[], $8::text[], $9::bytea[])",
        &[
            &sinks, &numbers, &ats, &latencies, &outcomes, &events, &mins, &maxs, &ids,
        ],
    )?;
    Ok(())
}

fn batch_rows(pg: &Pg, sql: &str, params: Params<'_>) -> Result<Vec<BatchRow>, JournalError> {
    let rows = pg.query(sql, params)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(BatchRow {
            head: BatchAttempt {
                sink: pg.get(r, 0)?,
                attempt: pg.get::<i32>(r, 1)?.max(0) as u32,
                at: attempt_time(pg, r, 2)?,
                latency_ms: pg.get::<i64>(r, 3)?.max(0) as u64,
                outcome: outcome_parse(pg.get(r, 4)?),
                ids: Default::default(),
            },
            ids: pg.get(r, 5)?,
        });
    }
    Ok(out)
}

/// Every attempt for one event (its delivery ids `ID` and `ID.N`), oldest first.
pub(super) fn audit_by_event(pg: &Pg, event_id: &str) -> Result<Vec<Attempt>, JournalError> {
    let single = attempts(
        pg,
        "SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM audit \
         WHERE event_id = $1 OR starts_with(event_id, $1 || '.') ORDER BY id",
        &[&event_id],
    )?;
    let bound = shared::id_bound(event_id);
    let batches = batch_rows(
        pg,
        "SELECT sink, attempt, at, latency_ms, outcome, ids FROM audit_batch \
         WHERE max_id >= $1 AND min_id <= $2 ORDER BY id",
        &[&event_id, &bound],
    )?;
    shared::by_event(single, batches, event_id, |e| pg.corrupt(e.to_string()))
}

/// Attempts of one sink since an RFC 3339 time (UTC, `Z`), oldest first, at most `limit`.
pub(super) fn audit_by_sink(
    pg: &Pg,
    sink: &str,
    since: &str,
    limit: usize,
) -> Result<Vec<Attempt>, JournalError> {
    let limit = limit.min(i64::MAX as usize) as i64;
    let single = attempts(
        pg,
        "SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM audit \
         WHERE sink = $1 AND at >= $2 ORDER BY id LIMIT $3",
        &[&sink, &since, &limit],
    )?;
    // Each row holds at least one id: `limit` rows are enough.
    let batches = batch_rows(
        pg,
        "SELECT sink, attempt, at, latency_ms, outcome, ids FROM audit_batch \
         WHERE sink = $1 AND at >= $2 ORDER BY id LIMIT $3",
        &[&sink, &since, &limit],
    )?;
    shared::by_sink(single, batches, limit as usize, |e| {
        pg.corrupt(e.to_string())
    })
}

/// Removes attempts and batches older than `before` (RFC 3339). Returns how many rows.
pub(super) fn audit_prune(pg: &Pg, before: &str) -> Result<usize, JournalError> {
    let single = pg.write_one("DELETE FROM audit WHERE at < $1", &[&before])?;
    let batches = pg.write_one("DELETE FROM audit_batch WHERE at < $1", &[&before])?;
    Ok((single + batches) as usize)
}
