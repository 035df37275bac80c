//! The audit queries' shared half: both stores keep single attempts and whole
//! batches (one row per batch a sink settled at once, its delivery ids in a
//! blob) and answer with attempts, a batch expanded to one per matching id.

use pgcdc_sinks::{Attempt, AttemptOutcome, BatchAttempt, CorruptIds, DeliveryIds};

use super::JournalError;

/// A stored batch row, as read back: the batch's attempt (its `ids` left empty)
/// and its delivery ids as stored, decoded only for the ids a query asks about.
pub(crate) struct BatchRow {
    pub(crate) head: BatchAttempt,
    /// The front-coded delivery ids ([`DeliveryIds`]).
    pub(crate) ids: Vec<u8>,
}

/// The upper bound of the ids a lookup of `event_id` matches (`ID` and `ID.N`):
/// '/' is the byte after '.', so `ID.N` < `ID/`. Rows with
/// `max_id >= event_id AND min_id <= bound` may hold one.
pub(crate) fn id_bound(event_id: &str) -> String {
    format!("{event_id}/")
}

/// Single attempts and batch rows of one event, oldest first (the batch rows
/// are candidates by id range; their blobs say which really hold it).
pub(crate) fn by_event(
    single: Vec<Attempt>,
    batches: Vec<BatchRow>,
    event_id: &str,
    corrupt: impl Fn(CorruptIds) -> JournalError,
) -> Result<Vec<Attempt>, JournalError> {
    if batches.is_empty() {
        return Ok(single);
    }
    let mut out = single;
    for b in &batches {
        for id in DeliveryIds::matching(&b.ids, event_id).map_err(&corrupt)? {
            out.push(b.head.attempt_of(id));
        }
    }
    // Stable: equal times keep single attempts (a batch's retries) first. Without
    // batch rows the stored order stands as it is.
    out.sort_by_key(|a| a.at);
    Ok(out)
}

/// Single attempts and batch rows of one sink (each list oldest first, as
/// stored), merged by time and cut at `limit`.
pub(crate) fn by_sink(
    single: Vec<Attempt>,
    batches: Vec<BatchRow>,
    limit: usize,
    corrupt: impl Fn(CorruptIds) -> JournalError,
) -> Result<Vec<Attempt>, JournalError> {
    if batches.is_empty() {
        return Ok(single);
    }
    let mut out = single;
    let mut expanded = 0usize;
    for b in &batches {
        if expanded >= limit {
            break;
        }
        for id in DeliveryIds::decode(&b.ids).map_err(&corrupt)? {
            out.push(b.head.attempt_of(id));
            expanded += 1;
        }
    }
    out.sort_by_key(|a| a.at);
    out.truncate(limit);
    Ok(out)
}

/// An outcome as stored.
pub(crate) fn outcome_str(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::Retrying => "retrying",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Skipped => "skipped",
    }
}

/// A stored outcome (anything unknown reads as failed).
pub(crate) fn outcome_parse(s: &str) -> AttemptOutcome {
    match s {
        "delivered" => AttemptOutcome::Delivered,
        "retrying" => AttemptOutcome::Retrying,
        "skipped" => AttemptOutcome::Skipped,
        _ => AttemptOutcome::Failed,
    }
}
