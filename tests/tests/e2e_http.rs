//! End to end through pgcdc: permit state transitions recognised by triggers,
//! reshaped by jq and delivered to a real HTTP receiver, with retries,
//! dead letters, parking, replay, and crash recovery.

mod e2e_fixture;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{pgcdc_output, start_streaming, status_json};
use pgcdc_tests::http_receiver::{Mode, Receiver, Recorded};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::{json, Value};

const PERMITS: &str = "CREATE TABLE permits (
    id int PRIMARY KEY,
    status text NOT NULL,
    note text,
    expiry_date date
)";

fn config(url: &str, state: &Path, receiver: &str, sink_extra: &str) -> String {
    let text = format!(
        r#"
[source]
url = "{url}"
tables = ["public.permits"]

[state]
dir = "{state}"

[[trigger]]
name = "permitApproved"
table = "public.permits"
when = '.old.status != "approved" and .new.status == "approved"'

[[trigger]]
name = "permitRevoked"
table = "public.permits"
when = '.old.status == "approved" and .new.status == "revoked"'

[[sink]]
name = "registry"
type = "http"
events = ["permitApproved", "permitRevoked"]
url = "{receiver}/api/permits/{{.new.id}}"
method = "PUT"
transform = '{{registryId: .new.id, state: .trigger, validUntil: .new.expiry_date, note: .new.note}}'
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
{sink_extra}
"#,
        state = state.display()
    );
    e2e_fixture::test_state(&text, url, state)
}

fn bodies(reqs: &[Recorded]) -> Vec<Value> {
    reqs.iter().map(Recorded::json).collect()
}

/// Transitions with the default replica identity: `.old` comes from pgcdc's row state.
#[tokio::test(flavor = "multi_thread")]
async fn transitions_fire_once_with_default_replica_identity() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    pg.batch(
        "INSERT INTO permits VALUES (1, 'pending', 'a', '2027-01-01'), (2, 'pending', 'b', '2027-02-02');
         UPDATE permits SET status = 'review' WHERE id = 1;
         UPDATE permits SET status = 'approved' WHERE id = 1;
         UPDATE permits SET note = 'touched' WHERE id = 1;
         UPDATE permits SET status = 'approved' WHERE id = 2;
         UPDATE permits SET status = 'revoked' WHERE id = 1;",
    )
    .await?;
    // All 7 changes journaled and the sink's cursor past them: whatever fired was sent.
    wait_until_msg(Duration::from_secs(30), "the sink caught up", || async {
        status_json(&cfg).await.is_ok_and(|s| {
            s["journal"]["head"].as_i64() == Some(7) && s["sinks"][0]["cursor"].as_i64() == Some(7)
        })
    })
    .await;
    let reqs = rx.requests();
    let mut got: Vec<(String, String, Value)> = reqs
        .iter()
        .map(|r| {
            // The receiver serves under a prefix; compare from /api/ on.
            let path = r
                .path
                .rsplit_once("/api/")
                .map(|(_, rest)| format!("/api/{rest}"));
            (r.method.clone(), path.unwrap_or_default(), r.json())
        })
        .collect();
    got.sort_by_key(|(_, path, body)| (path.clone(), body["state"].to_string()));
    ensure!(
        got == vec![
            (
                "PUT".to_string(),
                "/api/permits/1".to_string(),
                json!({"registryId": 1, "state": "permitApproved", "validUntil": "2027-01-01", "note": "a"})
            ),
            (
                "PUT".to_string(),
                "/api/permits/1".to_string(),
                json!({"registryId": 1, "state": "permitRevoked", "validUntil": "2027-01-01", "note": "touched"})
            ),
            (
                "PUT".to_string(),
                "/api/permits/2".to_string(),
                json!({"registryId": 2, "state": "permitApproved", "validUntil": "2027-02-02", "note": "b"})
            ),
        ],
        "requests: {got:#?}\nstderr:\n{}",
        p.stderr_tail(20)
    );
    // Headers: idempotency and Standard Webhooks ids are the event id.
    for r in &reqs {
        let key = r.header("idempotency-key").context("Idempotency-Key")?;
        ensure!(r.header("webhook-id") == Some(key), "webhook-id differs");
        ensure!(r.header("content-type") == Some("application/json"));
        ensure!(r.header("webhook-timestamp").is_some());
    }
    // Audit: every delivered request has an attempt record.
    let id = reqs[0]
        .header("idempotency-key")
        .unwrap_or_default()
        .to_string();
    let (code, audit, err) =
        pgcdc_output(&["audit", "--config", &cfg.arg(), "--event", &id, "--json"]).await?;
    ensure!(code == 0, "audit failed: {err}");
    let attempts: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        attempts
            .iter()
            .any(|a| a["outcome"] == "delivered" && a["status"] == 200),
        "audit for {id}: {audit}"
    );
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    Ok(())
}

