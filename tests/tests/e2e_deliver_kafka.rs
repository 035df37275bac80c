//! End to end: Postgres → `pgcdc run` (Kafka sink, `format = "native"`) →
//! nisshi → several `pgcdc deliver` workers in one consumer group → the
//! harness's HTTP receiver. Workers are killed (-9), added and stopped while
//! rows change; every change arrives, per-row order holds, and a duplicate
//! only ever repeats an idempotency key with the same body. A rejected row
//! stays parked across a rebalance (the DLQ is in the shared Postgres state
//! store) until replay delivers it in order. Bad input stops a worker with
//! the problem named and nothing committed past it.

mod e2e_fixture;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{pgcdc_output, start_streaming, stderr_with};
use pgcdc_tests::http_receiver::{Mode, Receiver, Recorded};
use pgcdc_tests::kafka::{produce_foreign, Broker};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

const TOPIC: &str = "portal.public.permits";

/// `pgcdc run` with one native Kafka sink into `TOPIC` (6 partitions).
fn run_config(pg: &PgCluster, state: &std::path::Path, brokers: &str) -> String {
    format!(
        "[source]\nurl = \"{}\"\ntables = [\"public.permits\"]\n\n[state]\ndir = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"bus\"\ntype = \"kafka\"\ntables = [\"public.permits\"]\n\
         brokers = \"{brokers}\"\ntopic = \"portal.{{schema}}.{{table}}\"\nformat = \"native\"\n\
         create_topics = true\npartitions = 6\n",
        pg.url(),
        state.display()
    )
}

/// A `pgcdc deliver` worker's config: the group, the shared state in Postgres, and
/// one HTTP sink (`extra` is appended to it).
fn deliver_config(
    pg: &PgCluster,
    state: &std::path::Path,
    brokers: &str,
    receiver: &Receiver,
    extra: &str,
) -> String {
    format!(
        "[deliver]\nbrokers = \"{brokers}\"\ntopics = [\"{TOPIC}\"]\ngroup = \"registry\"\n\
         session_timeout_ms = 6000\n\n\
         [state]\ndir = \"{}\"\nurl = \"{}\"\nschema = \"deliver_state\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"registry\"\ntype = \"http\"\ntables = [\"public.permits\"]\n\
         url = \"{}\"\nretry = {{ max_attempts = 2, initial_backoff_ms = 50, max_backoff_ms = 100 }}\n{extra}",
        state.display(),
        pg.url(),
        receiver.url()
    )
}

fn spawn_deliver(cfg: &ConfigFile) -> anyhow::Result<Pgcdc> {
    Ok(Pgcdc::spawn(&["deliver", "--config", &cfg.arg()], &[])?)
}

async fn permits_table(pg: &PgCluster) -> anyhow::Result<()> {
    pg.batch(
        "CREATE TABLE permits (id int8 PRIMARY KEY, status text NOT NULL, version int NOT NULL)",
    )
    .await?;
    Ok(())
}

/// What the receiver saw, deduplicated by idempotency key: per key, the body
/// (checked the same on every repeat), in first-arrival order.
fn distinct(requests: &[Recorded]) -> anyhow::Result<Vec<(String, Value)>> {
    let mut seen: HashMap<String, Value> = HashMap::new();
    let mut out = Vec::new();
    for r in requests {
        let key = r
            .header("idempotency-key")
            .context("a request without Idempotency-Key")?
            .to_string();
        ensure!(
            r.header("webhook-id") == Some(key.as_str()),
            "webhook-id differs from Idempotency-Key"
        );
        let body = r.json();
        match seen.get(&key) {
            Some(first) => ensure!(
                *first == body,
                "a duplicate of {key} with another body: {first} vs {body}"
            ),
            None => {
                seen.insert(key.clone(), body.clone());
                out.push((key, body));
            }
        }
    }
    Ok(out)
}

