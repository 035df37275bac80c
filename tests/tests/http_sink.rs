//! The HTTP sink against a real HTTP server with fault modes (no Postgres needed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};
use pgcdc_sinks::http::{
    AuthConfig, BatchConfig, HttpSink, HttpSinkConfig, HttpSinkError, Secret, ValidHttpSinkConfig,
};
use pgcdc_sinks::{Attempt, AttemptOutcome, AuditLog, ItemResult, Outgoing, Sink};
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::wait_until;

const COMMIT_TIME: &str = "2026-11-26T10:00:00.123456Z";
const COMMIT_UNIX: i64 = 1_795_687_200;

/// Item `seq` of row `row`; every item gets its own event id.
fn item(row: &str, seq: u32) -> Outgoing {
    let lsn = Lsn(0x1000 + u64::from(seq));
    let event = ChangeEvent {
        id: EventId::from_position(lsn, row.bytes().map(u32::from).sum::<u32>()),
        op: Op::Update,
        schema: "public".into(),
        table: "permits".into(),
        key: None,
        old: None,
        new: None,
        trigger: Some("permitApproved".into()),
        lsn,
        xid: Some(7),
        commit_time: Some(COMMIT_TIME.into()),
        unchanged_toast: vec![],
        columns: None,
        previous: None,
        origin: Default::default(),
    };
    Outgoing {
        event: Arc::new(event),
        body: serde_json::json!({"row": row, "seq": seq}),
        part: 0,
        row: format!("public.permits{{\"id\":\"{row}\"}}"),
    }
}

/// A config with fast retries, so fault tests do not wait on real backoff.
fn config(url: &str) -> HttpSinkConfig {
    let mut cfg = HttpSinkConfig::new(url);
    cfg.retry.initial_backoff_ms = 1;
    cfg.retry.max_backoff_ms = 5;
    cfg.timeout_ms = 5_000;
    cfg
}

async fn start() -> Receiver {
    match Receiver::start().await {
        Ok(r) => r,
        Err(e) => panic!("receiver: {e}"),
    }
}

fn valid(cfg: HttpSinkConfig) -> Result<ValidHttpSinkConfig, HttpSinkError> {
    Ok(cfg.validated("sink[0]")?)
}

fn sink(cfg: HttpSinkConfig) -> HttpSink {
    match valid(cfg).and_then(|cfg| HttpSink::new("api", cfg, AuditLog::disabled())) {
        Ok(s) => s,
        Err(e) => panic!("sink: {e}"),
    }
}

fn audited_sink(cfg: HttpSinkConfig) -> (HttpSink, tokio::sync::mpsc::Receiver<Attempt>) {
    let (audit, rx) = AuditLog::channel(10_000);
    match valid(cfg).and_then(|cfg| HttpSink::new("api", cfg, audit)) {
        Ok(s) => (s, rx),
        Err(e) => panic!("sink: {e}"),
    }
}

async fn deliver(sink: &mut HttpSink, items: &[Outgoing]) -> Vec<ItemResult> {
    match sink.deliver(items).await {
        Ok(r) => r,
        Err(e) => panic!("deliver: {e}"),
    }
}

fn drain(rx: &mut tokio::sync::mpsc::Receiver<Attempt>) -> Vec<Attempt> {
    let mut out = Vec::new();
    while let Ok(a) = rx.try_recv() {
        out.push(a);
    }
    out
}