/// With REPLICA IDENTITY FULL the old row comes from Postgres, and a 5xx burst
/// and a 429 with Retry-After are ridden out with the same idempotency key.
#[tokio::test(flavor = "multi_thread")]
async fn full_identity_and_transient_faults() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    pg.batch("ALTER TABLE permits REPLICA IDENTITY FULL; INSERT INTO permits VALUES (7, 'review', 'x', NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.push_script([
        Mode::Status(503),
        Mode::Status(500),
        Mode::RetryAfter(1),
        Mode::Reset,
    ]);
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // Row 7 existed before pgcdc: with FULL identity its old status is known anyway.
    pg.batch("UPDATE permits SET status = 'approved' WHERE id = 7")
        .await?;
    wait_until_msg(
        Duration::from_secs(30),
        "a 2xx after the faults",
        || async { rx.requests().len() >= 5 },
    )
    .await;
    let reqs = rx.requests();
    ensure!(
        reqs.len() == 5,
        "expected 4 failures then 1 success, got {}: {:?}",
        reqs.len(),
        bodies(&reqs)
    );
    let keys: Vec<_> = reqs
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_string))
        .collect();
    ensure!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "keys differ across retries: {keys:?}"
    );
    ensure!(
        bodies(&reqs).windows(2).all(|w| w[0] == w[1]),
        "bodies differ across retries"
    );
    // The 429 asked for 1 s: the next attempt waited at least that.
    let gap = reqs[3].at.duration_since(reqs[2].at);
    ensure!(
        gap >= Duration::from_millis(950),
        "Retry-After not honoured: {gap:?}"
    );
    ensure!(reqs[4].json()["state"] == "permitApproved");
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok(())
}

/// A definite 400 for one row: it is dead-lettered, that row's later events
/// park behind it, other rows go on; replay delivers them in order.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_park_their_row_and_replay_in_order() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::FailFor {
        status: 400,
        when: Arc::new(|body: &Value| body["registryId"] == 3),
    });
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits VALUES (3, 'pending', 'n1', NULL), (4, 'pending', 'n1', NULL);
         UPDATE permits SET status = 'approved';
         UPDATE permits SET status = 'revoked';
         UPDATE permits SET status = 'approved', note = 'n2';",
    )
    .await?;
    // Row 4: three transitions delivered. Row 3: one 400, nothing else sent.
    wait_until_msg(Duration::from_secs(30), "row 4's three events", || async {
        rx.requests()
            .iter()
            .filter(|r| r.json()["registryId"] == 4)
            .count()
            >= 3
    })
    .await;
    let list = || async {
        let (code, out, err) = pgcdc_output(&[
            "dlq",
            "list",
            "--config",
            &cfg.arg(),
            "--sink",
            "registry",
            "--json",
        ])
        .await?;
        ensure!(code == 0, "dlq list: {err}");
        Ok::<Value, anyhow::Error>(serde_json::from_str(&out)?)
    };
    wait_until_msg(
        Duration::from_secs(30),
        "3 events of row 3 in the DLQ",
        || async { list().await.ok().and_then(|v| v.as_array().map(Vec::len)) == Some(3) },
    )
    .await;
    let dlq = list().await?;
    let states: Vec<&str> = dlq
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state"].as_str())
        .collect();
    ensure!(states == ["dead", "parked", "parked"], "DLQ: {dlq:#}");
    ensure!(
        dlq[0]["error"].as_str().is_some_and(|e| e.contains("400")),
        "error: {}",
        dlq[0]["error"]
    );
    let row3 = rx
        .requests()
        .iter()
        .filter(|r| r.json()["registryId"] == 3)
        .count();
    ensure!(row3 == 1, "row 3 was tried {row3} times; a 400 is definite");

    // A parked event cannot jump its queue.
    let parked_id = dlq[1]["id"].as_str().unwrap_or_default().to_string();
    let (code, _, err) = pgcdc_output(&[
        "dlq",
        "replay",
        "--config",
        &cfg.arg(),
        "--sink",
        "registry",
        "--id",
        &parked_id,
    ])
    .await?;
    ensure!(
        code != 0 && err.contains("parked behind"),
        "replaying a parked event alone: {err}"
    );

    // The receiver is fixed; replay everything: row 3's events arrive in order.
    rx.set_mode(Mode::Ok);
    let (code, _, err) = pgcdc_output(&[
        "dlq",
        "replay",
        "--config",
        &cfg.arg(),
        "--sink",
        "registry",
        "--all",
    ])
    .await?;
    ensure!(code == 0, "replay: {err}");
    wait_until_msg(Duration::from_secs(30), "row 3 replayed", || async {
        rx.requests()
            .iter()
            .filter(|r| r.json()["registryId"] == 3)
            .count()
            >= 4
    })
    .await;
    let row3: Vec<Value> = rx
        .requests()
        .iter()
        .map(Recorded::json)
        .filter(|b| b["registryId"] == 3)
        .map(|b| json!([b["state"], b["note"]]))
        .collect();
    ensure!(
        row3 == [
            json!(["permitApproved", "n1"]),
            json!(["permitApproved", "n1"]),
            json!(["permitRevoked", "n1"]),
            json!(["permitApproved", "n2"]),
        ],
        "row 3 order: {row3:?}"
    );
    wait_until_msg(Duration::from_secs(10), "an empty DLQ", || async {
        list().await.ok().and_then(|v| v.as_array().map(Vec::len)) == Some(0)
    })
    .await;
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok(())
}

