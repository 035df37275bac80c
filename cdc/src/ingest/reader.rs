//! The reader: one replication session after another (reconnecting with
//! capped exponential backoff), decoding pgoutput into journal commands and
//! reporting to the slot only what the journal holds durably.
//!
//! Relations are matched by OID (see `source::identity`): a captured table
//! renamed keeps being captured, its events carry the new name. A relation the
//! stream describes that is neither captured nor one of the publication's other
//! tables known at start stops the reader: skipping it would let the slot be
//! confirmed past changes that were never journaled.
//!
//! Transient (reconnect): socket errors, server shutdown, a slot still held
//! by our previous, dying walsender. Definite (stop): auth, TLS, protocol
//! violations, decode errors, a missing slot or publication, a relation that
//! cannot be placed.

use std::time::{Duration, Instant};

use pgcdc_schema::Lsn;
use tokio::sync::watch;

use super::apply::{handle, send, sync, SessionState};
use super::changes::{ChangeBuilder, Shapes};
use super::journal_thread::{JournalCommand, JournalSender};
pub(crate) use super::reader_config::ReaderConfig;
pub(crate) use super::reader_error::ReaderError;
use super::streaming::{Step, Streams};
use crate::ingest::catalog::Catalog;
use crate::journal::{JournalHead, StagingOp};
use crate::replication::{
    connect_sql, ReplicationConnection, ReplicationError, ReplicationMessage,
};
use crate::supervise::Backoff;

/// Silence after which a status update asks the server for a reply.
const SERVER_PING_AFTER: Duration = Duration::from_secs(10);
/// Silence after which the server is considered gone.
const SERVER_SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// How a session ended without error.
enum SessionEnd {
    Shutdown,
}