fn header(r: &pgcdc_tests::http_receiver::Recorded, name: &str) -> String {
    r.header(name).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn headers_and_signature_verified_independently() {
    let rx = start().await;
    let secret_bytes = b"a signing key of some length";
    let mut cfg = config(&rx.url());
    cfg.signing_secret = Some(Secret::new(format!(
        "whsec_{}",
        BASE64.encode(secret_bytes)
    )));
    cfg.headers.insert("X-Tenant".into(), "portal".into());
    let mut sink = sink(cfg);
    let it = item("A", 0);
    assert_eq!(
        deliver(&mut sink, std::slice::from_ref(&it)).await,
        vec![ItemResult::Delivered]
    );

    let reqs = rx.api_requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "x-tenant"), "portal");
    assert_eq!(header(r, "idempotency-key"), it.delivery_id());
    assert_eq!(header(r, "webhook-id"), it.delivery_id());
    // The attempt's own time (Standard Webhooks receivers allow 5 min of skew), not
    // the commit time.
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap_or_default();
    assert!(
        (ts - chrono::Utc::now().timestamp()).abs() <= 5 && ts != COMMIT_UNIX,
        "webhook-timestamp {ts} is not the attempt's time"
    );
    assert_eq!(r.json(), it.body);
    assert_eq!(
        header(r, "webhook-signature"),
        expected_signature(secret_bytes, r)
    );
}

/// Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the decoded key.
fn expected_signature(key: &[u8], r: &pgcdc_tests::http_receiver::Recorded) -> String {
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(e) => panic!("hmac: {e}"),
    };
    mac.update(
        format!(
            "{}.{}.",
            header(r, "webhook-id"),
            header(r, "webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&r.body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn status_burst_retries_with_stable_ids_and_body_and_audits_each_attempt() {
    let rx = start().await;
    rx.push_script([Mode::Status(503), Mode::Status(502), Mode::Status(429)]);
    let mut cfg = config(&rx.url());
    cfg.signing_secret = Some(Secret::new("whsec_c2VjcmV0"));
    let (mut sink, mut audit) = audited_sink(cfg);
    let it = item("A", 0);
    assert_eq!(
        deliver(&mut sink, std::slice::from_ref(&it)).await,
        vec![ItemResult::Delivered]
    );

    let reqs = rx.api_requests();
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        for h in ["idempotency-key", "webhook-id"] {
            assert_eq!(
                header(r, h),
                header(&reqs[0], h),
                "{h} changed between retries"
            );
        }
        assert_eq!(r.body, reqs[0].body);
        // Each attempt is signed at its own time (e2e_webhooks shows they differ).
        assert_eq!(
            header(r, "webhook-signature"),
            expected_signature(b"secret", r)
        );
    }
    let attempts = drain(&mut audit);
    let summary: Vec<(u32, Option<u16>, AttemptOutcome)> = attempts
        .iter()
        .map(|a| (a.attempt, a.status, a.outcome))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Some(503), AttemptOutcome::Retrying),
            (2, Some(502), AttemptOutcome::Retrying),
            (3, Some(429), AttemptOutcome::Retrying),
            (4, Some(200), AttemptOutcome::Delivered),
        ]
    );
    assert!(attempts
        .iter()
        .all(|a| a.event_id == it.delivery_id() && a.sink == "api"));
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("HTTP 503: scripted failure")
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = start().await;
    rx.push_script([Mode::RetryAfter(1)]);
    let mut sink = sink(config(&rx.url()));
    assert_eq!(
        deliver(&mut sink, &[item("A", 0)]).await,
        vec![ItemResult::Delivered]
    );
    let reqs = rx.api_requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, Retry-After was 1s"
    );
}

#[tokio::test]
async fn slow_response_times_out_and_is_retried() {
    let rx = start().await;
    rx.push_script([Mode::Delay(Duration::from_secs(3))]);
    let mut cfg = config(&rx.url());
    cfg.timeout_ms = 200;
    let (mut sink, mut audit) = audited_sink(cfg);
    assert_eq!(
        deliver(&mut sink, &[item("A", 0)]).await,
        vec![ItemResult::Delivered]
    );
    assert_eq!(rx.api_requests().len(), 2);
    let attempts = drain(&mut audit);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Retrying);
    let err = attempts[0].error.clone().unwrap_or_default();
    assert!(err.contains("timed out"), "{err}");
    assert!(attempts[0].latency_ms >= 200);
}

