//! The running engine: preflight, then reader → journal thread → sink runners.
//!
//! ```text
//!  ReplicationStream ─▶ reader ─(bounded mpsc)─▶ journal thread ─▶ journal.db
//!        ▲ status (durable LSN)        │                  │ watch(head)
//!        └─────────────────────────────┘                  ▼
//!                                       runner(sink 1) … runner(sink N)
//! ```
//!
//! Beside them, the resync driver, the scheduler and the audit writer run as
//! background tasks; what their failures do is decided in `supervise`.
//!
//! Shutdown (SIGINT/SIGTERM): the reader stops reading, waits until the
//! journal has everything it sent, reports that to the slot and closes;
//! each runner finishes the batch in hand. Exit 0.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use pgcdc_sinks::AuditLog;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{Config, SnapshotMode};
use crate::deliver::{audit_writer, plan, runner};
use crate::ingest::{journal_guard, journal_thread, reader, scheduler, watermark};
use crate::journal::{Access, JournalError, JournalHead, JournalWriter, MetaKey, Store};
use crate::replication::{connect_sql, ReplicationConnection, SourceUrl};
use crate::source;
use crate::source::identity::Capture;
use crate::supervise;

/// How long a slot held by a previous (crashed) pgcdc may take to be released.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(20);

/// Preflight, set up the publication and slot, then stream and deliver until
/// `shutdown` becomes true. With `[ha] enabled`, only while this process leads
/// (see `crate::ha`).
pub(crate) async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if config.deliver.is_some() {
        bail!("this config has [deliver] (Kafka topics, no [source]): run it with `pgcdc deliver`");
    }
    if config.ha.enabled {
        // Created (migrated) before anyone stands by: the lease is one of its tables.
        let store = Store::from_config(&config.state);
        tokio::task::spawn_blocking(move || store.open(Access::Create).map(drop))
            .await
            .map_err(|e| anyhow!("state store task failed: {e}"))??;
        // One notifier for the process: a standby is ready (and pinging) too.
        let _notify = AbortOnDrop(tokio::spawn(crate::sd_notify::run(
            shutdown.clone(),
            crate::ha::sd_ready,
        )));
        return crate::ha::run(
            config,
            shutdown,
            |config| async move { Ok(crate::admin::start(config).await?) },
            |config, epoch, stop| lead(config, Some(epoch), stop),
        )
        .await;
    }
    crate::metrics::metrics().leader.set(1);
    lead(std::sync::Arc::new(config), None, shutdown).await
}

/// The engine itself. `fence`: the HA epoch every store write carries (and fails
/// with once another process took over); None without HA, which also starts the
/// admin API here (with HA it runs all along, beside the election).
async fn lead(
    config: std::sync::Arc<Config>,
    fence: Option<i64>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    plan::sandbox::install(&config.jq)?;
    let url = config.source_url()?;
    let triggers = plan::triggers(&config);
    let store = Store::from_config(&config.state);
    if fence.is_some() {
        store.set_fence(fence)?;
    }
    let mut writer = store.writer()?;
    let prior = journal_guard::Prior::read(&*writer)?;
    let mut tracking = plan::old_tracking(&triggers);
    crate::journal::fill_toast_of(&mut tracking, &config.source.fill_toast);
    writer.set_old_tracking(tracking);
    warn_orphaned_cursors(&config, &store)?;
    // Up before preflight, so /healthz answers while pgcdc waits on the source.
    let _admin = match fence {
        None => Some(crate::admin::start(config.clone()).await?),
        Some(_) => None,
    };
    // systemd (`Type=notify`): watchdog pings from now on, READY=1 once streaming
    // (under HA the process-wide notifier in `run` does this).
    let _notify = fence.is_none().then(|| {
        AbortOnDrop(tokio::spawn(crate::sd_notify::run(
            shutdown.clone(),
            crate::sd_notify::streaming,
        )))
    });

    let client = connect_sql(&url)
        .await
        .with_context(|| format!("cannot connect to the source database at {url}"))?;
    preflight(&config, &client).await?;
    let prepared = prepare_source(&config, &url, &client, &mut *writer, &store, prior).await?;
    drop(client);

    let engine = Engine::start(config, url, writer, store, prepared, &triggers, fence)?;
    engine.until_shutdown(shutdown).await
}

