//! End to end: the admin HTTP API of a running pgcdc — `/metrics` values that
//! move under load, `/readyz` following the database, bearer auth on the
//! mutating endpoints, and the DLQ listed, replayed and dropped over HTTP.

mod e2e_fixture;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{pgcdc_output, start_streaming, status_json};
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{free_port, state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::{json, Value};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

/// One http sink `hook` on `public.items`, and `[admin]` with `admin` verbatim.
fn config(url: &str, state: &Path, receiver: &str, admin: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]

[state]
dir = "{state}"

[admin]
{admin}

[[sink]]
name = "hook"
type = "http"
tables = ["public.items"]
url = "{receiver}"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
        state = state.display()
    )
}

/// The admin API's base URL and the `[admin]` lines for a free loopback port.
fn admin_addr() -> anyhow::Result<(String, String)> {
    let port = free_port()?;
    Ok((
        format!("http://127.0.0.1:{port}"),
        format!("listen = \"127.0.0.1:{port}\""),
    ))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}

/// GET: (status, body text); status 0 when the request itself failed.
async fn get(url: &str) -> (u16, String) {
    match client().get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// POST a JSON body with an optional `Authorization` value: (status, JSON body).
async fn post(url: &str, auth: Option<&str>, body: &str) -> anyhow::Result<(u16, Value)> {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let body = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, body))
}

async fn get_json(url: &str) -> anyhow::Result<(u16, Value)> {
    get_json_auth(url, None).await
}

/// GET with an optional bearer token: (status, JSON body).
async fn get_json_auth(url: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (status, text) = match req.send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    };
    ensure!(status != 0, "GET {url} failed");
    let body = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, body))
}

/// Parses the Prometheus/OpenMetrics text: `name{labels}` → value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(base: &str) -> HashMap<String, f64> {
    let (status, text) = get(&format!("{base}/metrics")).await;
    if status != 200 {
        return HashMap::new();
    }
    parse_metrics(&text)
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(f64::NAN)
}

const DELIVERED: &str = r#"pgcdc_deliveries_total{sink="hook",outcome="delivered"}"#;
const DEAD: &str = r#"pgcdc_deliveries_total{sink="hook",outcome="dead_lettered"}"#;
const HEAD_LSN: &str = "pgcdc_journal_head_lsn";
const HEAD_POS: &str = "pgcdc_journal_head_position";
const LAG_EVENTS: &str = r#"pgcdc_sink_lag_events{sink="hook"}"#;
const LATENCY_COUNT: &str = r#"pgcdc_delivery_latency_seconds_count{sink="hook"}"#;
const DLQ: &str = r#"pgcdc_dlq_events{sink="hook"}"#;

async fn wait_ready(base: &str, p: &mut pgcdc_tests::Pgcdc) {
    let url = format!("{base}/readyz");
    wait_until_msg(Duration::from_secs(60), "readyz answers 200", || {
        let url = url.clone();
        async move { get(&url).await.0 == 200 }
    })
    .await;
    ensure_running(p);
}