#[tokio::test]
async fn connection_reset_is_retried() {
    let rx = start().await;
    rx.push_script([Mode::Reset, Mode::Reset]);
    let (mut sink, mut audit) = audited_sink(config(&rx.url()));
    assert_eq!(
        deliver(&mut sink, &[item("A", 0)]).await,
        vec![ItemResult::Delivered]
    );
    assert_eq!(rx.api_requests().len(), 3);
    let attempts = drain(&mut audit);
    assert_eq!(attempts.len(), 3);
    assert!(attempts[0].status.is_none() && attempts[0].error.is_some());
}

#[tokio::test]
async fn definite_400_dead_letters_and_parks_the_rest_of_that_row_only() {
    let rx = start().await;
    rx.set_mode(Mode::FailFor {
        status: 400,
        when: Arc::new(|b| b["row"] == "A" && b["seq"] == 1),
    });
    let mut sink = sink(config(&rx.url()));
    let items: Vec<Outgoing> = (0..3).flat_map(|s| [item("A", s), item("B", s)]).collect();
    let results = deliver(&mut sink, &items).await;
    let dead = ItemResult::DeadLettered {
        error: "HTTP 400: rejected by FailFor".into(),
    };
    assert_eq!(
        results,
        vec![
            ItemResult::Delivered, // A0
            ItemResult::Delivered, // B0
            dead,                  // A1
            ItemResult::Delivered, // B1
            ItemResult::Parked,    // A2
            ItemResult::Delivered, // B2
        ]
    );
    let sent: Vec<serde_json::Value> = rx.api_requests().iter().map(|r| r.json()).collect();
    assert_eq!(sent.len(), 5, "A2 must not be sent: {sent:?}");
    assert!(!sent.contains(&serde_json::json!({"row": "A", "seq": 2})));
}

#[tokio::test]
async fn max_attempts_ends_retrying_with_the_last_error() {
    let rx = start().await;
    rx.set_mode(Mode::Status(500));
    let mut cfg = config(&rx.url());
    cfg.retry.max_attempts = Some(3);
    let (mut sink, mut audit) = audited_sink(cfg);
    let results = deliver(&mut sink, &[item("A", 0), item("A", 1)]).await;
    match &results[0] {
        ItemResult::DeadLettered { error } => assert!(error.starts_with("HTTP 500"), "{error}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(results[1], ItemResult::Parked);
    assert_eq!(rx.api_requests().len(), 3);
    let outcomes: Vec<AttemptOutcome> = drain(&mut audit).iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            AttemptOutcome::Retrying,
            AttemptOutcome::Retrying,
            AttemptOutcome::Failed
        ]
    );
}

#[tokio::test]
async fn status_501_is_definite() {
    let rx = start().await;
    rx.set_mode(Mode::Status(501));
    let mut sink = sink(config(&rx.url()));
    let results = deliver(&mut sink, &[item("A", 0)]).await;
    assert!(matches!(results[0], ItemResult::DeadLettered { .. }));
    assert_eq!(rx.api_requests().len(), 1);
}

#[tokio::test]
async fn per_row_order_holds_under_concurrency() {
    let rx = start().await;
    rx.set_mode(Mode::Delay(Duration::from_millis(5)));
    // Some transient failures shuffle timing; order must hold anyway.
    rx.push_script((0..10).map(|_| Mode::Status(503)));
    let mut cfg = config(&rx.url());
    cfg.concurrency = 8;
    let mut sink = sink(cfg);
    let rows: Vec<String> = (0..20).map(|r| format!("r{r}")).collect();
    let items: Vec<Outgoing> = (0..10)
        .flat_map(|s| rows.iter().map(move |r| item(r, s)))
        .collect();
    let results = deliver(&mut sink, &items).await;
    assert!(results.iter().all(|r| *r == ItemResult::Delivered));
    assert!(rx.max_in_flight() > 1, "requests never overlapped");
    assert!(rx.max_in_flight() <= 8, "more than `concurrency` in flight");
    let delivered: Vec<serde_json::Value> = rx
        .api_requests()
        .iter()
        .filter(|r| !r.body.is_empty())
        .map(|r| r.json())
        .collect();
    for row in &rows {
        // Each row's requests arrive in order; a retried copy repeats, never goes back.
        let seqs: Vec<u64> = delivered
            .iter()
            .filter(|b| b["row"] == row.as_str())
            .filter_map(|b| b["seq"].as_u64())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "row {row}: {seqs:?}");
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(unique, (0..10).collect::<Vec<u64>>(), "row {row}");
    }
}