/// Versions per row id, in first-arrival order.
fn versions_by_row(events: &[(String, Value)]) -> BTreeMap<i64, Vec<i64>> {
    let mut rows: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (_, body) in events {
        let row = &body["new"];
        if let (Some(id), Some(v)) = (row["id"].as_i64(), row["version"].as_i64()) {
            rows.entry(id).or_default().push(v);
        }
    }
    rows
}

/// Waits until `n` distinct deliveries arrived; on the deadline, fails with the
/// workers' logs.
async fn wait_distinct(
    receiver: &Receiver,
    n: usize,
    within: Duration,
    workers: &[Pgcdc],
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = distinct(&receiver.requests())?.len();
        if got >= n {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = workers.iter().map(|w| w.stderr_tail(15)).collect();
            anyhow::bail!(
                "{got} of {n} distinct deliveries after {within:?}; workers:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three workers share the partitions; under load one is killed with -9, a
/// fourth joins, another stops cleanly. Every change arrives (set-wise exactly
/// the table's changes), each row's versions in order, and duplicates (the
/// killed worker's batch in flight) repeat the same idempotency key and body.
#[tokio::test(flavor = "multi_thread")]
async fn workers_share_partitions_through_kill_join_and_leave() -> anyhow::Result<()> {
    const ROWS: i64 = 60;
    const VERSIONS: i64 = 8;
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    let receiver = Receiver::start().await?;
    broker.create_topic(TOPIC, 6)?;
    let run_state = state_dir()?;
    let run_cfg = ConfigFile::new(&run_config(&pg, run_state.path(), &broker.bootstrap()))?;
    let mut run = start_streaming(&pg, &run_cfg).await?;
    pg.batch(&format!(
        "INSERT INTO permits SELECT g, 'pending', 1 FROM generate_series(1, {ROWS}) g"
    ))
    .await?;
    let deliver_state = state_dir()?;
    let cfg = ConfigFile::new(&deliver_config(
        &pg,
        deliver_state.path(),
        &broker.bootstrap(),
        &receiver,
        "",
    ))?;
    let mut workers: Vec<Pgcdc> = (0..3)
        .map(|_| spawn_deliver(&cfg))
        .collect::<anyhow::Result<_>>()?;
    // The load: each version bumps every row, one transaction per row.
    let url = pg.url();
    let load = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        for v in 2..=VERSIONS {
            for id in 1..=ROWS {
                client
                    .batch_execute(&format!(
                        "UPDATE permits SET version = {v}, status = 'v{v}' WHERE id = {id}"
                    ))
                    .await?;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        anyhow::Ok(())
    });
    wait_distinct(&receiver, 100, Duration::from_secs(90), &workers).await?;
    workers[0].kill9()?;
    workers.push(spawn_deliver(&cfg)?);
    let seen = distinct(&receiver.requests())?.len();
    wait_distinct(&receiver, seen + 100, Duration::from_secs(90), &workers).await?;
    // The group rebalances once the killed worker's session times out (6 s).
    let fourth = &workers[3];
    wait_until_msg(
        Duration::from_secs(60),
        "the fourth worker is given partitions",
        || {
            let log = fourth.stderr();
            async move { log.contains("partitions assigned partitions=[(\"portal") }
        },
    )
    .await;
    workers[1].terminate()?;
    let exit = workers[1].wait_exit(Duration::from_secs(30)).await;
    ensure!(
        exit.is_some_and(|s| s.success()),
        "a clean stop exits 0: {exit:?}\n{}",
        workers[1].stderr_tail(20)
    );
    load.await??;
    let total = (ROWS * VERSIONS) as usize;
    wait_distinct(&receiver, total, Duration::from_secs(120), &workers).await?;
    // What is still in flight lands; nothing beyond the table's changes may come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = distinct(&receiver.requests())?;
    ensure!(
        events.len() == total,
        "{} distinct deliveries, the table had {total} changes",
        events.len()
    );
    let rows = versions_by_row(&events);
    ensure!(
        rows.len() == ROWS as usize,
        "rows delivered: {}",
        rows.len()
    );
    let expected: Vec<i64> = (1..=VERSIONS).collect();
    for (id, versions) in &rows {
        ensure!(
            *versions == expected,
            "row {id}: versions arrived as {versions:?}"
        );
    }
    for w in &mut workers[2..] {
        ensure!(!w.has_exited(), "a worker stopped: {}", w.stderr_tail(20));
        w.terminate()?;
    }
    run.terminate()?;
    Ok(())
}

/// The receiver rejects permit 7: its first event is dead-lettered and its later
/// ones park behind it, on one worker and then, after a rebalance hands the
/// partitions to another, on that one too (the DLQ is in the shared state
/// store). `pgcdc dlq replay` then delivers the row's events in order; other
/// rows were never held up.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_row_stays_parked_across_a_rebalance_and_replays_in_order() -> anyhow::Result<()>
{
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    broker.create_topic(TOPIC, 4)?;
    let receiver = Receiver::start().await?;
    receiver.set_mode(Mode::FailFor {
        status: 422,
        when: Arc::new(|body: &Value| body["new"]["id"] == 7),
    });
    let run_state = state_dir()?;
    let run_cfg = ConfigFile::new(&run_config(&pg, run_state.path(), &broker.bootstrap()))?;
    let mut run = start_streaming(&pg, &run_cfg).await?;
    let deliver_state = state_dir()?;
    let cfg = ConfigFile::new(&deliver_config(
        &pg,
        deliver_state.path(),
        &broker.bootstrap(),
        &receiver,
        "",
    ))?;
    let mut first = spawn_deliver(&cfg)?;
    pg.batch(
        "INSERT INTO permits SELECT g, 'pending', 1 FROM generate_series(1, 10) g; \
         UPDATE permits SET version = 2 WHERE id = 7; UPDATE permits SET version = 3 WHERE id = 7;",
    )
    .await?;
    // 9 other rows arrive; 7 was tried (and refused) once.
    wait_distinct(
        &receiver,
        10,
        Duration::from_secs(60),
        std::slice::from_ref(&first),
    )
    .await?;
    let dlq_count = || async {
        let (_, out, _) =
            pgcdc_output(&["dlq", "list", "--config", &cfg.arg(), "--sink", "registry"])
                .await
                .unwrap_or_default();
        out.lines().filter(|l| l.contains("permits")).count()
    };
    wait_until_msg(
        Duration::from_secs(30),
        "row 7's 3 events in the DLQ",
        || async { dlq_count().await >= 3 },
    )
    .await;
    // A rebalance: the first worker leaves, a second takes every partition.
    first.terminate()?;
    ensure!(first
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
    let mut second = spawn_deliver(&cfg)?;
    pg.batch(
        "UPDATE permits SET version = 4 WHERE id = 7; UPDATE permits SET version = 2 WHERE id = 1;",
    )
    .await?;
    wait_until_msg(Duration::from_secs(60), "row 1's update delivered", || {
        let got = versions_by_row(&distinct(&receiver.requests()).unwrap_or_default());
        async move { got.get(&1).is_some_and(|v| v.contains(&2)) }
    })
    .await;
    wait_until_msg(
        Duration::from_secs(30),
        "row 7's 4th event parked by the new worker",
        || async { dlq_count().await >= 4 },
    )
    .await;
    // The new worker's admin API lists the same DLQ.
    let base = admin_base(&second).await?;
    let (code, body) = admin_get(&base, "/api/sinks/registry/dlq").await;
    let listed: Value = serde_json::from_str(&body).unwrap_or_default();
    let entries = listed
        .as_array()
        .or_else(|| listed["items"].as_array())
        .map(Vec::len)
        .unwrap_or(0);
    ensure!(
        code == 200 && entries == 4,
        "GET /api/sinks/registry/dlq: {code} {body}"
    );
    let delivered_7 = |r: &Receiver| {
        r.requests()
            .iter()
            .filter(|q| q.json()["new"]["id"] == 7)
            .count()
    };
    ensure!(
        delivered_7(&receiver) == 1,
        "only the first (refused) attempt of row 7 reached the receiver: {}",
        delivered_7(&receiver)
    );
    receiver.set_mode(Mode::Ok);
    let (code, out, err) = pgcdc_output(&[
        "dlq",
        "replay",
        "--config",
        &cfg.arg(),
        "--sink",
        "registry",
        "--all",
    ])
    .await?;
    ensure!(code == 0, "dlq replay: {out}{err}");
    wait_until_msg(Duration::from_secs(60), "row 7 replayed", || {
        let n = delivered_7(&receiver);
        async move { n >= 5 }
    })
    .await;
    let sent: Vec<i64> = receiver
        .requests()
        .iter()
        .filter(|q| q.json()["new"]["id"] == 7)
        .skip(1)
        .filter_map(|q| q.json()["new"]["version"].as_i64())
        .collect();
    ensure!(sent == vec![1, 2, 3, 4], "row 7 replayed as {sent:?}");
    // The audit (in the shared store) holds the refusal and the replay's delivery.
    let first_7 = receiver
        .requests()
        .iter()
        .find(|q| q.json()["new"]["id"] == 7)
        .and_then(|q| q.header("idempotency-key").map(str::to_owned))
        .context("row 7's first request")?;
    let (code, out, err) =
        pgcdc_output(&["audit", "--config", &cfg.arg(), "--event", &first_7]).await?;
    ensure!(code == 0, "audit: {out}{err}");
    ensure!(
        out.contains("Failed") && out.contains("HTTP 422") && out.contains("Delivered"),
        "audit of {first_7}: {out}"
    );
    ensure!(dlq_count().await == 0, "the DLQ is empty after the replay");
    ensure!(!second.has_exited(), "{}", second.stderr_tail(20));
    second.terminate()?;
    run.terminate()?;
    Ok(())
}

/// A trigger that reads `.old` gives the same deliveries from Kafka as from the
/// journal: one `pgcdc run` delivers over HTTP directly and writes the native
/// topic; a `pgcdc deliver` with the same trigger and sink reads the topic.
#[tokio::test(flavor = "multi_thread")]
async fn triggers_on_old_deliver_the_same_from_kafka_as_from_the_journal() -> anyhow::Result<()> {
    const TRIGGER: &str = "[[trigger]]\nname = \"permitApproved\"\ntable = \"public.permits\"\n\
        when = '.old.status != \"approved\" and .new.status == \"approved\"'\n\n";
    const SINK: &str = "events = [\"permitApproved\"]\n\
        transform = '{id: .new.id, was: .old.status, trigger: .trigger, version: .new.version}'\n";
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    broker.create_topic(TOPIC, 3)?;
    let direct = Receiver::start().await?;
    let via_kafka = Receiver::start().await?;
    let run_state = state_dir()?;
    let run_cfg = ConfigFile::new(&format!(
        "{TRIGGER}{}\n[[sink]]\nname = \"direct\"\ntype = \"http\"\nurl = \"{}\"\n{SINK}",
        run_config(&pg, run_state.path(), &broker.bootstrap()),
        direct.url()
    ))?;
    let mut run = start_streaming(&pg, &run_cfg).await?;
    let deliver_state = state_dir()?;
    let cfg = ConfigFile::new(&format!(
        "{TRIGGER}{}",
        deliver_config(
            &pg,
            deliver_state.path(),
            &broker.bootstrap(),
            &via_kafka,
            SINK
        )
        .replace("tables = [\"public.permits\"]\n", "")
    ))?;
    let mut worker = spawn_deliver(&cfg)?;
    pg.batch(
        "INSERT INTO permits SELECT g, 'pending', 1 FROM generate_series(1, 6) g; \
         UPDATE permits SET status = 'approved', version = 2 WHERE id IN (1, 3, 5); \
         UPDATE permits SET version = 3 WHERE id = 1; \
         UPDATE permits SET status = 'pending', version = 4 WHERE id = 3; \
         UPDATE permits SET status = 'approved', version = 5 WHERE id = 3; \
         INSERT INTO permits VALUES (7, 'approved', 1);",
    )
    .await?;
    // 1, 3, 5 approved; 3 approved again; 7 inserted approved (.old is null).
    wait_distinct(
        &direct,
        5,
        Duration::from_secs(60),
        std::slice::from_ref(&run),
    )
    .await?;
    wait_distinct(
        &via_kafka,
        5,
        Duration::from_secs(60),
        std::slice::from_ref(&worker),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = distinct(&direct.requests())?;
    let b = distinct(&via_kafka.requests())?;
    ensure!(a.len() == 5, "direct: {a:?}");
    let sorted = |mut v: Vec<(String, Value)>| {
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    ensure!(
        sorted(a.clone()) == sorted(b.clone()),
        "the same deliveries (ids and bodies):\n{a:?}\n{b:?}"
    );
    ensure!(a.iter().any(|(_, body)| body["was"] == "pending"), "{a:?}");
    check_worker_status(&worker, &cfg).await?;
    worker.terminate()?;
    run.terminate()?;
    Ok(())
}

/// `http://IP:PORT` of the worker's admin API, from its log.
async fn admin_base(worker: &Pgcdc) -> anyhow::Result<String> {
    let log = stderr_with(worker, &["admin API listening"]).await;
    let addr = log
        .lines()
        .find_map(|l| l.split("admin API listening addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("the worker logs its admin address")?;
    Ok(format!("http://{addr}"))
}

/// GET on the worker's admin API: (status, body).
async fn admin_get(base: &str, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"));
    match client.get(format!("{base}{path}")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The worker (alone in its group, caught up) holds all 3 partitions: its
/// `/api/status` lists them with their lag, `/metrics` has a lag series per
/// partition, `/readyz` is 200; `pgcdc status` reads the group's lag (0) from Kafka.
async fn check_worker_status(worker: &Pgcdc, cfg: &ConfigFile) -> anyhow::Result<()> {
    let base = admin_base(worker).await?;
    wait_until_msg(
        Duration::from_secs(30),
        "readyz 200 and 3 partitions with lag 0",
        || {
            let base = base.clone();
            async move {
                let ready = admin_get(&base, "/readyz").await.0 == 200;
                let status: Value = serde_json::from_str(&admin_get(&base, "/api/status").await.1)
                    .unwrap_or_default();
                let parts = status["deliver"]["partitions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                ready && parts.len() == 3 && parts.iter().all(|p| p["lag_records"] == 0)
            }
        },
    )
    .await;
    let (_, metrics) = admin_get(&base, "/metrics").await;
    ensure!(
        metrics.contains(&format!(
            "pgcdc_deliver_partition_lag_records{{topic=\"{TOPIC}\",partition=\"2\"}} 0"
        )),
        "{metrics}"
    );
    let (code, out, err) = pgcdc_output(&["status", "--json", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "{out}{err}");
    let status: Value = serde_json::from_str(&out)?;
    ensure!(status["deliver"]["scope"] == "group", "{status}");
    let parts = status["deliver"]["partitions"]
        .as_array()
        .context("partitions")?;
    ensure!(
        parts.len() == 3 && parts.iter().all(|p| p["lag_records"] == 0),
        "{status}"
    );
    Ok(())
}

/// A record no pgcdc sink wrote stops the worker with its topic, partition and
/// offset named, and nothing past it is committed: a restarted worker stops at
/// the same record. A topic that does not exist is refused at the start.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_records_and_missing_topics_are_named() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    broker.create_topic(TOPIC, 1)?;
    let receiver = Receiver::start().await?;
    let state = state_dir()?;
    produce_foreign(&broker.bootstrap(), TOPIC, "1", "{\"hello\": 1}")?;
    let cfg = ConfigFile::new(&deliver_config(
        &pg,
        state.path(),
        &broker.bootstrap(),
        &receiver,
        "",
    ))?;
    for attempt in 0..2 {
        let mut w = spawn_deliver(&cfg)?;
        let exit = w.wait_exit(Duration::from_secs(60)).await;
        ensure!(
            exit.is_some_and(|s| !s.success()),
            "attempt {attempt}: {exit:?}"
        );
        let log = stderr_with(&w, &["no pgcdc-event-id header"]).await;
        ensure!(
            log.contains(&format!("topic {TOPIC} partition 0 offset 0"))
                && log.contains("no pgcdc-event-id header"),
            "attempt {attempt}: {log}"
        );
    }
    ensure!(receiver.requests().is_empty());
    let missing = ConfigFile::new(
        &deliver_config(&pg, state.path(), &broker.bootstrap(), &receiver, "")
            .replace(&format!("[\"{TOPIC}\"]"), "[\"portal.public.nope\"]"),
    )?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &missing.arg()]).await?;
    ensure!(
        code == 1 && out.contains("portal.public.nope") && out.contains("does not exist"),
        "check: {code} {out}{err}"
    );
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(
        code == 0,
        "check of a good deliver config: {code} {out}{err}"
    );
    let mut w = spawn_deliver(&missing)?;
    let exit = w.wait_exit(Duration::from_secs(60)).await;
    ensure!(exit.is_some_and(|s| !s.success()), "{exit:?}");
    let log = stderr_with(&w, &["does not exist"]).await;
    ensure!(
        log.contains("deliver.topics[0]") && log.contains("portal.public.nope"),
        "{log}"
    );
    Ok(())
}

/// The broker goes away while rows change: the worker is not ready (the reason
/// names Kafka), keeps running, and delivers everything once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_is_waited_for_and_shown_in_readyz() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let pg = PgCluster::new().await?;
    permits_table(&pg).await?;
    broker.create_topic(TOPIC, 2)?;
    let receiver = Receiver::start().await?;
    let run_state = state_dir()?;
    let run_cfg = ConfigFile::new(&run_config(&pg, run_state.path(), &broker.bootstrap()))?;
    let mut run = start_streaming(&pg, &run_cfg).await?;
    let deliver_state = state_dir()?;
    let cfg = ConfigFile::new(&deliver_config(
        &pg,
        deliver_state.path(),
        &broker.bootstrap(),
        &receiver,
        "",
    ))?;
    let mut worker = spawn_deliver(&cfg)?;
    pg.batch("INSERT INTO permits SELECT g, 'pending', 1 FROM generate_series(1, 5) g")
        .await?;
    wait_distinct(
        &receiver,
        5,
        Duration::from_secs(60),
        std::slice::from_ref(&worker),
    )
    .await?;
    let base = admin_base(&worker).await?;
    wait_until_msg(Duration::from_secs(30), "readyz 200", || {
        let base = base.clone();
        async move { admin_get(&base, "/readyz").await.0 == 200 }
    })
    .await;
    broker.cut();
    pg.batch("INSERT INTO permits SELECT g, 'pending', 1 FROM generate_series(6, 10) g")
        .await?;
    wait_until_msg(Duration::from_secs(60), "readyz 503 naming Kafka", || {
        let base = base.clone();
        async move {
            let (code, body) = admin_get(&base, "/readyz").await;
            code == 503 && body.contains("no Kafka broker is reachable")
        }
    })
    .await;
    ensure!(!worker.has_exited(), "{}", worker.stderr_tail(20));
    broker.restore();
    wait_distinct(
        &receiver,
        10,
        Duration::from_secs(120),
        std::slice::from_ref(&worker),
    )
    .await?;
    wait_until_msg(Duration::from_secs(30), "readyz 200 again", || {
        let base = base.clone();
        async move { admin_get(&base, "/readyz").await.0 == 200 }
    })
    .await;
    ensure!(distinct(&receiver.requests())?.len() == 10);
    worker.terminate()?;
    run.terminate()?;
    Ok(())
}
