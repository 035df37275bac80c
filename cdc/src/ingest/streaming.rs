//! Large transactions streamed before they commit (protocol v2,
//! `source.streaming = true`).
//!
//! ```text
//!  Stream Start(xid, first) ─ first: Discard(xid) ─┐
//!    Relation/Type/Insert/Update/Delete/Truncate/   │  JournalCommand::Stage,
//!    Message (each with its subxact xid) ─ Put ─────┤  written by the journal
//!  Stream Stop                                       │  thread after its batch's
//!  Stream Abort(xid, sub) ─ Discard(xid[, sub]) ─────┘  changes (journal::staging)
//!  Stream Commit(xid, commit_lsn, end_lsn, time)
//!    └▶ sync; Begin(commit_lsn); staged messages in seq order, read in pages,
//!       through apply::handle like any transaction's; Commit(end_lsn) ─ Confirm;
//!       Discard(xid)
//! ```
//!
//! So a streamed transaction becomes journal entries at its commit, in commit
//! order, keyed (commit LSN, ordinal) exactly as if it had come whole: the same
//! decoder, change builder and duplicate skip. Nothing of it is journaled, so
//! nothing reaches a sink, before its Stream Commit; an abort discards only its
//! rows. Memory holds one page of staged messages, not the transaction.
//!
//! What is confirmed to the slot while a streamed transaction is open: only
//! what the journal holds (the end of each committed transaction), never
//! anything of the open one, and no keepalive position (outside an open
//! streamed transaction, keepalives seen outside any transaction and block are
//! confirmed, to let the slot move past other traffic). The end of another
//! transaction committed meanwhile may still pass the open transaction's
//! *first* change: Postgres decides whether to send a transaction again by its
//! *commit* position, which lies past anything confirmed until the transaction
//! is journaled, and the slot's restart point stays behind the open
//! transaction's start whatever is confirmed. After a reconnect the server
//! therefore sends every open transaction again from its first block; so a new
//! session clears the staging first (also for a transaction the server now
//! sends unstreamed, whose stale rows would otherwise stay), and a block that
//! continues a transaction this session never saw start is a protocol error.
//!
//! Why keepalives wait: after a reconnect the server may not stream changes
//! that lie before the confirmed position (it decodes them only to rebuild the
//! transaction), so it spills them to disk; a keepalive confirmed between two
//! blocks would make it spill the part of the open transaction sent before it,
//! what streaming exists to avoid. Holding keeps no more WAL: the slot's
//! restart point is behind the open transaction anyway.
//!
//! Errors are definite ([`ReaderError::StreamOrder`], a store failure): pgcdc
//! stops before confirming anything of the transaction, and a restart streams
//! it again.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use pgcdc_schema::Lsn;
use tokio::sync::watch;

use super::apply::{handle, send, sync, SessionState};
use super::catalog::Catalog;
use super::journal_thread::{JournalCommand, JournalSender};
use super::reader_config::ReaderConfig;
use super::reader_error::ReaderError;
use crate::journal::{Access, JournalHead, StagedMessage, StagingOp};
use crate::pgoutput::{self, Message, StreamedMessage};
use crate::replication::ReplicationStream;

/// Most staged messages read back at once, and their most bytes (one larger
/// message comes alone).
const PAGE_MESSAGES: usize = 5_000;
const PAGE_BYTES: usize = 4 << 20;

/// What the reader knows of streamed transactions in one replication session.
#[derive(Debug)]
pub(super) struct Streams {
    /// `source.streaming`: without it a stream message is an error.
    enabled: bool,
    /// The transaction whose block is being read (between Stream Start and Stop).
    block: Option<u32>,
    /// Transactions streamed in this session and not yet committed or aborted, with
    /// the messages staged for each (a transaction of other tables stages none: its
    /// commit needs no read of the store).
    open: HashMap<u32, u64>,
    /// Order of the next staged message (increasing over the session).
    next_seq: i64,
}

/// A Stream Commit: what the replayed transaction's Begin and Commit carry.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamCommit {
    xid: u32,
    /// Messages staged for it (0: nothing to read back).
    staged: u64,
    flags: u8,
    commit_lsn: u64,
    end_lsn: u64,
    commit_time: i64,
}

/// What to do with one message.
#[derive(Debug)]
pub(super) enum Step {
    /// Not part of a stream: handled like any message.
    Handle(Message),
    /// Stage or discard.
    Stage(StagingOp),
    /// A streamed transaction committed: replay it.
    Replay(StreamCommit),
    /// Nothing.
    Skip,
}