/// First and maximum reconnect delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Streams until `shutdown`; reconnects after transient failures.
pub(crate) async fn run(
    cfg: ReaderConfig,
    journal: JournalSender,
    mut head: watch::Receiver<JournalHead>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ReaderError> {
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut builder = ChangeBuilder::with_shapes(Shapes::from_durable(cfg.shapes.clone()));
    // Names as last seen and partitions found while running outlive a reconnect.
    let mut capture = cfg.capture.clone();
    let mut floor = cfg.slot_floor;
    let mut recover_at = cfg.recover_at;
    loop {
        builder.reset();
        let started = Instant::now();
        let result = match recover_at {
            Some(at) => super::slot_loss::resync_all(&cfg.recovery(&capture), at, &journal)
                .await
                .map(|()| {
                    recover_at = None;
                    floor = floor.max(at);
                })
                .map_err(ReaderError::from),
            None => Ok(()),
        };
        let mut state = SessionState {
            builder: &mut builder,
            capture: &mut capture,
            floor,
        };
        let result = match result {
            Ok(()) => session(&cfg, &mut state, &journal, &mut head, &mut shutdown).await,
            Err(e) => Err(e),
        };
        let err = match result {
            Ok(SessionEnd::Shutdown) => return Ok(()),
            Err(ReaderError::SlotLost(lost))
                if cfg.on_slot_lost == crate::config::OnSlotLost::Resync =>
            {
                tracing::warn!(slot = %lost.slot, "source.on_slot_lost = \"resync\": recreating the slot");
                match super::slot_loss::recreate(&cfg.recovery(&capture), &journal).await {
                    Ok(at) => {
                        recover_at = Some(at);
                        continue;
                    }
                    Err(e) => ReaderError::from(e),
                }
            }
            Err(e) => e,
        };
        let err = match err {
            e if e.is_transient() => e,
            e => {
                // Said here as well: the sink runners end with the reader (the journal
                // closes), and the supervisor may report one of them first.
                if !matches!(e, ReaderError::JournalGone) {
                    tracing::error!(error = %e, "the reader stops");
                }
                return Err(e);
            }
        };
        if started.elapsed() > BACKOFF_MAX {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "replication connection lost; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

async fn session(
    cfg: &ReaderConfig,
    state: &mut SessionState<'_>,
    journal: &JournalSender,
    head: &mut watch::Receiver<JournalHead>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, ReaderError> {
    let mut catalog = Catalog::new(connect_sql(&cfg.url).await?);
    let mut conn = ReplicationConnection::connect(&cfg.url).await?;
    // Every connect, not only the first: a host list or a DNS name may lead elsewhere.
    let ident = conn.identify_system().await?;
    if ident.systemid != cfg.system_id {
        return Err(ReaderError::OtherSystem {
            url: cfg.url.to_string(),
            expected: cfg.system_id.clone(),
            found: ident.systemid,
        });
    }
    // The server sends every transaction still open again, from its start: what an
    // earlier session staged goes (see `streaming`).
    send(journal, JournalCommand::Stage(StagingOp::Clear)).await?;
    let mut streams = Streams::new(cfg.streaming);
    // Everything journaled is durable; start from there (Postgres starts at
    // the slot's confirmed position if that is later).
    let start = sync(journal).await?.confirmed_lsn;
    state.builder.rewind_shapes(start);
    let stream_host = conn.host().to_owned();
    super::slot_loss::check_slot(catalog.client(), &cfg.slot, conn.host(), start).await?;
    let mut stream = conn
        .start_replication(&cfg.slot, start.0, &cfg.publication, cfg.streaming)
        .await?;
    // Re-read now that the slot is ours: nobody else can move it from here on.
    let slot_confirmed = crate::source::slot_info(catalog.client(), &cfg.slot)
        .await
        .map_err(ReplicationError::Sql)?
        .and_then(|s| s.confirmed_flush_lsn)
        .and_then(|l| l.parse::<Lsn>().ok());
    let reach = start.max(state.floor);
    if let Some(confirmed) = slot_confirmed.filter(|c| *c > reach) {
        return Err(ReaderError::SlotAhead {
            slot: cfg.slot.clone(),
            slot_confirmed: confirmed,
            journal: reach,
        });
    }
    tracing::info!(slot = %cfg.slot, from = %start, host = %stream_host, timeline = ident.timeline, streaming = cfg.streaming, "replication started");
    let _connected = crate::health::health().replication_connected();

    let mut ticker = tokio::time::interval(cfg.status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut received: u64 = start.0;
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(cfg.heartbeat.unwrap_or(Duration::from_secs(3600)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat_on = cfg.heartbeat.is_some();
    let mut was_paused = false;
    loop {
        let paused = cfg.fill.is_full();
        if paused != was_paused {
            was_paused = paused;
            crate::health::health().set_reader_paused(paused);
            if paused {
                tracing::warn!("journal.max_bytes reached: the reader pauses (Postgres keeps the WAL) until pruning makes room; sinks that lag hold the journal");
            } else {
                tracing::info!("the journal has room again: the reader resumes");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {
                // Finish what is in hand: wait for the journal, confirm it, leave.
                let durable = sync(journal).await?.confirmed_lsn;
                stream.send_status(received.max(durable.0), durable.0, durable.0, false).await?;
                tracing::info!(confirmed = %durable, "replication stopped");
                if let Err(e) = tokio::time::timeout(Duration::from_secs(5), stream.finish()).await.unwrap_or(Ok(())) {
                    tracing::debug!(error = %e, "closing the replication stream");
                }
                return Ok(SessionEnd::Shutdown);
            }
            _ = heartbeat.tick(), if heartbeat_on => {
                if let Err(e) = catalog.heartbeat().await {
                    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                        tracing::warn!(error = %crate::source::sql_message(&e), "heartbeat disabled: the role may not call pg_logical_emit_message; on a quiet database the slot then moves only with keepalives");
                        heartbeat_on = false;
                    } else {
                        return Err(ReplicationError::Sql(e).into());
                    }
                }
            }
            _ = ticker.tick() => {
                // Lets the journal thread check its file even when nothing is written;
                // a full queue means it is busy and checks at every batch anyway.
                let _ = journal.try_send(JournalCommand::Check);
                if paused {
                    // Our own silence, not the server's; wake the writer to prune and re-measure.
                    last_heard = Instant::now();
                    sync(journal).await?;
                }
                let silent = last_heard.elapsed();
                if silent > SERVER_SILENCE_LIMIT {
                    // A server that vanished without closing the socket: reconnect.
                    return Err(ReplicationError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no message from the server for {} s", silent.as_secs()),
                    )).into());
                }
                let durable = head.borrow_and_update().confirmed_lsn.0;
                crate::metrics::source_lag(received, durable);
                let ping = silent > SERVER_PING_AFTER;
                stream.send_status(received.max(durable), durable, durable, ping).await?;
            }
            msg = stream.next_message(), if !paused => {
                last_heard = Instant::now();
                let Some(msg) = msg? else {
                    return Err(ReplicationError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server ended the replication stream",
                    )).into());
                };
                match msg {
                    ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                        received = received.max(wal_end);
                        let at = Lsn(wal_start);
                        let message = streams.decode(&data)
                            .map_err(|source| ReaderError::Decode { lsn: at, source })?;
                        let step = streams.step(message, at, &data)?;
                        // The message's buffer goes before its change is handed to the
                        // journal: for a wide row it is the row's size twice over (hex),
                        // and the journal's copy of the row would otherwise meet it.
                        drop(data);
                        match step {
                            Step::Handle(message) => {
                                handle(message, at, state, &mut catalog, cfg, journal).await?;
                            }
                            Step::Stage(op) => send(journal, JournalCommand::Stage(op)).await?,
                            Step::Replay(commit) => {
                                let feedback = super::streaming::Feedback { stream: &mut stream, head, received };
                                super::streaming::replay(commit, at, state, &mut catalog, cfg, journal, feedback).await?;
                            }
                            Step::Skip => {}
                        }
                        // Waiting on a full journal queue is not server silence.
                        last_heard = Instant::now();
                    }
                    ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                        received = received.max(wal_end);
                        if !state.builder.in_transaction() && !streams.any_open() {
                            // Nothing of ours is pending before wal_end: let the slot move
                            // past other tables' and databases' traffic. Not while a
                            // streamed transaction is open (a block is always one's):
                            // after a reconnect the server would spill its changes
                            // before wal_end (see `streaming`).
                            send(journal, JournalCommand::Confirm(Lsn(wal_end))).await?;
                        }
                        if reply_requested {
                            let durable = head.borrow_and_update().confirmed_lsn.0;
                            stream.send_status(received.max(durable), reply_flush(durable, received), durable, false).await?;
                        }
                    }
                }
            }
        }
    }
}

/// The flush position of a reply the server asked for. A walsender that is
/// shutting down asks for replies until the client has everything it sent, and
/// judges that by the flush position when it is valid, else by the write
/// position. With the journal behind what was received (with the state store in
/// the very cluster that is shutting down it cannot catch up: its sessions are
/// gone) a valid flush would hold the shutdown for `wal_sender_timeout`. So then
/// the reply says "not flushed" (invalid, 0): the server confirms nothing to the
/// slot from it (only a valid flush moves the slot), and lets the walsender end.
/// The slot keeps the last durable position; the next session resumes there.
fn reply_flush(durable: u64, received: u64) -> u64 {
    if durable < received {
        0
    } else {
        durable
    }
}
