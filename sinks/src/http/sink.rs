//! Turning a batch of items into jobs, scheduling them (per-row order, bounded
//! concurrency, parking behind dead letters) and driving each job's attempts.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::header::{HeaderName, HeaderValue};

use super::config::{BatchConfig, ValidHttpSinkConfig};
use super::retry::{jitter_random, AttemptError, Disposition, RetryPolicy};
use super::service::{base_headers, redact_url, stamp, HttpService, PreparedRequest};
use super::signing::{batch_key, SigningKey};
use super::HttpSinkError;
use crate::{
    Attempt, AttemptOutcome, AttemptTime, AuditLog, ItemResult, Outgoing, Sink, SinkError,
};

/// Renders a per-event value (URL or header) from an item; `Err` dead-letters the item.
pub type Renderer = Box<dyn Fn(&Outgoing) -> Result<String, String> + Send + Sync>;

/// Delivers items to an HTTP API (see the module docs for headers and retries).
pub struct HttpSink {
    name: String,
    service: HttpService,
    url: String,
    url_renderer: Option<Renderer>,
    static_headers: Vec<(HeaderName, HeaderValue)>,
    header_renderers: Vec<(HeaderName, Renderer)>,
    signing: Option<SigningKey>,
    batch: Option<BatchConfig>,
    concurrency: usize,
    policy: RetryPolicy,
    audit: AuditLog,
    /// No transform: the body is the native event, encoded from `Outgoing::event`
    /// (the runner then builds no second copy of the event as `body`).
    native_from_event: bool,
}

/// One request's worth of items, in input order.
struct Job {
    items: Vec<usize>,
}

impl HttpSink {
    /// Builds the client from a validated config (reads TLS files). No network yet.
    pub fn new(
        name: impl Into<String>,
        config: ValidHttpSinkConfig,
        audit: AuditLog,
    ) -> Result<HttpSink, HttpSinkError> {
        let name = name.into();
        let signing = config.signing.clone();
        let config = config.config();
        let mut static_headers = Vec::with_capacity(config.headers.len());
        for (key, value) in &config.headers {
            static_headers.push(parse_header(key, value)?);
        }
        Ok(HttpSink {
            service: HttpService::new(config)?,
            url: config.url.clone(),
            url_renderer: None,
            static_headers,
            header_renderers: Vec::new(),
            signing,
            batch: config.batch.clone(),
            concurrency: config.concurrency.max(1),
            policy: RetryPolicy::new(&config.retry),
            audit,
            name,
            native_from_event: false,
        })
    }

    /// For a sink without a transform: each body is the native event, encoded
    /// straight from `Outgoing::event`, so items need no `body` (a large row is
    /// then held once, not twice). With a transform, `body` is what is sent.
    pub fn with_native_body_from_event(mut self, untransformed: bool) -> Self {
        self.native_from_event = untransformed;
        self
    }

    /// Renders the URL per item (for a batch: from its first item) instead of `url`.
    pub fn with_url_renderer(mut self, renderer: Renderer) -> Self {
        self.url_renderer = Some(renderer);
        self
    }

    /// Renders header `name` per item, replacing a static value of the same name.
    pub fn with_header_renderer(
        mut self,
        name: &str,
        renderer: Renderer,
    ) -> Result<Self, HttpSinkError> {
        let (header, _) = parse_header(name, "")?;
        self.static_headers.retain(|(n, _)| *n != header);
        self.header_renderers.push((header, renderer));
        Ok(self)
    }

    /// Checks reachability and TLS with an `OPTIONS` to the URL's origin.
    pub async fn healthcheck(&self) -> Result<(), HttpSinkError> {
        self.service.healthcheck(&self.url).await
    }

    /// Groups items into jobs: one per item, or greedy batches in input order.
    fn plan(&self, bodies: &[Bytes]) -> Vec<Job> {
        let Some(batch) = &self.batch else {
            return (0..bodies.len()).map(|i| Job { items: vec![i] }).collect();
        };
        let mut jobs = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut bytes = 2usize;
        for (i, body) in bodies.iter().enumerate() {
            let added = body.len() + usize::from(!current.is_empty());
            if !current.is_empty()
                && (current.len() >= batch.max_events || bytes + added > batch.max_bytes)
            {
                jobs.push(Job {
                    items: std::mem::take(&mut current),
                });
                bytes = 2;
            }
            bytes += body.len() + usize::from(!current.is_empty());
            current.push(i);
        }
        if !current.is_empty() {
            jobs.push(Job { items: current });
        }
        jobs
    }