#[tokio::test]
async fn oauth2_token_is_cached_and_refreshed_once_after_401() {
    let rx = start().await;
    rx.require_oauth(3600);
    let mut cfg = config(&rx.url());
    cfg.concurrency = 4;
    cfg.auth = Some(AuthConfig::Oauth2 {
        token_url: rx.token_url(),
        client_id: "pgcdc".into(),
        client_secret: Secret::new("s3cret"),
        scope: Some("permits:write".into()),
        audience: None,
    });
    let mut sink = sink(cfg);
    let items: Vec<Outgoing> = (0..10).map(|s| item(&format!("r{s}"), s)).collect();
    assert!(deliver(&mut sink, &items)
        .await
        .iter()
        .all(|r| *r == ItemResult::Delivered));
    assert_eq!(
        rx.token_issuances(),
        1,
        "the token must be cached across requests"
    );
    let token_req = rx.requests().into_iter().find(|r| r.path == "/oauth/token");
    let form = token_req
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(
        form.contains("client_id=pgcdc") && form.contains("scope=permits%3Awrite"),
        "{form}"
    );

    rx.revoke_tokens();
    let before = rx.api_requests().len();
    assert_eq!(
        deliver(&mut sink, &[item("z", 0)]).await,
        vec![ItemResult::Delivered]
    );
    assert_eq!(rx.token_issuances(), 2);
    let after = rx.api_requests();
    assert_eq!(
        after.len() - before,
        2,
        "one 401, then one retry with the new token"
    );
    assert_eq!(header(&after[before + 1], "authorization"), "Bearer tok-2");
}

#[tokio::test]
async fn bearer_token_file_is_reread_when_it_changes() {
    let rx = start().await;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join("token");
    let write = |text: &str, age_secs: u64| {
        let ok = std::fs::write(&path, text).is_ok()
            && std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(age_secs))
                })
                .is_ok();
        assert!(ok, "cannot write {path:?}");
    };
    write("first\n", 100);
    let mut cfg = config(&rx.url());
    cfg.auth = Some(AuthConfig::Bearer {
        token: None,
        token_file: Some(path.to_string_lossy().into_owned()),
    });
    let mut sink = sink(cfg);
    assert_eq!(
        deliver(&mut sink, &[item("A", 0)]).await,
        vec![ItemResult::Delivered]
    );
    write("second", 50);
    assert_eq!(
        deliver(&mut sink, &[item("A", 1)]).await,
        vec![ItemResult::Delivered]
    );
    let auth: Vec<String> = rx
        .api_requests()
        .iter()
        .map(|r| header(r, "authorization"))
        .collect();
    assert_eq!(auth, vec!["Bearer first", "Bearer second"]);
}

#[tokio::test]
async fn basic_auth_header() {
    let rx = start().await;
    let mut cfg = config(&rx.url());
    cfg.auth = Some(AuthConfig::Basic {
        username: "u".into(),
        password: Secret::new("p"),
    });
    let mut sink = sink(cfg);
    assert_eq!(
        deliver(&mut sink, &[item("A", 0)]).await,
        vec![ItemResult::Delivered]
    );
    assert_eq!(header(&rx.api_requests()[0], "authorization"), "Basic dTpw");
}