/// Many rows, many transitions each, concurrency 8: per-row order holds and
/// requests overlap.
#[tokio::test(flavor = "multi_thread")]
async fn per_row_order_under_concurrency() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Delay(Duration::from_millis(20)));
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        &rx.url(),
        "concurrency = 8",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO permits SELECT g, 'pending', '0', NULL FROM generate_series(1, 40) g")
        .await?;
    for round in 1..=5 {
        pg.batch(&format!(
            "UPDATE permits SET status = 'approved', note = '{round}';
             UPDATE permits SET status = 'revoked', note = '{round}';"
        ))
        .await?;
    }
    wait_until_msg(Duration::from_secs(60), "400 requests", || async {
        rx.requests().len() >= 400
    })
    .await;
    let mut per_row: HashMap<i64, Vec<(String, String)>> = HashMap::new();
    for b in bodies(&rx.requests()) {
        per_row
            .entry(b["registryId"].as_i64().unwrap_or(-1))
            .or_default()
            .push((
                b["state"].as_str().unwrap_or_default().to_string(),
                b["note"].as_str().unwrap_or_default().to_string(),
            ));
    }
    ensure!(per_row.len() == 40, "rows: {}", per_row.len());
    for (row, seq) in &per_row {
        let want: Vec<(String, String)> = (1..=5)
            .flat_map(|r| {
                [
                    ("permitApproved".to_string(), r.to_string()),
                    ("permitRevoked".to_string(), r.to_string()),
                ]
            })
            .collect();
        ensure!(*seq == want, "row {row} out of order: {seq:?}");
    }
    ensure!(rx.max_in_flight() > 1, "requests never overlapped");
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok(())
}

/// kill -9 while deliveries are slow and failing: after restarts every event
/// arrives at least once, and all copies of one key carry the same body.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_delivery_loses_nothing() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Delay(Duration::from_millis(30)));
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        &rx.url(),
        "concurrency = 4",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    const ROWS: i64 = 300;
    pg.batch(&format!(
        "INSERT INTO permits SELECT g, 'pending', 'x', NULL FROM generate_series(1, {ROWS}) g;
         UPDATE permits SET status = 'approved';"
    ))
    .await?;
    for _ in 0..3 {
        let before = rx.requests().len();
        wait_until_msg(Duration::from_secs(30), "some progress", || async {
            rx.requests().len() > before + 20
        })
        .await;
        p.kill9()?;
        p.wait_exit(Duration::from_secs(10)).await;
        p = start_streaming(&pg, &cfg).await?;
    }
    let distinct = || {
        rx.requests()
            .iter()
            .filter_map(|r| r.header("idempotency-key").map(str::to_string))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    wait_until_msg(
        Duration::from_secs(90),
        "every approval delivered",
        || async { distinct() as i64 >= ROWS },
    )
    .await;
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::new();
    for r in rx.requests() {
        by_key
            .entry(r.header("idempotency-key").unwrap_or_default().to_string())
            .or_default()
            .push(r.json());
    }
    ensure!(
        by_key.len() as i64 == ROWS,
        "distinct keys: {}",
        by_key.len()
    );
    for (key, copies) in &by_key {
        ensure!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "copies of {key} differ: {copies:?}"
        );
    }
    let ids: std::collections::HashSet<i64> = by_key
        .values()
        .filter_map(|c| c[0]["registryId"].as_i64())
        .collect();
    ensure!(ids.len() as i64 == ROWS, "permits delivered: {}", ids.len());
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok(())
}

/// `pgcdc check` verifies each HTTP sink's endpoint as well as the source.
#[tokio::test(flavor = "multi_thread")]
async fn check_verifies_http_endpoints() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), ""))?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "check with the endpoint up: {out}\n{err}");
    ensure!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("sink registry") && l.contains("reachable")),
        "{out}"
    );

    // A port nothing listens on.
    let closed = format!("http://127.0.0.1:{}/hook", pgcdc_tests::free_port()?);
    cfg.rewrite(&config(&pg.url(), state.path(), &closed, ""))?;
    let (code, out, _) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 1, "check must fail with the endpoint down: {out}");
    let line = out
        .lines()
        .find(|l| l.contains("sink registry"))
        .unwrap_or_default();
    ensure!(
        line.starts_with("FAIL") && line.contains("fix:") && line.contains("sink[0].url"),
        "{out}"
    );
    Ok(())
}