/// Every preflight check passes, or the one failure is a slot still held by a
/// previous (crashed) pgcdc and it is released in time.
async fn preflight(config: &Config, client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let checks = source::preflight(config, client).await;
    for c in checks.iter().filter(|c| c.warning) {
        if let Ok(detail) = &c.outcome {
            tracing::warn!(check = %c.name, detail = %detail, "preflight warning");
        }
    }
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|c| {
            c.outcome
                .as_ref()
                .err()
                .map(|p| format!("  {}: {p}", c.name))
        })
        .collect();
    let slot_busy = checks.iter().any(|c| {
        c.name.starts_with("slot ")
            && c.outcome
                .as_ref()
                .is_err_and(|p| p.problem.contains("in use"))
    });
    if slot_busy && failed.len() == 1 {
        source::wait_slot_released(client, &config.source.slot, SLOT_RELEASE_WAIT)
            .await
            .map_err(|p| anyhow!("preflight failed:\n  slot {}: {p}", config.source.slot))?;
    } else if !failed.is_empty() {
        bail!("preflight failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// Checks the journal belongs to this source, then sets up the publication, the
/// captured tables' identity, the slot and (with `snapshot = "initial"`) the
/// initial snapshot; returns what the reader needs.
async fn prepare_source(
    config: &Config,
    url: &SourceUrl,
    client: &tokio_postgres::Client,
    writer: &mut dyn JournalWriter,
    store: &Store,
    prior: journal_guard::Prior,
) -> anyhow::Result<Prepared> {
    // Where the state is, for the messages below (no password).
    let state_dir = &match config.state.url {
        Some(_) => std::path::PathBuf::from(store.describe()),
        None => config.state.dir.clone(),
    };
    let mut conn = ReplicationConnection::connect(url).await?;
    let ident = conn.identify_system().await?;
    match writer.meta(&MetaKey::SystemId)? {
        Some(id) if id != ident.systemid => bail!(
            "the journal in {} was written for database system {id}, but the source at {url} is \
             system {}: source.url leads to a different database than before (a promoted standby \
             keeps the system identifier, so this is not a failover of the original); pgcdc refuses \
             to mix two databases' changes — fix: point source.url back at the original database \
             or its standbys, or point [state] dir at a new directory for this source",
            state_dir.display(),
            ident.systemid
        ),
        Some(_) => {}
        None => writer.set_meta(&MetaKey::SystemId, &ident.systemid)?,
    }
    if source::ensure_publication(config, client)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot create publication {}: {}",
                config.source.publication,
                source::sql_message(&e)
            )
        })?
    {
        writer.set_meta(&MetaKey::CreatedPublication, &config.source.publication)?;
    }
    if config.source.ddl_capture {
        client
            .batch_execute(&source::ddl_capture::install_sql(&config.source.slot))
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot install source.ddl_capture's event trigger: {} — it needs a \
                     superuser; connect as one or set source.ddl_capture = false",
                    source::sql_message(&e)
                )
            })?;
    }
    let capture = source::identity::capture(config, client, writer).await?;
    let slot_now = source::slot_info(client, &config.source.slot).await?;
    if slot_now
        .as_ref()
        .is_some_and(|s| s.wal_status.as_deref() == Some("lost"))
    {
        // Preflight let it through only with on_slot_lost = "resync": the slot is useless,
        // drop it and recover as from a missing one.
        client
            .execute(
                "SELECT pg_drop_replication_slot($1)",
                &[&config.source.slot],
            )
            .await?;
        tracing::warn!(slot = %config.source.slot, "slot lost WAL it needed (wal_status = lost): dropped, to be recreated");
    }
    let slot_confirmed = source::slot_info(client, &config.source.slot)
        .await?
        .map(|s| {
            s.confirmed_flush_lsn
                .and_then(|l| l.parse::<pgcdc_schema::Lsn>().ok())
                .unwrap_or_default()
        });
    let mut slot_plan = journal_guard::check(
        writer,
        prior,
        state_dir,
        &config.source.slot,
        slot_confirmed,
    )?;
    let mut recover = false;
    if slot_plan == journal_guard::SlotPlan::Lost {
        let lost = crate::ingest::slot_loss::SlotLost::new(
            &config.source.slot,
            crate::ingest::slot_loss::Loss::Missing,
            conn.host().to_owned(),
            writer.head().confirmed_lsn,
        );
        crate::ingest::slot_loss::alert(&lost);
        if config.source.on_slot_lost != crate::config::OnSlotLost::Resync {
            return Err(lost.into());
        }
        tracing::warn!(slot = %config.source.slot, "source.on_slot_lost = \"resync\": recreating the slot");
        recover = true;
        slot_plan = journal_guard::SlotPlan::Create;
    }
    // Queued before the slot exists: a crash after its creation leaves the snapshot
    // queued, and the resync driver finishes it with watermarks.
    // A recovery resyncs every table anyway: no snapshot of its own.
    let initial = config.source.snapshot == SnapshotMode::Initial && !recover;
    if slot_plan == journal_guard::SlotPlan::Create {
        if initial {
            crate::ingest::snapshot::queue(config, store)?;
        }
        journal_guard::creating(writer, &config.source.slot)?;
    }
    let mut recover_at = None;
    if let Some(created) = source::ensure_slot(config, client, &mut conn, initial).await? {
        if recover {
            let at = pgcdc_schema::Lsn(created.consistent_point);
            crate::ingest::slot_loss::check_ahead(
                client,
                &config.source.slot,
                at,
                writer.head().confirmed_lsn,
            )
            .await?;
            recover_at = Some(at);
        }
        writer.set_meta(&MetaKey::CreatedSlot, &config.source.slot)?;
        journal_guard::created(
            writer,
            &config.source.slot,
            pgcdc_schema::Lsn(created.consistent_point),
        )?;
        if let (true, Some(name)) = (initial, created.snapshot_name.as_deref()) {
            // The exported snapshot lives as long as `conn` stays open and idle.
            let rows = crate::ingest::snapshot::copy(
                url,
                config.source.tables.entries(),
                name,
                pgcdc_schema::Lsn(created.consistent_point),
                writer,
                store,
            )
            .await?;
            tracing::info!(rows, "initial snapshot journaled");
        }
    }
    conn.close().await;
    // A recovery interrupted by a crash is finished now; a new one is recorded as pending.
    match recover_at {
        Some(at) => journal_guard::set_recovery(writer, Some(at))?,
        None => recover_at = journal_guard::recovery_pending(writer)?,
    }
    let slot_floor = journal_guard::slot_floor(writer)?;
    Ok(Prepared {
        capture,
        system_id: ident.systemid,
        slot_floor,
        recover_at,
    })
}

