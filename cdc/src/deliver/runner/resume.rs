//! Where a runner resumes when the destination keeps its own record of progress.

use pgcdc_sinks::Checkpoint;

use super::RunnerError;

/// Where to resume when the sink says it has delivered through `at`; `known` is
/// the id of the journal event at `at.pos`, if the journal holds it.
pub(super) fn resume_cursor(
    name: &str,
    cursor: i64,
    at: &Checkpoint,
    known: Option<String>,
) -> Result<i64, RunnerError> {
    let err = |message: String| RunnerError::Resume {
        sink: name.to_string(),
        message,
    };
    match known {
        _ if at.pos == cursor => Ok(cursor),
        _ if at.pos == 0 => Ok(0),
        Some(id) if id == at.event_id => {
            if at.pos < cursor {
                tracing::warn!(sink = %name, local = cursor, destination = at.pos,
                    "the destination's progress record is behind the local cursor; resuming at the destination's position");
            } else {
                tracing::info!(sink = %name, local = cursor, destination = at.pos,
                    "the local cursor is stale; resuming at the destination's progress record");
            }
            Ok(at.pos)
        }
        Some(id) => Err(err(format!(
            "the destination's progress record says it has everything up to journal position {} \
             (event {}), but this journal holds event {id} there: the state dir is not the one \
             the destination was written from. Use the original state dir, or delete the sink's \
             progress record at the destination to start over",
            at.pos, at.event_id
        ))),
        None if at.pos < cursor => {
            tracing::warn!(sink = %name, local = cursor, destination = at.pos,
                "the destination's progress record points before the retained journal; resuming at the local cursor");
            Ok(cursor)
        }
        None => Err(err(format!(
            "the destination's progress record says it has everything up to journal position {} \
             (event {}), which this journal does not hold (its cursor is at {cursor}): the state \
             dir is not the one the destination was written from. Use the original state dir, or \
             delete the sink's progress record at the destination to start over",
            at.pos, at.event_id
        ))),
    }
}
