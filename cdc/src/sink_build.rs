//! Building the configured sinks (shared by `run`, `deliver` and the CLI's checks)
//! and, for `run`, one journal-fed runner per sink.

use pgcdc_schema::mapping::Template;
use pgcdc_sinks::http::{HttpSink, Renderer};
use pgcdc_sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkContext};
use pgcdc_sinks::stdout::StdoutSink;
use pgcdc_sinks::{AuditLog, Outgoing};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, HttpSinkSpec, SinkKind};
use crate::deliver::{plan, runner};
use crate::journal::{JournalHead, Store};

/// What every sink runner shares.
pub(crate) struct Spawner<'a> {
    pub(crate) audit: &'a AuditLog,
    pub(crate) store: &'a Store,
    pub(crate) head: &'a watch::Receiver<JournalHead>,
    pub(crate) stop: &'a watch::Receiver<bool>,
    /// The HA epoch (None without HA), carried by Kafka progress records.
    pub(crate) fence: Option<i64>,
}

impl Spawner<'_> {
    /// One runner per configured sink, each with its compiled plan.
    pub(crate) fn runners(
        &self,
        config: &Config,
        triggers: &[plan::Trigger],
        db: &str,
    ) -> anyhow::Result<JoinSet<Result<(), runner::RunnerError>>> {
        let mut runners = JoinSet::new();
        for (i, sink) in config.sink.iter().enumerate() {
            let plan = plan::SinkPlan::new(sink, triggers);
            match &sink.kind {
                SinkKind::Stdout => {
                    let sink_impl = StdoutSink::new(&sink.name)
                        .with_native_body_from_event(sink.transform.is_none());
                    self.runner(&mut runners, sink_impl, plan)
                }
                SinkKind::Http(http) => {
                    let sink_impl = build_http_sink(&sink.name, http, self.audit.clone())?
                        .with_native_body_from_event(sink.transform.is_none());
                    self.runner(&mut runners, sink_impl, plan)
                }
                SinkKind::Kafka(kafka) => {
                    let sink_impl = build_kafka_sink(i, sink, kafka, db, self.audit.clone())?
                        .with_epoch(self.fence)
                        .with_leadership(self.fence.map(|_| self.leadership()));
                    self.runner(&mut runners, sink_impl, plan)
                }
            }
        }
        Ok(runners)
    }

    /// Under HA: whether the state store's lease is still this process's.
    fn leadership(&self) -> pgcdc_sinks::kafka::LeadershipCheck {
        let store = self.store.clone();
        std::sync::Arc::new(move || {
            store
                .open(crate::journal::Access::Existing)
                .and_then(|session| session.check_fence())
                .map_err(|e| e.to_string())
        })
    }

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
pub(crate) fn build_kafka_sink(
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
/// `{...}` placeholders (rendered against the native event; compiled at config load).
pub(crate) fn build_http_sink(
    name: &str,
    spec: &HttpSinkSpec,
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
    // Static values are in `spec.config` already (unescaped); the others render per event.
    let mut sink = HttpSink::new(name, spec.config.clone(), audit)?;
    if let Some(url) = &spec.url {
        sink = sink.with_url_renderer(renderer(url.clone(), true));
    }
    for (header, template) in &spec.headers {
        sink = sink.with_header_renderer(header, renderer(template.clone(), false))?;
    }
    Ok(sink)
}