/// What `prepare_source` found and set up, for the reader.
struct Prepared {
    /// What the reader captures.
    capture: Capture,
    /// The source's system identifier (every reconnect must find it again).
    system_id: String,
    /// Where the slot was when pgcdc created or adopted it.
    slot_floor: pgcdc_schema::Lsn,
    /// A lost slot's recovery still to do, at the new slot's position.
    recover_at: Option<pgcdc_schema::Lsn>,
}

/// The running engine: the journal thread, the reader, the sink runners and the
/// background tasks.
struct Engine {
    stop_tx: watch::Sender<bool>,
    reader: JoinHandle<Result<(), reader::ReaderError>>,
    runners: JoinSet<Result<(), runner::RunnerError>>,
    audit: AuditLog,
    audit_task: JoinHandle<Result<(), JournalError>>,
    resync_task: JoinHandle<()>,
    scheduler_task: JoinHandle<()>,
    writer_thread: std::thread::JoinHandle<Result<(), JournalError>>,
}

impl Engine {
    /// Starts the journal thread, the audit writer, one runner per sink, the
    /// resync driver, the scheduler and the reader.
    fn start(
        config: std::sync::Arc<Config>,
        url: SourceUrl,
        writer: Box<dyn JournalWriter>,
        store: Store,
        prepared: Prepared,
        triggers: &[plan::Trigger],
        fence: Option<i64>,
    ) -> anyhow::Result<Engine> {
        let (head_tx, head_rx) = watch::channel::<JournalHead>(writer.head());
        let retention = config.journal.retention();
        let (journal_tx, journal_rx) = journal_thread::queue();
        let fill = std::sync::Arc::new(journal_thread::JournalFill::new(config.journal.max_bytes));
        let writer_fill = fill.clone();
        let recent = store.recent().clone();
        let writer_thread = std::thread::Builder::new()
            .name("pgcdc-journal".into())
            .spawn(move || {
                journal_thread::run(writer, journal_rx, head_tx, retention, writer_fill, recent)
            })
            .context("cannot start the journal thread")?;

        // Background tasks and what their failures do: see `supervise`.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (audit, audit_rx) = AuditLog::split(
            audit_writer::QUEUE_CAPACITY,
            audit_writer::BATCH_QUEUE_CAPACITY,
        );
        let audit_task = tokio::spawn(audit_writer::run(
            store.clone(),
            audit_rx,
            config.audit.retention(),
            stop_rx.clone(),
            supervise::TaskHealth::new("audit writer"),
        ));

