//! Routes and handlers of the admin API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use pgcdc_sinks::AttemptTime;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{health, AdminState, ApiError};
use crate::journal::{DlqError, DlqSelector};
use crate::{metrics, status};

use super::page;

type Shared = Arc<AdminState>;

/// Most audit records one request returns.
const AUDIT_LIMIT_MAX: usize = 10_000;

/// The API's routes.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page::status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .route("/api/status", get(api_status))
        .route("/api/sinks/{sink}/dlq", get(dlq_list))
        .route("/api/sinks/{sink}/dlq/replay", post(dlq_replay))
        .route("/api/sinks/{sink}/dlq/drop", post(dlq_drop))
        .route("/api/audit", get(audit))
        .route(
            "/api/sinks/{sink}/checkpoint",
            post(checkpoint).delete(checkpoint_drop),
        )
        .route("/api/resync", post(resync_request))
        .route("/api/resync/{table}", delete(resync_cancel))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::guard::guard,
        ))
        .layer(axum::middleware::from_fn(super::serve::bounded))
        .layer(axum::extract::DefaultBodyLimit::max(
            super::serve::MAX_BODY_BYTES,
        ))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz() -> Response {
    // A standby streams nothing: it is ready while it can take over.
    let reasons = crate::ha::role::standby_not_ready_reasons()
        .unwrap_or_else(|| health().not_ready_reasons());
    if reasons.is_empty() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": reasons })),
        )
            .into_response()
    }
}

/// Reads the journal-backed gauges, then encodes every metric.
async fn scrape(State(state): State<Shared>) -> Result<Response, ApiError> {
    let names = state.sink_names.clone();
    let js = state
        .with_journal(move |j| Ok(status::read_journal(j, &names)?))
        .await?;
    let m = metrics::metrics();
    m.journal_bytes
        .set(i64::try_from(js.bytes).unwrap_or(i64::MAX));
    m.journal_head_lsn
        .set(i64::try_from(js.head.confirmed_lsn.0).unwrap_or(i64::MAX));
    m.journal_head_position.set(js.head.pos);
    for s in &js.sinks {
        m.set_sink(&m.sink_lag_events, &s.name, s.lag_events);
        m.set_sink(&m.dlq_events, &s.name, s.dlq_events);
        m.set_sink_lag_seconds(&s.name, s.lag_seconds);
    }
    if let Some(group) = crate::deliver::group::group_state() {
        let lags: Vec<_> = group
            .lags()
            .into_iter()
            .map(|l| (l.topic, l.partition, l.lag_records, l.lag_seconds))
            .collect();
        m.set_partition_lags(&lags);
    }
    let h = health();
    m.replication_connected
        .set(i64::from(h.is_replication_connected()));
    for (sink, running) in h.sink_states() {
        m.set_sink(&m.sink_running, &sink, i64::from(running));
    }
    let text = m
        .encode()
        .map_err(|e| ApiError::Internal(format!("cannot encode metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn api_status(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let _permit = state
        .status_permits
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("status permits: {e}")))?;
    let names = state.sink_names.clone();
    let js = state
        .with_journal(move |j| Ok(status::read_journal(j, &names)?))
        .await?;
    let mut doc = status::status_json(&state.config, js).await;
    if let Some(ha) = crate::ha::role::status_json() {
        doc["ha"] = ha;
    }
    Ok(Json(doc))
}

async fn dlq_list(
    State(state): State<Shared>,
    Path(sink): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.known_sink(&sink)?;
    let entries = state.with_journal(move |j| Ok(j.dlq_list(&sink)?)).await?;
    Ok(Json(Value::Array(
        entries.iter().map(status::dlq_entry_json).collect(),
    )))
}

/// Body of the DLQ replay/drop requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqRequest {
    id: Option<String>,
    #[serde(default)]
    all: bool,
}