fn ensure_running(p: &mut pgcdc_tests::Pgcdc) {
    assert!(
        !p.has_exited(),
        "pgcdc exited; stderr:\n{}",
        p.stderr_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_under_load_and_api_status_matches_the_cli() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let (base, admin) = admin_addr()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), &admin))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    wait_ready(&base, &mut p).await;

    let before = scrape(&base).await;
    for name in [
        "pgcdc_source_lag_bytes",
        "pgcdc_slot_retained_wal_bytes",
        "pgcdc_journal_bytes",
        HEAD_LSN,
        LAG_EVENTS,
        r#"pgcdc_sink_lag_seconds{sink="hook"}"#,
        DELIVERED,
        r#"pgcdc_delivery_retries_total{sink="hook"}"#,
        DLQ,
        LATENCY_COUNT,
        "pgcdc_resync_rows_total",
        r#"pgcdc_slot_wal_status{status="lost"}"#,
    ] {
        ensure!(
            before.contains_key(name),
            "{name} missing from /metrics: {before:#?}"
        );
    }
    ensure!(value(&before, DELIVERED) == 0.0 && value(&before, HEAD_POS) == 0.0);
    ensure!(value(&before, "pgcdc_replication_connected") == 1.0);

    const ROWS: usize = 300;
    for chunk in 0..3 {
        let from = chunk * ROWS / 3 + 1;
        pg.batch(&format!(
            "INSERT INTO items SELECT g, 'v' || g FROM generate_series({from}, {}) g",
            from + ROWS / 3 - 1
        ))
        .await?;
    }
    wait_until_msg(
        Duration::from_secs(60),
        "deliveries_total reaches the row count",
        || {
            let base = base.clone();
            async move { value(&scrape(&base).await, DELIVERED) >= ROWS as f64 }
        },
    )
    .await;
    wait_until_msg(Duration::from_secs(30), "the sink lag drops to 0", || {
        let base = base.clone();
        async move { value(&scrape(&base).await, LAG_EVENTS) == 0.0 }
    })
    .await;
    let after = scrape(&base).await;
    ensure!(
        value(&after, DELIVERED) == ROWS as f64,
        "each row delivered once: {}",
        value(&after, DELIVERED)
    );
    ensure!(value(&after, HEAD_POS) == ROWS as f64);
    ensure!(
        value(&after, HEAD_LSN) > value(&before, HEAD_LSN),
        "journal head LSN did not move: {} -> {}",
        value(&before, HEAD_LSN),
        value(&after, HEAD_LSN)
    );
    ensure!(value(&after, LATENCY_COUNT) == ROWS as f64);
    ensure!(value(&after, "pgcdc_journal_bytes") > 0.0);
    ensure!(rx.requests().len() == ROWS);

    // The slot poller reports the slot (it polls every 10 s).
    wait_until_msg(Duration::from_secs(30), "the slot's wal_status", || {
        let base = base.clone();
        async move {
            let m = scrape(&base).await;
            value(&m, r#"pgcdc_slot_wal_status{status="reserved"}"#) == 1.0
                && value(&m, "pgcdc_slot_retained_wal_bytes") > 0.0
        }
    })
    .await;

    // /api/status is the document `pgcdc status --json` prints.
    let (code, api) = get_json(&format!("{base}/api/status")).await?;
    ensure!(code == 200, "api/status: {code} {api}");
    let cli = status_json(&cfg).await?;
    ensure!(api["sinks"] == cli["sinks"], "sinks differ: {api} vs {cli}");
    ensure!(api["journal"]["head"] == cli["journal"]["head"]);
    ensure!(api["source"]["slot"]["name"] == json!("pgcdc"));
    ensure!(api["source"]["reachable"] == json!(true));
    let keys = |v: &Value| {
        let mut k: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        k.sort();
        k
    };
    ensure!(keys(&api) == keys(&cli) && keys(&api["source"]) == keys(&cli["source"]));
    ensure!(get(&format!("{base}/healthz")).await.0 == 200);
    ensure_running(&mut p);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_database_down_and_back() -> anyhow::Result<()> {
    let mut pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let (base, admin) = admin_addr()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), &admin))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    wait_ready(&base, &mut p).await;
    pg.batch("INSERT INTO items VALUES (1, 'before')").await?;
    wait_until_msg(
        Duration::from_secs(30),
        "delivery before the stop",
        || async { rx.requests().len() == 1 },
    )
    .await;

    // A clean (fast) shutdown: the walsender ends the stream with
    // CommandComplete; pgcdc must take that as a lost connection and reconnect.
    pg.stop().await?;
    let ready = format!("{base}/readyz");
    wait_until_msg(Duration::from_secs(30), "readyz answers 503", || {
        let ready = ready.clone();
        async move { get(&ready).await.0 == 503 }
    })
    .await;
    let (code, body) = get_json(&ready).await?;
    ensure!(
        code == 503 && body["ready"] == json!(false),
        "{code} {body}"
    );
    ensure!(
        body["reasons"].to_string().contains("replication"),
        "the reason names the replication stream: {body}"
    );
    ensure!(
        get(&format!("{base}/healthz")).await.0 == 200,
        "healthz stays 200 while the database is down"
    );
    ensure!(value(&scrape(&base).await, "pgcdc_replication_connected") == 0.0);

    pg.start().await?;
    wait_ready(&base, &mut p).await;
    // And it streams again.
    pg.batch("INSERT INTO items VALUES (2, 'after restart')")
        .await?;
    wait_until_msg(
        Duration::from_secs(30),
        "delivery after restart",
        || async { rx.requests().len() == 2 },
    )
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_over_the_api_needs_the_token_and_replays_in_order() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let rx = Receiver::start().await?;
    // 400 is a definite failure: straight to the DLQ.
    rx.set_mode(Mode::Status(400));
    let state = state_dir()?;
    let (base, admin) = admin_addr()?;
    let admin = format!("{admin}\ntoken = \"${{ADMIN_TOKEN}}\"");
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), &admin))?;
    let mut p = pgcdc_tests::Pgcdc::spawn(
        &["run", "--config", &cfg.arg()],
        &[("ADMIN_TOKEN", "t0ken-for-tests")],
    )?;
    e2e_fixture::wait_streaming(&pg, &mut p).await?;
    wait_ready(&base, &mut p).await;

    pg.batch("INSERT INTO items VALUES (1, 'a'); UPDATE items SET v = 'b' WHERE id = 1;")
        .await?;
    let dlq_url = format!("{base}/api/sinks/hook/dlq");
    // admin.token is configured: the DLQ list and the audit need it too.
    let get_json = |url: String| async move { get_json_auth(&url, Some("t0ken-for-tests")).await };
    wait_until_msg(Duration::from_secs(30), "two events in the DLQ", || {
        let dlq_url = dlq_url.clone();
        async move {
            get_json(dlq_url.clone())
                .await
                .is_ok_and(|(_, v)| v.as_array().is_some_and(|a| a.len() == 2))
        }
    })
    .await;
    let (_, list) = get_json(dlq_url.clone()).await?;
    ensure!(
        list[0]["state"] == json!("dead") && list[1]["state"] == json!("parked"),
        "{list:#}"
    );
    ensure!(list[0]["error"].to_string().contains("400"), "{list:#}");
    let first = list[0]["id"].as_str().context("id")?.to_string();
    let second = list[1]["id"].as_str().context("id")?.to_string();
    let m = scrape(&base).await;
    ensure!(value(&m, DLQ) == 2.0 && value(&m, DEAD) == 1.0, "{m:#?}");

    let replay = format!("{dlq_url}/replay");
    let one = json!({ "id": first }).to_string();
    let (code, body) = post(&replay, None, &one).await?;
    ensure!(
        code == 401 && body["error"].as_str().is_some_and(|e| e.contains("Bearer")),
        "{code} {body}"
    );
    let (code, body) = post(&replay, Some("Bearer wrong"), &one).await?;
    ensure!(code == 403, "{code} {body}");
    let auth = Some("Bearer t0ken-for-tests");
    let (code, body) = post(&replay, auth, r#"{"what": 1}"#).await?;
    ensure!(
        code == 400 && body["error"].to_string().contains("\\\"all\\\""),
        "{code} {body}"
    );
    let (code, _) = post(&format!("{base}/api/sinks/nope/dlq/replay"), auth, &one).await?;
    ensure!(code == 404);
    let (code, body) = post(&replay, auth, &json!({ "id": second }).to_string()).await?;
    ensure!(
        code == 409,
        "replaying the parked event alone breaks row order: {code} {body}"
    );
    let (code, body) = post(&format!("{base}/api/sinks/hook/checkpoint"), auth, "{}").await?;
    ensure!(
        code == 400 && body["error"].is_string(),
        "a reset needs a target: {code} {body}"
    );
    let (code, body) = post(&format!("{base}/api/resync"), auth, "{}").await?;
    ensure!(
        code == 400 && body["error"].to_string().contains("table"),
        "a resync needs a table: {code} {body}"
    );
    ensure!(
        rx.requests().len() == 1,
        "nothing replayed before the authorised request"
    );

    rx.set_mode(Mode::Ok);
    let (code, body) = post(&replay, auth, &one).await?;
    ensure!(
        code == 200 && body["marked_for_replay"] == json!(2),
        "{code} {body}"
    );
    wait_until_msg(Duration::from_secs(30), "the DLQ empties", || {
        let dlq_url = dlq_url.clone();
        async move {
            get_json(dlq_url.clone())
                .await
                .is_ok_and(|(_, v)| v.as_array().is_some_and(Vec::is_empty))
        }
    })
    .await;
    let replayed: Vec<String> = rx.requests()[1..]
        .iter()
        .map(|r| r.json()["new"]["v"].as_str().unwrap_or("?").to_string())
        .collect();
    ensure!(
        replayed == ["a", "b"],
        "replayed in row order: {replayed:?}"
    );

    // The audit of the first event: the failed attempt, then the delivered replay.
    let (code, audit) = get_json(format!("{base}/api/audit?event={first}")).await?;
    ensure!(code == 200, "{code} {audit}");
    let outcomes: Vec<&str> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    ensure!(outcomes == ["failed", "delivered"], "{audit:#}");
    let (code, by_sink) = get_json(format!(
        "{base}/api/audit?sink=hook&since=2000-01-01T00:00:00Z"
    ))
    .await?;
    ensure!(
        code == 200 && by_sink.as_array().is_some_and(|a| a.len() >= 3),
        "{by_sink}"
    );
    let (code, _) = get_json(format!("{base}/api/audit?since=yesterday")).await?;
    ensure!(code == 400);

    // Drop: a new dead letter, removed for good with {"all": true}.
    rx.set_mode(Mode::Status(400));
    pg.batch("INSERT INTO items VALUES (2, 'c')").await?;
    wait_until_msg(Duration::from_secs(30), "a new dead letter", || async {
        value(&scrape(&base).await, DLQ) == 1.0
    })
    .await;
    let (code, body) = post(&format!("{dlq_url}/drop"), auth, r#"{"all": true}"#).await?;
    ensure!(code == 200 && body["dropped"] == json!(1), "{code} {body}");
    ensure!(value(&scrape(&base).await, DLQ) == 0.0);
    ensure_running(&mut p);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_config_errors_stop_pgcdc_before_it_connects() -> anyhow::Result<()> {
    let state = state_dir()?;
    // No Postgres at all: the errors come before any connection.
    let url = "postgres://pgcdc@127.0.0.1:1/portal";
    let cfg = ConfigFile::new(&config(
        url,
        state.path(),
        "http://127.0.0.1:1/hook",
        "listen = \"0.0.0.0:9187\"",
    ))?;
    let (code, _, err) = pgcdc_output(&["run", "--config", &cfg.arg()]).await?;
    ensure!(
        code != 0,
        "a non-loopback listen without a token must be refused"
    );
    ensure!(
        err.contains("admin.listen") && err.contains("admin.token"),
        "the error names the keys: {err}"
    );

    // A configured address that is taken is an error that names it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    cfg.rewrite(&config(
        url,
        state.path(),
        "http://127.0.0.1:1/hook",
        &format!("listen = \"127.0.0.1:{port}\""),
    ))?;
    let (code, _, err) = pgcdc_output(&["run", "--config", &cfg.arg()]).await?;
    ensure!(
        code != 0 && err.contains(&format!("127.0.0.1:{port}")) && err.contains("admin.listen"),
        "{err}"
    );
    Ok(())
}

