//! The running engine: preflight, then reader → journal thread → sink runners.
//!
//! ```text
//!  ReplicationStream ─▶ reader ─(bounded mpsc)─▶ journal thread ─▶ journal.db
//!        ▲ status (durable LSN)        │                  │ watch(head)
//!        └─────────────────────────────┘                  ▼
//!                                       runner(sink 1) … runner(sink N)
//! ```
//!
//! Shutdown (SIGINT/SIGTERM): the reader stops reading, waits until the
//! journal has everything it sent, reports that to the slot and closes;
//! each runner finishes the batch in hand. Exit 0.

pub mod audit_writer;
pub mod changes;
pub mod journal_thread;
pub mod plan;
pub mod reader;
pub mod runner;
pub mod scheduler;
pub mod watermark;

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use pgcdc_schema::mapping::Template;
use pgcdc_sinks::http::{HttpSink, HttpSinkConfig, Renderer};
use pgcdc_sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkContext};
use pgcdc_sinks::stdout::StdoutSink;
use pgcdc_sinks::{AuditLog, Outgoing};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Config, SinkKind, SnapshotMode};
use crate::journal::{JournalHead, JournalWriter};
use crate::replication::{connect_sql, ReplicationConnection};
use crate::source;

/// How long a slot held by a previous (crashed) pgcdc may take to be released.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(20);

/// Preflight, set up the publication and slot, then stream and deliver until
/// `shutdown` becomes true.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let config = std::sync::Arc::new(config);
    plan::sandbox::install(&config.jq)?;
    let url = config.source_url()?;
    let state_dir = config.state.dir.clone();
    let triggers = plan::compile_triggers(&config)?;
    let mut writer = JournalWriter::open(&state_dir)?;
    writer.set_old_tracking(plan::old_tracking(&triggers));
    // Up before preflight, so /healthz answers while pgcdc waits on the source.
    let _admin = crate::admin::start(config.clone()).await?;

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
    match writer.meta("system_id")? {
        Some(id) if id != ident.systemid => bail!(
            "the journal in {} was written for database system {id}, but the source is system {}; \
             point [state] dir at a new directory for this source",
            state_dir.display(),
            ident.systemid
        ),
        Some(_) => {}
        None => writer.set_meta("system_id", &ident.systemid)?,
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
        writer.set_meta("created_publication", &config.source.publication)?;
    }
    // Queued before the slot exists: a crash after its creation leaves the snapshot
    // queued, and the resync driver finishes it with watermarks.
    let initial = config.source.snapshot == SnapshotMode::Initial;
    if initial
        && source::slot_info(&client, &config.source.slot)
            .await?
            .is_none()
    {
        source::snapshot::queue(&config, &state_dir)?;
    }
    if let Some(created) = source::ensure_slot(&config, &client, &mut conn, initial).await? {
        writer.set_meta("created_slot", &config.source.slot)?;
        if let (true, Some(name)) = (initial, created.snapshot_name.as_deref()) {
            // The exported snapshot lives as long as `conn` stays open and idle.
            let rows = source::snapshot::copy(
                &url,
                name,
                pgcdc_schema::Lsn(created.consistent_point),
                &mut writer,
                &state_dir,
            )
            .await?;
            tracing::info!(rows, "initial snapshot journaled");
        }
    }
    conn.close().await;
    drop(client);

    let (head_tx, head_rx) = watch::channel::<JournalHead>(writer.head());
    let retention = config.journal.retention();
    let (journal_tx, journal_rx) = mpsc::channel(journal_thread::QUEUE_CAPACITY);
    let fill = std::sync::Arc::new(journal_thread::JournalFill::new(config.journal.max_bytes));
    let writer_fill = fill.clone();
    let writer_thread = std::thread::Builder::new()
        .name("pgcdc-journal".into())
        .spawn(move || journal_thread::run(writer, journal_rx, head_tx, retention, writer_fill))
        .context("cannot start the journal thread")?;

    let (audit, audit_rx) = AuditLog::channel(audit_writer::QUEUE_CAPACITY);
    let audit_task = tokio::spawn(audit_writer::run(
        state_dir.clone(),
        audit_rx,
        config.audit.retention(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut runners = JoinSet::new();
    for (i, sink) in config.sink.iter().enumerate() {
        let plan = plan::SinkPlan::compile(i, sink, &triggers)?;
        let spawn = Spawner {
            audit: &audit,
            state_dir: &state_dir,
            head: &head_rx,
            stop: &stop_rx,
        };
        match &sink.kind {
            SinkKind::Stdout => spawn.runner(&mut runners, StdoutSink::new(&sink.name), plan),
            SinkKind::Http(http) => {
                let sink_impl = build_http_sink(i, &sink.name, http, audit.clone())?;
                spawn.runner(&mut runners, sink_impl, plan)
            }
            SinkKind::Kafka(kafka) => {
                let sink_impl = build_kafka_sink(i, sink, kafka, &url.dbname, audit.clone())?;
                spawn.runner(&mut runners, sink_impl, plan)
            }
        }
    }

    // Resyncs (and a snapshot continued after a restart) run beside the reader.
    let windows = watermark::Windows::default();
    let resync_task = tokio::spawn(source::resync::run(
        url.clone(),
        state_dir.clone(),
        windows.clone(),
        stop_rx.clone(),
    ));
    let scheduler_task = tokio::spawn(scheduler::run(
        config.clone(),
        state_dir.clone(),
        stop_rx.clone(),
    ));
    let reader_cfg = reader::ReaderConfig {
        url,
        slot: config.source.slot.clone(),
        publication: config.source.publication.clone(),
        tables: config.tables().into_iter().collect(),
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
    let mut reader_done = false;
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
            failure = Some(match r {
                Ok(Ok(())) => anyhow!("a sink runner stopped unexpectedly"),
                Ok(Err(e)) => anyhow!(e),
                Err(e) => anyhow!("sink task failed: {e}"),
            });
        }
    }
    let _ = stop_tx.send(true);
    let _ = scheduler_task.await;
    match resync_task.await {
        Ok(Err(e)) if failure.is_none() => failure = Some(anyhow!(e)),
        Err(e) if failure.is_none() => failure = Some(anyhow!("resync task failed: {e}")),
        _ => {}
    }
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
    match audit_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failure = failure.or(Some(anyhow!(e))),
        Err(e) => failure = failure.or(Some(anyhow!("audit task failed: {e}"))),
    }
    // The reader's sender is gone, so the journal thread drains and ends.
    match tokio::task::spawn_blocking(move || writer_thread.join()).await {
        Ok(Ok(Ok(()))) => {}
        // The writer's own error says why; the reader only saw it go away.
        Ok(Ok(Err(e))) => failure = Some(anyhow!(e)),
        _ => failure = failure.or(Some(anyhow!("the journal thread panicked"))),
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What every sink runner shares.
struct Spawner<'a> {
    audit: &'a AuditLog,
    state_dir: &'a std::path::Path,
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
            self.state_dir.to_path_buf(),
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
