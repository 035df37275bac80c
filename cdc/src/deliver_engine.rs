//! Wires `pgcdc deliver`: the state store (DLQ, audit), the audit writer, the
//! admin API, the sinks with their plans, the group's consumer and the worker.
//!
//! ```text
//!  Kafka (group) ─▶ deliver::group::worker ─▶ sinks ─▶ HTTP / stdout
//!                        │ DLQ + audit                  
//!                        ▼                              
//!                   state store ([state] url: shared by the workers)
//! ```
//!
//! Shutdown (SIGINT/SIGTERM): the worker finishes the batch in hand, commits
//! its offsets and leaves the group, so the others take its partitions at once.

use std::sync::Arc;

use anyhow::{anyhow, bail};
use pgcdc_sinks::stdout::StdoutSink;
use pgcdc_sinks::AuditLog;
use tokio::sync::watch;

use crate::config::{Config, SinkKind};
use crate::deliver::group::worker::{DeliverSink, SinkSlot, Worker};
use crate::deliver::group::{self, consumer, GroupState};
use crate::deliver::{audit_writer, plan};
use crate::journal::{Access, Store};
use crate::supervise;

/// Runs one worker of the group until `shutdown`.
pub(crate) async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let Some(deliver) = config.deliver.clone() else {
        bail!("the config has no [deliver] section (brokers, topics, group): `pgcdc deliver` reads Kafka topics a `pgcdc run` Kafka sink writes; for the journal use `pgcdc run`");
    };
    if config.state.url.is_none() {
        tracing::warn!("[state] has no url: the DLQ and parked rows stay in this machine's state dir, so a worker that takes over a partition elsewhere does not see them; give every worker the same [state] url (Postgres)");
    }
    plan::sandbox::install(&config.jq)?;
    let config = Arc::new(config);
    crate::metrics::metrics().leader.set(1);
    crate::health::health().set_deliver_mode();
    let store = Store::from_config(&config.state);
    let triggers = plan::triggers(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (audit, audit_rx) = AuditLog::split(
        audit_writer::QUEUE_CAPACITY,
        audit_writer::BATCH_QUEUE_CAPACITY,
    );
    let mut sinks = Vec::new();
    for sink in &config.sink {
        let plan = plan::SinkPlan::new(sink, &triggers);
        let sink_impl = match &sink.kind {
            SinkKind::Stdout => DeliverSink::Stdout(
                StdoutSink::new(&sink.name).with_native_body_from_event(sink.transform.is_none()),
            ),
            SinkKind::Http(http) => DeliverSink::Http(Box::new(
                crate::sink_build::build_http_sink(&sink.name, http, audit.clone())?
                    .with_native_body_from_event(sink.transform.is_none()),
            )),
            SinkKind::Kafka(_) => bail!(
                "sink {}: `pgcdc deliver` runs http and stdout sinks",
                sink.name
            ),
        };
        let s = store.clone();
        let session = tokio::task::spawn_blocking(move || s.open(Access::Create))
            .await
            .map_err(|e| anyhow!("state store task failed: {e}"))??;
        sinks.push(SinkSlot::new(sink_impl, plan, session));
    }
    let audit_task = tokio::spawn(audit_writer::run(
        store.clone(),
        audit_rx,
        config.audit.retention(),
        stop_rx.clone(),
        supervise::TaskHealth::new("audit writer"),
    ));
    let _admin = crate::admin::start(Arc::clone(&config)).await?;
    let state = Arc::new(GroupState::default());
    group::set_group_state(Arc::clone(&state));
    let consumer = consumer::connect(&deliver, Arc::clone(&state)).await?;
    let worker = Worker {
        consumer: Arc::clone(&consumer),
        state,
        sinks,
        audit: audit.clone(),
        max_batch: deliver.max_batch,
        replay_partition: (deliver.topics[0].clone(), 0),
        shutdown: shutdown.clone(),
    };
    let result = worker.run().await;
    // Leave the group now, so the others take the partitions without waiting
    // for the session to time out.
    rdkafka::consumer::Consumer::unsubscribe(&*consumer);
    let _ = stop_tx.send(true);
    drop(audit);
    match audit_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the audit writer stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "audit task failed"),
    }
    result.map_err(|e| anyhow!(e))
}
