//! The delivery audit log: every attempt, queryable by event or by sink and time.

use pgcdc_sinks::{Attempt, AttemptOutcome};
use rusqlite::params;

use super::{JournalError, JournalReader};

fn outcome_str(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::Retrying => "retrying",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Skipped => "skipped",
    }
}

fn outcome_parse(s: &str) -> AttemptOutcome {
    match s {
        "delivered" => AttemptOutcome::Delivered,
        "retrying" => AttemptOutcome::Retrying,
        "skipped" => AttemptOutcome::Skipped,
        _ => AttemptOutcome::Failed,
    }
}

impl JournalReader {
    /// Stores attempts (one transaction).
    pub fn audit_insert(&mut self, attempts: &[Attempt]) -> Result<(), JournalError> {
        self.write(|tx, err| {
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit(event_id, sink, attempt, at, status, error, latency_ms, outcome) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for a in attempts {
                insert
                    .execute(params![
                        a.event_id,
                        a.sink,
                        a.attempt,
                        a.at.to_string(),
                        a.status,
                        a.error,
                        a.latency_ms as i64,
                        outcome_str(a.outcome)
                    ])
                    .map_err(err)?;
            }
        }
            Ok(())
        })
    }

    fn audit_query(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Attempt>, JournalError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(Attempt {
                    event_id: r.get(0)?,
                    sink: r.get(1)?,
                    attempt: r.get(2)?,
                    at: r.get::<_, String>(3)?.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            3,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                    status: r.get(4)?,
                    error: r.get(5)?,
                    latency_ms: r.get::<_, i64>(6)?.max(0) as u64,
                    outcome: outcome_parse(&r.get::<_, String>(7)?),
                })
            })
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sqlite(e))
    }

    /// Every attempt for one event (its delivery ids `ID` and `ID.N`), oldest first.
    pub fn audit_by_event(&self, event_id: &str) -> Result<Vec<Attempt>, JournalError> {
        self.audit_query(
            "SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM audit \
             WHERE event_id = ?1 OR event_id LIKE ?1 || '.%' ORDER BY id",
            [event_id],
        )
    }

    /// Attempts of one sink since an RFC 3339 time (UTC, `Z`), oldest first, at most `limit`.
    pub fn audit_by_sink(
        &self,
        sink: &str,
        since: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, JournalError> {
        self.audit_query(
            "SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM audit \
             WHERE sink = ?1 AND at >= ?2 ORDER BY id LIMIT ?3",
            params![sink, since, limit as i64],
        )
    }

    /// Removes attempts older than `before` (RFC 3339). Returns how many.
    pub fn audit_prune(&self, before: &str) -> Result<usize, JournalError> {
        self.conn
            .execute("DELETE FROM audit WHERE at < ?1", [before])
            .map_err(|e| self.sqlite(e))
    }
}