impl Streams {
    /// A session's state (`enabled`: `source.streaming`).
    pub(super) fn new(enabled: bool) -> Streams {
        Streams {
            enabled,
            block: None,
            open: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Whether a streamed block is being read (no position inside it may be confirmed).
    pub(super) fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// Whether a streamed transaction is open (begun in this session, not yet
    /// committed or aborted): a keepalive's position is then not confirmed.
    pub(super) fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Decodes an XLogData payload: inside a block data messages carry their xid.
    pub(super) fn decode(&self, data: &Bytes) -> Result<StreamedMessage, pgoutput::DecodeError> {
        if self.in_block() {
            pgoutput::decode_stream_bytes(data)
        } else {
            pgoutput::decode_bytes(data).map(|message| StreamedMessage { xid: None, message })
        }
    }

    /// Decides what `streamed` (sent at `at`, as `data`) means.
    pub(super) fn step(
        &mut self,
        streamed: StreamedMessage,
        at: Lsn,
        data: &Bytes,
    ) -> Result<Step, ReaderError> {
        let order = |what: String| ReaderError::StreamOrder { lsn: at, what };
        let StreamedMessage { xid: sub, message } = streamed;
        let is_stream = matches!(
            message,
            Message::StreamStart { .. }
                | Message::StreamStop
                | Message::StreamCommit { .. }
                | Message::StreamAbort { .. }
        );
        if is_stream && !self.enabled {
            return Err(ReaderError::UnexpectedStream { lsn: at });
        }
        if let Some(top) = self.block {
            return match (message, sub) {
                (Message::StreamStop, _) => {
                    self.block = None;
                    Ok(Step::Skip)
                }
                // Shapes outlive an aborted subtransaction: Postgres does not send a
                // table's Relation again in the same transaction after one.
                (message @ (Message::Relation(_) | Message::Type { .. }), Some(_)) => {
                    Ok(Step::Stage(self.put(top, top, at, data, &message)))
                }
                (message, Some(sub)) => Ok(Step::Stage(self.put(top, sub, at, data, &message))),
                (Message::Origin { .. }, None) => Ok(Step::Skip),
                (other, None) => Err(order(format!(
                    "{} inside the streamed block of transaction {top}",
                    kind(&other)
                ))),
            };
        }
        match message {
            Message::StreamStart { xid, first_segment } => {
                self.block = Some(xid);
                if first_segment {
                    self.open.insert(xid, 0);
                    Ok(Step::Stage(StagingOp::Discard { xid, subxid: None }))
                } else if self.open.contains_key(&xid) {
                    Ok(Step::Skip)
                } else {
                    Err(order(format!(
                        "a block of transaction {xid} continues one this session never saw start"
                    )))
                }
            }
            Message::StreamStop => Err(order("Stream Stop outside a streamed block".into())),
            Message::StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                let Some(staged) = self.open.remove(&xid) else {
                    return Err(order(format!(
                        "Stream Commit of transaction {xid}, which this session never saw streamed"
                    )));
                };
                Ok(Step::Replay(StreamCommit {
                    xid,
                    staged,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                }))
            }
            Message::StreamAbort { xid, subxid } => {
                let subxid = if subxid == xid {
                    self.open.remove(&xid);
                    None
                } else {
                    Some(subxid)
                };
                Ok(Step::Stage(StagingOp::Discard { xid, subxid }))
            }
            other => Ok(Step::Handle(other)),
        }
    }

    fn put(
        &mut self,
        xid: u32,
        subxid: u32,
        at: Lsn,
        data: &Bytes,
        message: &Message,
    ) -> StagingOp {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(n) = self.open.get_mut(&xid) {
            *n += 1;
        }
        tracing::trace!(xid, subxid, seq, kind = kind(message), "staged");
        StagingOp::Put(StagedMessage {
            xid,
            subxid,
            seq,
            lsn: at,
            body: data.to_vec(),
        })
    }
}

/// A message kind's name, for errors.
fn kind(message: &Message) -> &'static str {
    match message {
        Message::Begin { .. } => "Begin",
        Message::Commit { .. } => "Commit",
        Message::Origin { .. } => "Origin",
        Message::Relation(_) => "Relation",
        Message::Type { .. } => "Type",
        Message::Insert { .. } => "Insert",
        Message::Update { .. } => "Update",
        Message::Delete { .. } => "Delete",
        Message::Truncate { .. } => "Truncate",
        Message::Message { .. } => "Message",
        Message::StreamStart { .. } => "Stream Start",
        Message::StreamStop => "Stream Stop",
        Message::StreamCommit { .. } => "Stream Commit",
        Message::StreamAbort { .. } => "Stream Abort",
    }
}