        let runners = crate::sink_build::Spawner {
            audit: &audit,
            store: &store,
            head: &head_rx,
            stop: &stop_rx,
            fence,
        }
        .runners(&config, triggers, &url.dbname)?;

        // Resyncs (and a snapshot continued after a restart) run beside the reader.
        let windows = watermark::Windows::default();
        let resync_timeout = config.source.resync_statement_timeout();
        let resync_task = {
            let (url, dir, windows, stop) =
                (url.clone(), store.clone(), windows.clone(), stop_rx.clone());
            let published: std::sync::Arc<[crate::config::TableEntry]> =
                config.source.tables.entries().into();
            tokio::spawn(supervise::supervise(
                "resync driver",
                stop_rx.clone(),
                move |status| {
                    crate::ingest::resync::run(
                        url.clone(),
                        published.clone(),
                        dir.clone(),
                        resync_timeout,
                        windows.clone(),
                        stop.clone(),
                        status,
                    )
                },
            ))
        };
        let scheduler_task = {
            let (config, dir, stop) = (config.clone(), store.clone(), stop_rx.clone());
            tokio::spawn(supervise::supervise(
                "scheduler",
                stop_rx.clone(),
                move |status| scheduler::run(config.clone(), dir.clone(), stop.clone(), status),
            ))
        };
        let shapes = crate::ingest::journal_thread::durable_shapes(
            &store,
            prepared.capture.tables.values(),
        )?;
        let reader_cfg = reader::ReaderConfig {
            shapes,
            url,
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
            capture: prepared.capture,
            status_interval: Duration::from_secs(1),
            heartbeat: config.source.heartbeat(),
            windows: windows.clone(),
            fill,
            system_id: prepared.system_id,
            slot_floor: prepared.slot_floor,
            on_slot_lost: config.source.on_slot_lost,
            failover_slot: config.source.failover_slot,
            store: store.clone(),
            recover_at: prepared.recover_at,
            streaming: config.source.streaming,
        };
        let reader = tokio::spawn(reader::run(
            reader_cfg,
            journal_tx,
            head_rx,
            stop_rx.clone(),
        ));
        Ok(Engine {
            stop_tx,
            reader,
            runners,
            audit,
            audit_task,
            resync_task,
            scheduler_task,
            writer_thread,
        })
    }

    /// Runs until `shutdown` or until a task stops, then stops the rest in
    /// order; the first failure (the one that explains the others) is returned.
    async fn until_shutdown(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Engine {
            stop_tx,
            mut reader,
            mut runners,
            audit,
            mut audit_task,
            resync_task,
            scheduler_task,
            writer_thread,
        } = self;
        let mut failure: Option<anyhow::Error> = None;
        let mut runner_ended = false;
        let mut reader_done = false;
        let mut audit_done = false;
        tokio::select! {
            _ = shutdown.changed() => tracing::info!("shutting down: finishing the batch in hand"),
            r = &mut reader => {
                reader_done = true;
                failure = Some(match r {
                    Ok(Ok(())) => anyhow!("the reader stopped unexpectedly"),
                    Ok(Err(e)) => anyhow!(e),
                    Err(e) => anyhow!("reader task failed: {e}"),
                });
            }
            Some(r) = runners.join_next() => {
                failure = match r {
                    // A runner ends by itself when the journal thread is gone, which the
                    // reader's or the writer's own error explains: those are collected
                    // below and win; this is said only when nothing else is.
                    Ok(Ok(())) => {
                        runner_ended = true;
                        None
                    }
                    Ok(Err(e)) => Some(anyhow!(e)),
                    Err(e) => Some(anyhow!("sink task failed: {e}")),
                };
            }
            // It retries passing errors itself; ending while the sinks run would lose
            // their delivery attempts, so it stops pgcdc.
            r = &mut audit_task => {
                audit_done = true;
                failure = Some(match r {
                    Ok(Ok(())) => anyhow!("the audit writer stopped unexpectedly"),
                    Ok(Err(e)) => anyhow!(e),
                    Err(e) => anyhow!("audit task failed: {e}"),
                });
            }
        }
        let _ = stop_tx.send(true);
        // Supervised: they retry their own failures and end only on shutdown.
        let _ = scheduler_task.await;
        let _ = resync_task.await;
        if !reader_done {
            match reader.await {
                Ok(Err(e)) if failure.is_none() => failure = Some(anyhow!(e)),
                Err(e) if failure.is_none() => failure = Some(anyhow!("reader task failed: {e}")),
                _ => {}
            }
        }
        while let Some(r) = runners.join_next().await {
            match r {
                Ok(Err(e)) if failure.is_none() => failure = Some(anyhow!(e)),
                Err(e) if failure.is_none() => failure = Some(anyhow!("sink task failed: {e}")),
                _ => {}
            }
        }
        // Sinks are gone with their audit handles; the audit writer drains and ends.
        drop(audit);
        if !audit_done {
            match audit_task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(anyhow!(e))),
                Err(e) => failure = failure.or(Some(anyhow!("audit task failed: {e}"))),
            }
        }
        // The reader's sender is gone, so the journal thread drains and ends.
        match tokio::task::spawn_blocking(move || writer_thread.join()).await {
            Ok(Ok(Ok(()))) => {}
            // The writer's own error says why; the reader only saw it go away.
            Ok(Ok(Err(e))) => failure = Some(anyhow!(e)),
            _ => failure = failure.or(Some(anyhow!("the journal thread panicked"))),
        }
        if runner_ended && failure.is_none() {
            failure = Some(anyhow!("a sink runner stopped unexpectedly"));
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Stops a background task when the engine returns, whatever the way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Warns about each cursor of a sink that is no longer configured: it pins the
/// journal (pruning keeps everything after the lowest cursor) until it is dropped.
fn warn_orphaned_cursors(config: &Config, store: &Store) -> anyhow::Result<()> {
    let journal = store.open(Access::Existing)?;
    for o in journal.orphaned_cursors(&crate::status::sink_names(config))? {
        tracing::warn!(
            sink = %o.sink,
            cursor = o.cursor,
            held_events = o.held_events,
            "the journal keeps a cursor of a sink that is no longer configured, so it cannot \
             prune past it; drop it with `pgcdc checkpoint drop --sink {}` (or DELETE \
             /api/sinks/{}/checkpoint) if the sink is gone for good",
            o.sink,
            o.sink
        );
    }
    Ok(())
}