fn dlq_selector(body: &Bytes) -> Result<DlqSelector, ApiError> {
    const EXPECTED: &str = r#"send {"id": "<event id from the DLQ list>"} or {"all": true}"#;
    let req: DlqRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid body ({e}); {EXPECTED}")))?;
    match (req.id, req.all) {
        (Some(id), false) => Ok(DlqSelector::One(id)),
        (None, true) => Ok(DlqSelector::All),
        (Some(_), true) => Err(ApiError::BadRequest(format!(
            "give either an id or all, not both; {EXPECTED}"
        ))),
        (None, false) => Err(ApiError::BadRequest(format!(
            "say which events; {EXPECTED}"
        ))),
    }
}

fn dlq_error(e: DlqError) -> ApiError {
    match e {
        DlqError::Journal(e) => e.into(),
        e @ DlqError::NotFound { .. } => ApiError::NotFound(e.to_string()),
        e @ DlqError::ParkedBehind { .. } => ApiError::Conflict(e.to_string()),
    }
}

/// Checks the sink and the body of a DLQ mutation (the guard has checked the token).
fn dlq_mutation(state: &AdminState, sink: &str, body: &Bytes) -> Result<DlqSelector, ApiError> {
    state.known_sink(sink)?;
    dlq_selector(body)
}

async fn dlq_replay(
    State(state): State<Shared>,
    Path(sink): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let sel = dlq_mutation(&state, &sink, &body)?;
    let s = sink.clone();
    let n = state
        .with_journal(move |j| j.dlq_request_replay(&s, &sel).map_err(dlq_error))
        .await?;
    tracing::info!(sink = %sink, events = n, "DLQ replay requested through the admin API");
    Ok(Json(json!({
        "sink": sink,
        "marked_for_replay": n,
        "message": format!("{n} event(s) marked for replay; they are delivered next, in row order"),
    })))
}

async fn dlq_drop(
    State(state): State<Shared>,
    Path(sink): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let sel = dlq_mutation(&state, &sink, &body)?;
    let s = sink.clone();
    let n = state
        .with_journal(move |j| j.dlq_drop(&s, &sel).map_err(dlq_error))
        .await?;
    tracing::warn!(sink = %sink, events = n, "DLQ events dropped through the admin API");
    Ok(Json(json!({ "sink": sink, "dropped": n })))
}

/// Body of `POST /api/sinks/{sink}/checkpoint`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRequest {
    lsn: Option<String>,
    time: Option<String>,
    #[serde(default)]
    latest: bool,
}

async fn checkpoint(
    State(state): State<Shared>,
    Path(sink): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    const EXPECTED: &str =
        r#"send {"lsn": "0/16B3748"}, {"time": "2026-11-26T10:00:00Z"} or {"latest": true}"#;
    state.known_sink(&sink)?;
    let req: CheckpointRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid body ({e}); {EXPECTED}")))?;
    let target = crate::ops::reset_target(req.lsn.as_deref(), req.time.as_deref(), req.latest)
        .map_err(|e| ApiError::BadRequest(format!("{e}; {EXPECTED}")))?;
    let s = sink.clone();
    let cursor = state
        .with_journal(move |j| {
            j.reset_cursor(&s, target).map_err(|e| match e {
                crate::journal::ResetError::Journal(e) => e.into(),
                e @ crate::journal::ResetError::BeyondRetention { .. } => {
                    ApiError::Conflict(e.to_string())
                }
            })
        })
        .await?;
    tracing::warn!(sink = %sink, cursor = cursor.pos, "checkpoint reset through the admin API");
    Ok(Json(json!({ "sink": sink, "cursor": cursor.pos })))
}

/// `DELETE /api/sinks/{sink}/checkpoint`: drops the cursor of a sink that is no longer
/// configured (409 while it is).
async fn checkpoint_drop(
    State(state): State<Shared>,
    Path(sink): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(why) = crate::ops::drop_refusal(&state.config, &sink) {
        return Err(ApiError::Conflict(why));
    }
    let s = sink.clone();
    let dropped = state
        .with_journal(move |j| Ok::<_, ApiError>(j.drop_cursor(&s)?))
        .await?;
    let Some(d) = dropped else {
        return Err(ApiError::NotFound(format!(
            "no cursor named {sink:?} in the journal"
        )));
    };
    tracing::warn!(sink = %sink, cursor = d.cursor, dlq_items = d.dlq_items, "orphaned cursor dropped through the admin API");
    Ok(Json(
        json!({ "sink": sink, "dropped_cursor": d.cursor, "dropped_dlq_items": d.dlq_items }),
    ))
}