/// The replication stream while a replay holds the reader: status updates keep the
/// walsender from timing out (`wal_sender_timeout`) on a transaction that takes
/// longer to journal than that.
pub(super) struct Feedback<'a> {
    /// The stream.
    pub(super) stream: &'a mut ReplicationStream,
    /// What the journal holds durably.
    pub(super) head: &'a mut watch::Receiver<JournalHead>,
    /// The WAL position received so far.
    pub(super) received: u64,
}

impl Feedback<'_> {
    async fn send(&mut self) -> Result<(), ReaderError> {
        let durable = self.head.borrow_and_update().confirmed_lsn.0;
        self.stream
            .send_status(self.received.max(durable), durable, durable, false)
            .await?;
        Ok(())
    }
}

/// Journals a committed streamed transaction: its staged messages, in order, between
/// a Begin and a Commit at its commit position, through the path every transaction
/// takes; then discards its staging (after its changes, in the journal's order).
pub(super) async fn replay(
    commit: StreamCommit,
    at: Lsn,
    state: &mut SessionState<'_>,
    catalog: &mut Catalog,
    cfg: &ReaderConfig,
    journal: &JournalSender,
    mut feedback: Feedback<'_>,
) -> Result<(), ReaderError> {
    let StreamCommit {
        xid,
        staged,
        flags,
        commit_lsn,
        end_lsn,
        commit_time,
    } = commit;
    let staging = |source| ReaderError::Staging { xid, source };
    let task =
        |e: tokio::task::JoinError| staging(crate::journal::JournalError::Task(e.to_string()));
    let mut session = None;
    if staged > 0 {
        // Its last staged messages may still be queued: written once this returns.
        sync(journal).await?;
        let store = cfg.store.clone();
        session = Some(
            tokio::task::spawn_blocking(move || store.open(Access::Create))
                .await
                .map_err(task)?
                .map_err(staging)?,
        );
    }
    let begin = Message::Begin {
        final_lsn: commit_lsn,
        commit_time,
        xid,
    };
    handle(begin, at, state, catalog, cfg, journal).await?;
    let mut after = -1;
    let mut messages = 0u64;
    let mut status_sent = Instant::now();
    loop {
        if status_sent.elapsed() >= cfg.status_interval {
            feedback.send().await?;
            status_sent = Instant::now();
        }
        let Some(s) = session.take() else { break };
        let (s, page) = tokio::task::spawn_blocking(move || {
            let page = s.staged(xid, after, PAGE_MESSAGES, PAGE_BYTES);
            (s, page)
        })
        .await
        .map_err(task)?;
        session = Some(s);
        let page = page.map_err(staging)?;
        if page.is_empty() {
            break;
        }
        for staged in page {
            after = staged.seq;
            messages += 1;
            let body = Bytes::from(staged.body);
            let streamed =
                pgoutput::decode_stream_bytes(&body).map_err(|source| ReaderError::Decode {
                    lsn: staged.lsn,
                    source,
                })?;
            handle(streamed.message, staged.lsn, state, catalog, cfg, journal).await?;
        }
    }
    let commit = Message::Commit {
        flags,
        commit_lsn,
        end_lsn,
        commit_time,
    };
    handle(commit, at, state, catalog, cfg, journal).await?;
    if staged > 0 {
        send(
            journal,
            JournalCommand::Stage(StagingOp::Discard { xid, subxid: None }),
        )
        .await?;
    }
    tracing::debug!(xid, commit_lsn = %Lsn(commit_lsn), messages, "streamed transaction journaled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Lsn {
        Lsn(0x100)
    }

    fn step(s: &mut Streams, xid: Option<u32>, message: Message) -> Result<Step, ReaderError> {
        s.step(
            StreamedMessage { xid, message },
            at(),
            &Bytes::from_static(b"raw"),
        )
    }

    fn insert() -> Message {
        Message::Insert {
            relation_id: 1,
            new: pgoutput::Tuple(vec![]),
        }
    }

    fn start(xid: u32, first_segment: bool) -> Message {
        Message::StreamStart { xid, first_segment }
    }

    #[test]
    fn without_streaming_a_stream_message_is_an_error() {
        let mut s = Streams::new(false);
        assert!(matches!(
            step(&mut s, None, start(7, true)),
            Err(ReaderError::UnexpectedStream { .. })
        ));
        assert!(matches!(step(&mut s, None, insert()), Ok(Step::Handle(_))));
    }

    #[test]
    fn a_block_is_staged_by_subtransaction_and_shapes_by_top_level() {
        let mut s = Streams::new(true);
        assert!(matches!(
            step(&mut s, None, start(7, true)),
            Ok(Step::Stage(StagingOp::Discard {
                xid: 7,
                subxid: None
            }))
        ));
        assert!(s.in_block());
        let Ok(Step::Stage(StagingOp::Put(m))) = step(&mut s, Some(9), insert()) else {
            panic!("an insert in a block is staged");
        };
        assert_eq!(
            (m.xid, m.subxid, m.seq, m.body.as_slice()),
            (7, 9, 0, &b"raw"[..])
        );
        let relation = Message::Type {
            id: 1,
            namespace: String::new(),
            name: "t".into(),
        };
        let Ok(Step::Stage(StagingOp::Put(m))) = step(&mut s, Some(9), relation) else {
            panic!("a type in a block is staged");
        };
        assert_eq!((m.xid, m.subxid, m.seq), (7, 7, 1));
        assert!(matches!(
            step(&mut s, None, Message::StreamStop),
            Ok(Step::Skip)
        ));
        assert!(!s.in_block());
        // A later block of the same transaction keeps what was staged.
        assert!(matches!(
            step(&mut s, None, start(7, false)),
            Ok(Step::Skip)
        ));
    }

    #[test]
    fn aborts_discard_the_subtransaction_or_the_whole() {
        let mut s = Streams::new(true);
        let _ = step(&mut s, None, start(7, true));
        let _ = step(&mut s, None, Message::StreamStop);
        assert!(matches!(
            step(&mut s, None, Message::StreamAbort { xid: 7, subxid: 9 }),
            Ok(Step::Stage(StagingOp::Discard {
                xid: 7,
                subxid: Some(9)
            }))
        ));
        assert!(matches!(
            step(&mut s, None, Message::StreamAbort { xid: 7, subxid: 7 }),
            Ok(Step::Stage(StagingOp::Discard {
                xid: 7,
                subxid: None
            }))
        ));
        // Gone: a commit of it now would journal nothing it staged.
        let commit = Message::StreamCommit {
            xid: 7,
            flags: 0,
            commit_lsn: 1,
            end_lsn: 2,
            commit_time: 0,
        };
        assert!(matches!(
            step(&mut s, None, commit),
            Err(ReaderError::StreamOrder { .. })
        ));
    }

    #[test]
    fn out_of_order_messages_are_errors() {
        let mut s = Streams::new(true);
        assert!(matches!(
            step(&mut s, None, start(7, false)),
            Err(ReaderError::StreamOrder { .. })
        ));
        let mut s = Streams::new(true);
        assert!(matches!(
            step(&mut s, None, Message::StreamStop),
            Err(ReaderError::StreamOrder { .. })
        ));
        let _ = step(&mut s, None, start(7, true));
        let begin = Message::Begin {
            final_lsn: 1,
            commit_time: 0,
            xid: 8,
        };
        assert!(matches!(
            step(&mut s, None, begin),
            Err(ReaderError::StreamOrder { .. })
        ));
    }

    #[test]
    fn a_commit_of_a_streamed_transaction_is_replayed() {
        let mut s = Streams::new(true);
        let _ = step(&mut s, None, start(7, true));
        let _ = step(&mut s, Some(7), insert());
        let _ = step(&mut s, None, Message::StreamStop);
        let commit = Message::StreamCommit {
            xid: 7,
            flags: 0,
            commit_lsn: 0x200,
            end_lsn: 0x230,
            commit_time: 5,
        };
        let Ok(Step::Replay(c)) = step(&mut s, None, commit) else {
            panic!("a stream commit is replayed");
        };
        assert_eq!(
            (c.xid, c.staged, c.commit_lsn, c.end_lsn),
            (7, 1, 0x200, 0x230)
        );
    }
}
