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
use pgcdc_schema::mapping::Template;
use pgcdc_sinks::http::{HttpSink, HttpSinkConfig, Renderer};
use pgcdc_sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkContext};
use pgcdc_sinks::stdout::StdoutSink;
use pgcdc_sinks::{AuditLog, Outgoing};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, SinkKind, SnapshotMode};
use crate::deliver::{audit_writer, plan, runner};
use crate::ingest::{journal_guard, journal_thread, reader, scheduler, watermark};
use crate::journal::{Access, JournalHead, MetaKey, Store};
use crate::replication::{connect_sql, ReplicationConnection};
use crate::source;
use crate::supervise;

/// How long a slot held by a previous (crashed) pgcdc may take to be released.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(20);

/// Preflight, set up the publication and slot, then stream and deliver until
/// `shutdown` becomes true. With `[ha] enabled`, only while this process leads
/// (see `crate::ha`).
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if config.ha.enabled {
        // Created (migrated) before anyone stands by: the lease is one of its tables.
        let store = Store::from_config(&config.state);
        tokio::task::spawn_blocking(move || store.open(Access::Create).map(drop))
            .await
            .map_err(|e| anyhow!("state store task failed: {e}"))??;
        return crate::ha::run(config, shutdown, |config, epoch, stop| {
            lead(config, Some(epoch), stop)
        })
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
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    plan::sandbox::install(&config.jq)?;
    let url = config.source_url()?;
    let triggers = plan::compile_triggers(&config)?;
    let store = Store::from_config(&config.state);
    if fence.is_some() {
        store.set_fence(fence)?;
    }
    // Where the state is, for the messages below (no password).
    let state_dir = match config.state.url {
        Some(_) => std::path::PathBuf::from(store.describe()),
        None => config.state.dir.clone(),
    };
    let mut writer = store.writer()?;
    let prior = journal_guard::Prior::read(&*writer)?;
    writer.set_old_tracking(plan::old_tracking(&triggers));
    warn_orphaned_cursors(&config, &store)?;
    // Up before preflight, so /healthz answers while pgcdc waits on the source.
    let _admin = match fence {
        None => Some(crate::admin::start(config.clone()).await?),
        Some(_) => None,
    };

    let client = connect_sql(&url)
        .await
        .with_context(|| format!("cannot connect to the source database at {url}"))?;
    let checks = source::preflight(&config, &client).await;
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
        source::wait_slot_released(&client, &config.source.slot, SLOT_RELEASE_WAIT)
            .await
            .map_err(|p| anyhow!("preflight failed:\n  slot {}: {p}", config.source.slot))?;
    } else if !failed.is_empty() {
        bail!("preflight failed:\n{}", failed.join("\n"));
    }

    let mut conn = ReplicationConnection::connect(&url).await?;
    let ident = conn.identify_system().await?;
    match writer.meta(&MetaKey::SystemId)? {
        Some(id) if id != ident.systemid => bail!(
            "the journal in {} was written for database system {id}, but the source is system {}; \
             point [state] dir at a new directory for this source",
            state_dir.display(),
            ident.systemid
        ),
        Some(_) => {}
        None => writer.set_meta(&MetaKey::SystemId, &ident.systemid)?,
    }
    if source::ensure_publication(&config, &client)
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
    let capture = source::identity::capture(&config, &client, &mut *writer).await?;
    let slot_confirmed = source::slot_info(&client, &config.source.slot)
        .await?
        .map(|s| {
            s.confirmed_flush_lsn
                .and_then(|l| l.parse::<pgcdc_schema::Lsn>().ok())
                .unwrap_or_default()
        });
    let slot_plan = journal_guard::check(
        &mut *writer,
        prior,
        &state_dir,
        &config.source.slot,
        slot_confirmed,
    )?;
    // Queued before the slot exists: a crash after its creation leaves the snapshot
    // queued, and the resync driver finishes it with watermarks.
    let initial = config.source.snapshot == SnapshotMode::Initial;
    if slot_plan == journal_guard::SlotPlan::Create {
        if initial {
            crate::ingest::snapshot::queue(&config, &store)?;
        }
        journal_guard::creating(&mut *writer, &config.source.slot)?;
    }
    if let Some(created) = source::ensure_slot(&config, &client, &mut conn, initial).await? {
        writer.set_meta(&MetaKey::CreatedSlot, &config.source.slot)?;
        journal_guard::created(
            &mut *writer,
            &config.source.slot,
            pgcdc_schema::Lsn(created.consistent_point),
        )?;
        if let (true, Some(name)) = (initial, created.snapshot_name.as_deref()) {
            // The exported snapshot lives as long as `conn` stays open and idle.
            let rows = crate::ingest::snapshot::copy(
                &url,
                name,
                pgcdc_schema::Lsn(created.consistent_point),
                &mut *writer,
                &store,
            )
            .await?;
            tracing::info!(rows, "initial snapshot journaled");
        }
    }
    conn.close().await;
    drop(client);

    let (head_tx, head_rx) = watch::channel::<JournalHead>(writer.head());
    let retention = config.journal.retention();
    let (journal_tx, journal_rx) = journal_thread::queue();
    let fill = std::sync::Arc::new(journal_thread::JournalFill::new(config.journal.max_bytes));
    let writer_fill = fill.clone();
    let writer_thread = std::thread::Builder::new()
        .name("pgcdc-journal".into())
        .spawn(move || journal_thread::run(writer, journal_rx, head_tx, retention, writer_fill))
        .context("cannot start the journal thread")?;

    // Background tasks and what their failures do: see `supervise`.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (audit, audit_rx) = AuditLog::channel(audit_writer::QUEUE_CAPACITY);
    let mut audit_task = tokio::spawn(audit_writer::run(
        store.clone(),
        audit_rx,
        config.audit.retention(),
        stop_rx.clone(),
        supervise::TaskHealth::new("audit writer"),
    ));

    let mut runners = JoinSet::new();
    for (i, sink) in config.sink.iter().enumerate() {
        let plan = plan::SinkPlan::compile(i, sink, &triggers)?;
        let spawn = Spawner {
            audit: &audit,
            store: &store,
            head: &head_rx,
            stop: &stop_rx,
        };
        match &sink.kind {
            SinkKind::Stdout => {
                let sink_impl = StdoutSink::new(&sink.name)
                    .with_native_body_from_event(sink.transform.is_none());
                spawn.runner(&mut runners, sink_impl, plan)
            }
            SinkKind::Http(http) => {
                let sink_impl = build_http_sink(i, &sink.name, http, audit.clone())?
                    .with_native_body_from_event(sink.transform.is_none());
                spawn.runner(&mut runners, sink_impl, plan)
            }
            SinkKind::Kafka(kafka) => {
                let sink_impl =
                    build_kafka_sink(i, sink, kafka, &url.dbname, audit.clone())?.with_epoch(fence);
                spawn.runner(&mut runners, sink_impl, plan)
            }
        }
    }

    // Resyncs (and a snapshot continued after a restart) run beside the reader.
    let windows = watermark::Windows::default();
    let resync_task = {
        let (url, dir, windows, stop) =
            (url.clone(), store.clone(), windows.clone(), stop_rx.clone());
        tokio::spawn(supervise::supervise(
            "resync driver",
            stop_rx.clone(),
            move |status| {
                crate::ingest::resync::run(
                    url.clone(),
                    dir.clone(),
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
    let reader_cfg = reader::ReaderConfig {
        url,
        slot: config.source.slot.clone(),
        publication: config.source.publication.clone(),
        capture,
        status_interval: Duration::from_secs(1),
        heartbeat: config.source.heartbeat(),
        windows: windows.clone(),
        fill,
    };
    let mut reader = tokio::spawn(reader::run(
        reader_cfg,
        journal_tx,
        head_rx,
        stop_rx.clone(),
    ));

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

/// What every sink runner shares.
struct Spawner<'a> {
    audit: &'a AuditLog,
    store: &'a Store,
    head: &'a watch::Receiver<JournalHead>,
    stop: &'a watch::Receiver<bool>,
}

impl Spawner<'_> {
    fn runner<S: pgcdc_sinks::Sink>(
        &self,
        runners: &mut JoinSet<Result<(), runner::RunnerError>>,
        sink: S,
        plan: plan::SinkPlan,
    ) {
        runners.spawn(runner::run(
            sink,
            plan,
            self.audit.clone(),
            self.store.clone(),
            self.head.clone(),
            self.stop.clone(),
        ));
    }
}

/// Builds a Kafka sink; `db` is the source database (Debezium `source.db`).
pub fn build_kafka_sink(
    index: usize,
    sink: &crate::config::SinkConfig,
    config: &KafkaSinkConfig,
    db: &str,
    audit: AuditLog,
) -> anyhow::Result<KafkaSink> {
    let ctx = KafkaSinkContext {
        db: db.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        transformed: sink.transform.is_some(),
        audit,
    };
    Ok(KafkaSink::new(
        &sink.name,
        config,
        &format!("sink[{index}]"),
        ctx,
    )?)
}

/// Builds an HTTP sink, with per-event renderers for a URL or header values holding
/// `{...}` placeholders (rendered against the native event).
pub fn build_http_sink(
    index: usize,
    name: &str,
    config: &HttpSinkConfig,
    audit: AuditLog,
) -> anyhow::Result<HttpSink> {
    let renderer = |template: Template, url: bool| -> Renderer {
        Box::new(move |item: &Outgoing| {
            let input = serde_json::to_value(&*item.event).map_err(|e| e.to_string())?;
            let rendered = plan::sandbox::off_executor(|| {
                if url {
                    template.render_url(&input)
                } else {
                    template.render(&input)
                }
            });
            rendered.map_err(|e| e.to_string())
        })
    };
    // Static values go to the sink unescaped (`{{` is a literal `{`); the others render per event.
    let mut config = config.clone();
    let url = Template::parse(&format!("sink[{index}].url"), &config.url)?;
    if let Some(literal) = url.literal() {
        config.url = literal.to_string();
    }
    let mut dynamic_headers = Vec::new();
    for (header, value) in config.headers.iter_mut() {
        let template = Template::parse(&format!("sink[{index}].headers.{header}"), value)?;
        match template.literal() {
            Some(literal) => *value = literal.to_string(),
            None => dynamic_headers.push((header.clone(), template)),
        }
    }
    let mut sink = HttpSink::new(name, config, audit)?;
    if !url.is_static() {
        sink = sink.with_url_renderer(renderer(url, true));
    }
    for (header, template) in dynamic_headers {
        sink = sink.with_header_renderer(&header, renderer(template, false))?;
    }
    Ok(sink)
}