/// `/readyz` fails while a sink is blocked past `admin.ready_max_sink_lag`, and
/// while the slot's `safe_wal_size` is below `admin.min_safe_wal_bytes`; both
/// show in the reasons and recover when the cause goes away.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_reports_blocked_sinks_and_slot_wal_danger() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .setting("max_slot_wal_keep_size", "64MB")
        .start()
        .await?;
    pg.batch(TABLE).await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(503));
    let state = state_dir()?;
    let (base, admin) = admin_addr()?;
    // safe_wal_size is at most 64 MB here, far below the 1 TB asked for.
    let admin = format!("{admin}\nready_max_sink_lag = \"1s\"\nmin_safe_wal_bytes = 1000000000000");
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), &admin))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO items VALUES (1, 'stuck')").await?;
    let ready = format!("{base}/readyz");
    let reasons = || async {
        let (code, body) = get(&ready).await;
        (
            code,
            serde_json::from_str::<Value>(&body).unwrap_or_default()["reasons"].to_string(),
        )
    };
    wait_until_msg(
        Duration::from_secs(40),
        "readyz names the blocked sink and the slot",
        || async {
            let (code, r) = reasons().await;
            code == 503 && r.contains("sink hook is blocked") && r.contains("safe_wal_size")
        },
    )
    .await;
    let metrics = get(&format!("{base}/metrics")).await.1;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgcdc_slot_safe_wal_bytes ") && !l.ends_with(" -1")),
        "safe WAL metric missing: {}",
        metrics
            .lines()
            .filter(|l| l.contains("safe_wal"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The endpoint recovers: the sink drains and stops being reported as blocked.
    rx.set_mode(Mode::Ok);
    wait_until_msg(
        Duration::from_secs(40),
        "the blocked-sink reason goes away",
        || async {
            let (_, r) = reasons().await;
            !r.contains("sink hook is blocked") && r.contains("safe_wal_size")
        },
    )
    .await;
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok(())
}