/// Query of `GET /api/audit`.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    event: Option<String>,
    sink: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<Shared>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    const EXPECTED: &str = "use ?event=EVENT_ID or ?sink=NAME[&since=RFC3339][&limit=N]";
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("{e}; {EXPECTED}")))?;
    let limit = q.limit.unwrap_or(1_000).min(AUDIT_LIMIT_MAX);
    let attempts = match (q.event, q.sink) {
        (Some(event), None) => {
            if q.since.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "since goes with sink, not event; {EXPECTED}"
                )));
            }
            state
                .with_journal(move |j| Ok(j.audit_by_event(&event)?))
                .await?
        }
        (None, Some(sink)) => {
            state.known_sink(&sink)?;
            let since = match q.since {
                Some(s) => s
                    .parse::<AttemptTime>()
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "since={s:?} is not an RFC 3339 time, e.g. 2026-11-26T10:00:00Z"
                        ))
                    })?
                    .to_string(),
                None => "0000".to_string(),
            };
            state
                .with_journal(move |j| Ok(j.audit_by_sink(&sink, &since, limit)?))
                .await?
        }
        _ => return Err(ApiError::BadRequest(EXPECTED.to_string())),
    };
    serde_json::to_value(attempts)
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("cannot encode audit records: {e}")))
}

/// Body of `POST /api/resync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResyncRequest {
    table: String,
    sink: Option<String>,
    #[serde(rename = "where")]
    where_sql: Option<String>,
}

async fn resync_request(State(state): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    const EXPECTED: &str = r#"send {"table": "public.permits", "sink": "registry", "where": "..."} (sink and where optional)"#;
    let req: ResyncRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid body ({e}); {EXPECTED}")))?;
    let table = crate::ops::validate_resync(&state.config, &req.table, req.sink.as_deref())
        .map_err(ApiError::BadRequest)?;
    let info = state
        .with_journal(move |j| {
            j.request_resync(
                crate::journal::ResyncKind::Resync,
                &table,
                req.sink.as_deref(),
                req.where_sql.as_deref(),
            )
            .map_err(|e| match e {
                crate::journal::ResyncRequestError::Journal(e) => e.into(),
                e => ApiError::Conflict(e.to_string()),
            })
        })
        .await?;
    tracing::warn!(resync = info.id, table = %info.table, sink = ?info.sink, "resync requested through the admin API");
    serde_json::to_value(info)
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("cannot encode the resync: {e}")))
}

/// Query of `DELETE /api/resync/{table}`.
#[derive(Debug, Deserialize)]
struct ResyncCancelQuery {
    sink: Option<String>,
}

async fn resync_cancel(
    State(state): State<Shared>,
    Path(table): Path<String>,
    Query(q): Query<ResyncCancelQuery>,
) -> Result<Json<Value>, ApiError> {
    let table = crate::ops::validate_resync(&state.config, &table, q.sink.as_deref())
        .map_err(ApiError::BadRequest)?;
    let t = table.clone();
    let ids = state
        .with_journal(move |j| Ok(j.cancel_resync(&t, q.sink.as_deref())?))
        .await?;
    if ids.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no queued or running resync of {table}"
        )));
    }
    tracing::warn!(table = %table, ids = ?ids, "resync cancelled through the admin API");
    Ok(Json(json!({ "table": table, "cancelled": ids })))
}

async fn not_found() -> ApiError {
    ApiError::NotFound(
        "no such endpoint; see GET /healthz, /readyz, /metrics, /api/status, \
         /api/sinks/{sink}/dlq, /api/audit?event=ID, POST /api/sinks/{sink}/dlq/replay|drop"
            .to_string(),
    )
}
