//! The booked batch's commit (its DLQ rows and the cursor), run on a third
//! journal connection. The journal thread holds the store's write lock for
//! most of a backlog's drain, and a commit waits for it: a sink that delivers
//! in one phase (stdout, HTTP) delivers the next batch meanwhile instead of
//! waiting too. A two-phase sink (Kafka) already overlaps the commit with the
//! destination's acknowledgements.
//!
//! One commit is under way at a time, in batch order. The runner waits for it
//! once the next batch has settled (a two-phase sink: before that batch
//! settles), before it reads the DLQ when the commit adds rows to it, when it
//! has caught up, and when it stops. A crash of a one-phase sink's runner
//! repeats at most the batch in delivery and the one before it (at least once,
//! as the README says); a two-phase sink's, as before, one batch.

use super::{JournalReader, RunnerError};
use crate::journal::{DlqRecord, JournalError};

/// A commit under way: the connection comes back with the result.
type CommitTask = tokio::task::JoinHandle<(JournalReader, Result<(), JournalError>)>;

/// The runner's commits, one at a time on their own connection.
pub(super) struct Commits {
    writer: Option<JournalReader>,
    /// The commit under way, and whether it adds DLQ rows.
    pending: Option<(CommitTask, bool)>,
}

/// One batch's bookkeeping: DLQ rows and where the cursor goes.
pub(super) struct Commit {
    pub(super) sink: String,
    pub(super) cursor: i64,
    pub(super) generation: i64,
    pub(super) records: Vec<DlqRecord>,
    pub(super) replaying: std::collections::HashSet<String>,
}

impl Commits {
    pub(super) fn new(writer: JournalReader) -> Commits {
        Commits {
            writer: Some(writer),
            pending: None,
        }
    }

    /// Starts `commit` after the one under way has landed.
    pub(super) async fn start(&mut self, sink: &str, commit: Commit) -> Result<(), RunnerError> {
        self.wait(sink).await?;
        let mut writer = self.writer.take().ok_or_else(|| {
            RunnerError::Task(sink.to_string(), "the commit connection is gone".into())
        })?;
        let adds_dlq_rows = !commit.records.is_empty();
        let task = tokio::task::spawn_blocking(move || {
            let Commit {
                sink,
                cursor,
                generation,
                records,
                replaying,
            } = commit;
            let out = writer.commit_batch(&sink, cursor, generation, &records, &replaying);
            (writer, out)
        });
        self.pending = Some((task, adds_dlq_rows));
        Ok(())
    }

    /// Waits for the commit under way, if any; its error is the runner's.
    pub(super) async fn wait(&mut self, sink: &str) -> Result<(), RunnerError> {
        let Some((task, _)) = self.pending.take() else {
            return Ok(());
        };
        let (writer, out) = task
            .await
            .map_err(|e| RunnerError::Task(sink.to_string(), e.to_string()))?;
        self.writer = Some(writer);
        Ok(out?)
    }

    /// Waits for the commit under way if it adds DLQ rows: a read of the DLQ
    /// must see them.
    pub(super) async fn wait_for_dlq_rows(&mut self, sink: &str) -> Result<(), RunnerError> {
        if self.pending.as_ref().is_some_and(|(_, dlq)| *dlq) {
            self.wait(sink).await?;
        }
        Ok(())
    }
}