    /// Sends one job until it is delivered or dead-lettered.
    async fn run_job(&self, items: &[&Outgoing], bodies: &[&Bytes]) -> ItemResult {
        let first = items[0];
        let body = match (&self.batch, bodies) {
            (None, [single]) => (*single).clone(),
            _ => {
                let mut buf =
                    Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
                buf.push(b'[');
                for (i, b) in bodies.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(b);
                }
                buf.push(b']');
                Bytes::from(buf)
            }
        };
        let id = if items.len() == 1 {
            first.delivery_id()
        } else {
            batch_key(
                items
                    .iter()
                    .map(|o| o.delivery_id())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            )
        };
        let mut prepared = match self.prepare(first, &id, body) {
            Ok(p) => p,
            Err(e) => {
                self.record(
                    items,
                    1,
                    chrono::Utc::now(),
                    None,
                    Some(e.to_string()),
                    Duration::ZERO,
                    AttemptOutcome::Failed,
                )
                .await;
                tracing::error!(sink = %self.name, id = %id, error = %e, "dead-lettered: request cannot be built");
                return ItemResult::DeadLettered {
                    error: e.to_string(),
                };
            }
        };
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refreshed_auth = false;
        loop {
            attempt += 1;
            let at = chrono::Utc::now();
            // Each attempt is signed at its own time (see `signing`).
            stamp(&mut prepared, self.signing.as_ref(), &id, at.timestamp());
            let sent = Instant::now();
            let (result, auth_used) = self.service.send(&prepared).await;
            let latency = sent.elapsed();
            let error = match result {
                Ok(status) => {
                    self.record(
                        items,
                        attempt,
                        at,
                        Some(status),
                        None,
                        latency,
                        AttemptOutcome::Delivered,
                    )
                    .await;
                    return ItemResult::Delivered;
                }
                Err(e) => e,
            };
            let status = error.http_status();
            if status == Some(401) && self.service.auth.refreshes_on_401() && !refreshed_auth {
                // The token may have expired early or been revoked: fetch a new one, retry now.
                refreshed_auth = true;
                if let Some(rejected) = &auth_used {
                    self.service.auth.invalidate(rejected).await;
                }
                self.record(
                    items,
                    attempt,
                    at,
                    status,
                    Some(error.to_string()),
                    latency,
                    AttemptOutcome::Retrying,
                )
                .await;
                continue;
            }
            let delay = match error.disposition() {
                Disposition::Definite => None,
                Disposition::Retry { after } => {
                    self.policy
                        .next_delay(attempt, started.elapsed(), after, jitter_random())
                }
            };
            let Some(delay) = delay else {
                return self
                    .dead_letter(items, &id, attempt, at, &error, latency)
                    .await;
            };
            self.record(
                items,
                attempt,
                at,
                status,
                Some(error.to_string()),
                latency,
                AttemptOutcome::Retrying,
            )
            .await;
            tracing::warn!(sink = %self.name, id = %id, attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn dead_letter(
        &self,
        items: &[&Outgoing],
        id: &str,
        attempt: u32,
        at: chrono::DateTime<chrono::Utc>,
        error: &AttemptError,
        latency: Duration,
    ) -> ItemResult {
        let text = match error.disposition() {
            Disposition::Definite => error.to_string(),
            Disposition::Retry { .. } => format!("{error} (gave up after {attempt} attempts)"),
        };
        self.record(
            items,
            attempt,
            at,
            error.http_status(),
            Some(text.clone()),
            latency,
            AttemptOutcome::Failed,
        )
        .await;
        tracing::error!(sink = %self.name, id = %id, attempt, error = %text, "dead-lettered");
        ItemResult::DeadLettered { error: text }
    }

    fn prepare(
        &self,
        first: &Outgoing,
        id: &str,
        body: Bytes,
    ) -> Result<PreparedRequest, AttemptError> {
        let url = match &self.url_renderer {
            Some(render) => {
                render(first).map_err(|e| AttemptError::Request(format!("url: {e}")))?
            }
            None => self.url.clone(),
        };
        if reqwest::Url::parse(&url).is_err() {
            return Err(AttemptError::Request(format!(
                "{} is not a valid URL",
                redact_url(&url)
            )));
        }
        let mut headers = base_headers(&self.static_headers, id)?;
        for (name, render) in &self.header_renderers {
            let value =
                render(first).map_err(|e| AttemptError::Request(format!("header {name}: {e}")))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                AttemptError::Request(format!(
                    "header {name}: rendered value is not a valid header value"
                ))
            })?;
            headers.insert(name.clone(), value);
        }
        Ok(PreparedRequest { url, body, headers })
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        items: &[&Outgoing],
        attempt: u32,
        at: chrono::DateTime<chrono::Utc>,
        status: Option<u16>,
        error: Option<String>,
        latency: Duration,
        outcome: AttemptOutcome,
    ) {
        let at = AttemptTime::from(at);
        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        for item in items {
            self.audit
                .record(Attempt {
                    event_id: item.delivery_id(),
                    sink: self.name.clone(),
                    attempt,
                    at,
                    status,
                    error: error.clone(),
                    latency_ms,
                    outcome,
                })
                .await;
        }
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants_native_body(&self) -> bool {
        !self.native_from_event
    }

    async fn deliver(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        let this = &*self;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut bodies = Vec::with_capacity(items.len());
        for item in items {
            let encoded = if this.native_from_event {
                pgcdc_schema::json_write::to_vec(&item.event)
            } else {
                serde_json::to_vec(&item.body).map_err(|e| e.to_string())
            };
            let bytes = encoded.map_err(|e| SinkError::Definite {
                sink: this.name.clone(),
                message: format!("cannot encode the body of {}: {e}", item.delivery_id()),
            })?;
            bodies.push(Bytes::from(bytes));
        }
        let mut row_ids: HashMap<&str, usize> = HashMap::new();
        let row_of: Vec<usize> = items
            .iter()
            .map(|o| {
                let next = row_ids.len();
                *row_ids.entry(o.row.as_str()).or_insert(next)
            })
            .collect();
        let jobs = this.plan(&bodies);

        // A job waits for the previous job of each of its rows.
        let mut last_job_of_row: Vec<Option<usize>> = vec![None; row_ids.len()];
        let mut pending = vec![0usize; jobs.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
        let mut ready = BTreeSet::new();
        for (j, job) in jobs.iter().enumerate() {
            let mut deps = BTreeSet::new();
            for &i in &job.items {
                if let Some(prev) = last_job_of_row[row_of[i]].replace(j) {
                    if prev != j {
                        deps.insert(prev);
                    }
                }
            }
            pending[j] = deps.len();
            for d in deps {
                dependents[d].push(j);
            }
            if pending[j] == 0 {
                ready.insert(j);
            }
        }

        let mut failed_rows = vec![false; row_ids.len()];
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < this.concurrency {
                let Some(j) = ready.pop_first() else { break };
                let (send, parked): (Vec<usize>, Vec<usize>) = jobs[j]
                    .items
                    .iter()
                    .partition(|&&i| !failed_rows[row_of[i]]);
                for i in parked {
                    results[i] = Some(ItemResult::Parked);
                }
                if send.is_empty() {
                    for &d in &dependents[j] {
                        pending[d] -= 1;
                        if pending[d] == 0 {
                            ready.insert(d);
                        }
                    }
                    continue;
                }
                let job_items: Vec<&Outgoing> = send.iter().map(|&i| &items[i]).collect();
                let job_bodies: Vec<&Bytes> = send.iter().map(|&i| &bodies[i]).collect();
                running.push(async move {
                    let result = this.run_job(&job_items, &job_bodies).await;
                    (j, send, result)
                });
            }
            let Some((j, sent, result)) = running.next().await else {
                break;
            };
            let failed = matches!(result, ItemResult::DeadLettered { .. });
            for i in sent {
                if failed {
                    failed_rows[row_of[i]] = true;
                }
                results[i] = Some(result.clone());
            }
            for &d in &dependents[j] {
                pending[d] -= 1;
                if pending[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        // Every job ran or was parked; an item without a result would be a scheduling bug.
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(ItemResult::Parked))
            .collect())
    }
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), HttpSinkError> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HttpSinkError::Header {
        name: name.to_owned(),
        message: "not a valid header name".into(),
    })?;
    let value = HeaderValue::from_str(value).map_err(|_| HttpSinkError::Header {
        name: name.to_owned(),
        message: "value contains characters not allowed in a header".into(),
    })?;
    Ok((header, value))
}