#[tokio::test]
async fn batching_sends_arrays_keeping_row_order() {
    let rx = start().await;
    let mut cfg = config(&rx.url());
    cfg.batch = Some(BatchConfig {
        max_events: 3,
        max_bytes: 1 << 20,
        max_wait_ms: None,
    });
    let mut sink = sink(cfg);
    let items: Vec<Outgoing> = (0..4).flat_map(|s| [item("A", s), item("B", s)]).collect();
    let results = deliver(&mut sink, &items).await;
    assert!(results.iter().all(|r| *r == ItemResult::Delivered));
    let reqs = rx.api_requests();
    assert_eq!(reqs.len(), 3, "8 items in batches of at most 3");
    let mut per_row: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for r in &reqs {
        let body = r.json();
        let arr = body.as_array().cloned().unwrap_or_default();
        assert!(!arr.is_empty() && arr.len() <= 3, "{body}");
        if arr.len() > 1 {
            assert!(header(r, "idempotency-key").starts_with("batch-"));
        }
        for b in arr {
            let row = b["row"].as_str().unwrap_or_default().to_owned();
            per_row
                .entry(row)
                .or_default()
                .push(b["seq"].as_u64().unwrap_or(99));
        }
    }
    assert_eq!(per_row.get("A"), Some(&vec![0, 1, 2, 3]));
    assert_eq!(per_row.get("B"), Some(&vec![0, 1, 2, 3]));
}

#[tokio::test]
async fn rate_limit_spaces_requests() {
    let rx = start().await;
    let mut cfg = config(&rx.url());
    cfg.rate_limit = Some(20.0);
    let mut sink = sink(cfg);
    let items: Vec<Outgoing> = (0..6).map(|s| item(&format!("r{s}"), s)).collect();
    let started = Instant::now();
    assert!(deliver(&mut sink, &items)
        .await
        .iter()
        .all(|r| *r == ItemResult::Delivered));
    // 6 requests at 20/s: 5 gaps of 50 ms at least.
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn healthcheck_reaches_the_origin_or_explains() {
    let rx = start().await;
    let sink = sink(config(&format!("{}/permits/{{id}}", rx.url())));
    assert!(sink.healthcheck().await.is_ok());
    wait_until(Duration::from_secs(5), || {
        let n = rx
            .requests()
            .iter()
            .filter(|r| r.method == "OPTIONS" && r.path == "/")
            .count();
        async move { n == 1 }
    })
    .await;
    let port = match pgcdc_tests::free_port() {
        Ok(p) => p,
        Err(e) => panic!("free port: {e}"),
    };
    let dead = self::sink(config(&format!("http://127.0.0.1:{port}/x")));
    let err = dead
        .healthcheck()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("healthcheck of http://127.0.0.1"), "{err}");
}

#[tokio::test]
async fn url_renderer_and_render_failure_dead_letters() {
    let rx = start().await;
    let base = rx.url();
    let mut sink = sink(config(&rx.url())).with_url_renderer(Box::new(move |o: &Outgoing| match o
        .body["seq"]
        .as_u64()
    {
        Some(0) => Err("no id".into()),
        Some(s) => Ok(format!("{base}/permits/{s}")),
        None => Err("no seq".into()),
    }));
    let results = deliver(&mut sink, &[item("A", 0), item("B", 5)]).await;
    assert!(matches!(&results[0], ItemResult::DeadLettered { error } if error.contains("no id")));
    assert_eq!(results[1], ItemResult::Delivered);
    assert_eq!(rx.api_requests()[0].path, "/hook/permits/5");
}

/// Events/s to a local receiver answering at once, at concurrency 1, 8, 32.
/// `cargo test -p pgcdc-tests --release --test http_sink -- --ignored --nocapture bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_throughput() {
    let rx = start().await;
    for concurrency in [1usize, 8, 32] {
        let mut cfg = config(&rx.url());
        cfg.concurrency = concurrency;
        let mut sink = sink(cfg);
        let n = 20_000u32;
        let items: Vec<Outgoing> = (0..n).map(|s| item(&format!("r{}", s % 1000), s)).collect();
        let started = Instant::now();
        for chunk in items.chunks(1000) {
            let r = deliver(&mut sink, chunk).await;
            assert!(r.iter().all(|r| *r == ItemResult::Delivered));
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "concurrency {concurrency:>2}: {n} events in {secs:.2}s = {:.0} events/s",
            f64::from(n) / secs
        );
    }
}
