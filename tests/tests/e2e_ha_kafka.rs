//! High availability with a Kafka sink: `pgcdc run` processes share a Postgres
//! state store and write one topic (nisshi). Killing the leader with SIGKILL
//! mid-load, again and again, and pausing it with SIGSTOP while it has records
//! queued, an independent consumer (confluent-kafka, `read_committed`) sees
//! every change exactly once, each row's changes in commit order; the paused
//! leader, once resumed, writes nothing more to the store or to Kafka.

mod e2e_fixture;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use e2e_fixture::ha::{holder_pid, leader, wait_leader};
use e2e_fixture::SocketAddr;
use pgcdc_tests::kafka::Broker;
use pgcdc_tests::{free_port, state_dir, ConfigFile, PgCluster, Pgcdc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;

const TOPIC: &str = "ha.public.permits";
const PROGRESS_TOPIC: &str = "pgcdc.progress";
const PARTITIONS: i32 = 2;
const ROWS: i64 = 3_000;
/// Each row is inserted (version 1), then updated to versions 2 and 3.
const VERSIONS: i64 = 3;
const PER_TXN: i64 = 10;
/// 900 transactions at this pace take 27 s or more: the kills land mid-load.
const PACE: Duration = Duration::from_millis(30);
const TOTAL: usize = (ROWS * VERSIONS) as usize;

struct Setup {
    pg: PgCluster,
    broker: Broker,
    _dir: tempfile::TempDir,
    state_url: String,
}

async fn setup() -> anyhow::Result<Setup> {
    let broker = Broker::start().await?;
    broker.create_topic(TOPIC, PARTITIONS)?;
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int8 PRIMARY KEY, version int NOT NULL)")
        .await?;
    pg.batch("CREATE DATABASE state").await?;
    let state_url = pg.url().replace("/postgres?", "/state?");
    Ok(Setup {
        pg,
        broker,
        _dir: state_dir()?,
        state_url,
    })
}

impl Setup {
    /// Every process shares this config; only the admin port differs (one host).
    fn spawn(&self, state_url: &str) -> anyhow::Result<(Pgcdc, ConfigFile)> {
        let cfg = ConfigFile::new(&format!(
            r#"[source]
url = "{source}"
tables = ["public.permits"]

[state]
dir = "{dir}"
url = "{state_url}"

[admin]
listen = "127.0.0.1:{port}"

[ha]
enabled = true
renew = "300ms"
lease_timeout = "3s"

[[sink]]
name = "kafka"
type = "kafka"
brokers = "{brokers}"
topic = "ha.{{schema}}.{{table}}"
"#,
            source = self.pg.url(),
            dir = self._dir.path().display(),
            port = free_port()?,
            brokers = self.broker.bootstrap(),
        ))?;
        let p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
        Ok((p, cfg))
    }

    /// Inserts `ROWS` rows, then updates each to version 2, then to 3, `PER_TXN` rows
    /// a transaction; the task ends with the load.
    fn load(&self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let addr = SocketAddr::of(&self.pg);
        tokio::spawn(async move {
            let client = addr.connect().await?;
            for round in 0..VERSIONS {
                for from in (1..=ROWS).step_by(PER_TXN as usize) {
                    let to = from + PER_TXN - 1;
                    let sql = if round == 0 {
                        format!(
                            "INSERT INTO permits SELECT g, 1 FROM generate_series({from}, {to}) g"
                        )
                    } else {
                        format!("UPDATE permits SET version = version + 1 WHERE id BETWEEN {from} AND {to}")
                    };
                    client.batch_execute(&sql).await?;
                    tokio::time::sleep(PACE).await;
                }
            }
            Ok(())
        })
    }
}

/// What an independent consumer sees: one JSON line per record (kafka_consume.py).
async fn consume(broker: &Broker, isolation: &str) -> anyhow::Result<Vec<Value>> {
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kafka_consume.py"
        ))
        .args([&broker.bootstrap(), TOPIC, isolation])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "kafka_consume.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("kafka_consume.py output"))
        .collect()
}

/// Waits until a consumer with `isolation` sees at least `n` records, and says
/// how many it saw. (While the leader writes, a `read_committed` consumer stops
/// short of the open transaction and learns of no partition end, so progress is
/// watched uncommitted.)
async fn wait_records(
    broker: &Broker,
    isolation: &str,
    n: usize,
    procs: &mut [Pgcdc],
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let seen = consume(broker, isolation).await?.len();
        if seen >= n {
            return Ok(seen);
        }
        for p in procs.iter_mut() {
            ensure!(!p.has_exited(), "a pgcdc exited: {}", p.stderr_tail(30));
        }
        ensure!(
            Instant::now() < deadline,
            "{seen} of {n} records after 180 s; logs:\n{}",
            procs
                .iter()
                .map(|p| p.stderr_tail(15))
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every (id, version) exactly once; each key's versions in offset order, in one partition.
fn assert_exactly_once_in_order(records: &[Value]) -> anyhow::Result<()> {
    let mut versions: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut partition_of: HashMap<i64, i64> = HashMap::new();
    for r in records {
        let id = r["after"]["id"].as_i64().context("after.id")?;
        let version = r["after"]["version"].as_i64().context("after.version")?;
        versions.entry(id).or_default().push(version);
        let p = r["partition"].as_i64().context("partition")?;
        let first = *partition_of.entry(id).or_insert(p);
        ensure!(first == p, "key {id} in partitions {first} and {p}");
    }
    let expected: Vec<i64> = (1..=VERSIONS).collect();
    let bad: BTreeMap<i64, &Vec<i64>> = versions
        .iter()
        .filter(|(_, v)| **v != expected)
        .map(|(k, v)| (*k, v))
        .take(5)
        .collect();
    ensure!(
        bad.is_empty(),
        "keys not seen exactly once per version in order (expected {expected:?}): {bad:?}"
    );
    ensure!(
        versions.len() as i64 == ROWS && records.len() == TOTAL,
        "{} records of {} keys for {TOTAL} changes of {ROWS} rows",
        records.len(),
        versions.len()
    );
    Ok(())
}

/// The end offsets of the sink's topic and of the progress topic, read uncommitted:
/// anything appended, committed or not, moves them.
fn end_offsets(bootstrap: &str) -> anyhow::Result<Vec<(String, i32, i64)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut out = Vec::new();
    for (topic, parts) in [(TOPIC, PARTITIONS), (PROGRESS_TOPIC, 1)] {
        for p in 0..parts {
            let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            out.push((topic.to_string(), p, high));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_exactly_once_across_kill9_takeovers_with_two_processes() -> anyhow::Result<()> {
    kafka_exactly_once_across_kill9_takeovers(2).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_exactly_once_across_kill9_takeovers_with_three_processes() -> anyhow::Result<()> {
    kafka_exactly_once_across_kill9_takeovers(3).await
}

/// `n` processes; the leader is killed three times mid-load, each time replaced
/// by a new standby so that `n` keep running.
async fn kafka_exactly_once_across_kill9_takeovers(n: usize) -> anyhow::Result<()> {
    let s = setup().await?;
    let mut procs = Vec::new();
    let mut cfgs = Vec::new();
    for _ in 0..n {
        let (p, c) = s.spawn(&s.state_url)?;
        procs.push(p);
        cfgs.push(c);
    }
    let (mut lead, mut epoch) =
        wait_leader(&cfgs[0], &mut procs, 0, Duration::from_secs(60)).await?;
    pgcdc_tests::wait_streaming(&s.pg, &mut procs[lead]).await?;
    let load = s.load();
    let kills = 3;
    for round in 1..=kills {
        // The kill must land while the leader still has changes to send. The load
        // may be over by now on a slow machine (each takeover takes seconds); the
        // changes it wrote while the leader was down are then still to be sent.
        let seen =
            wait_records(&s.broker, "read_uncommitted", round * TOTAL / 6, &mut procs).await?;
        if seen >= TOTAL {
            eprintln!("kill {round}: {seen} records (some aborted) out already");
        }
        procs[lead].kill9()?;
        ensure!(procs[lead]
            .wait_exit(Duration::from_secs(10))
            .await
            .is_some());
        let (p, c) = s.spawn(&s.state_url)?;
        procs[lead] = p;
        cfgs.push(c);
        (lead, epoch) = wait_leader(&cfgs[0], &mut procs, epoch, Duration::from_secs(30)).await?;
    }
    load.await??;
    wait_records(&s.broker, "read_committed", TOTAL, &mut procs).await?;
    // A duplicate, if one were coming, has had the time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once_in_order(&consume(&s.broker, "read_committed").await?)?;
    for p in procs.iter_mut() {
        ensure!(!p.has_exited(), "a standby exited: {}", p.stderr_tail(20));
    }
    Ok(())
}

/// Store state that a fenced process must leave as it is.
#[derive(Debug, PartialEq)]
struct StoreState {
    head: i64,
    cursors: Vec<(String, i64)>,
    epoch: i64,
}

async fn store_state(state_url: &str, cfg: &ConfigFile) -> anyhow::Result<StoreState> {
    let url: pgcdc::replication::SourceUrl = state_url.parse()?;
    let (_, epoch) = leader(cfg).await?.context("no leader")?;
    tokio::task::spawn_blocking(move || {
        let store = pgcdc::journal::Store::postgres(url, "pgcdc");
        let j = store.open(pgcdc::journal::Access::Existing)?;
        Ok(StoreState {
            head: j.head()?.pos,
            cursors: j.cursors()?.into_iter().map(|c| (c.sink, c.pos)).collect(),
            epoch,
        })
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_kafka_leader_writes_nothing_to_kafka_when_it_wakes() -> anyhow::Result<()> {
    let s = setup().await?;
    // Sessions named by the operator: the takeover can end only the old leader's
    // lock session, so its store sessions live on and the fences alone stop it.
    let state_url = format!("{}&application_name=pgcdc-ha-test", s.state_url);
    let (a, cfg) = s.spawn(&state_url)?;
    let mut procs = vec![a];
    let (_, epoch) = wait_leader(&cfg, &mut procs, 0, Duration::from_secs(60)).await?;
    pgcdc_tests::wait_streaming(&s.pg, &mut procs[0]).await?;
    let (b, _b_cfg) = s.spawn(&state_url)?;
    procs.push(b);
    let load = s.load();
    wait_records(&s.broker, "read_uncommitted", TOTAL / 6, &mut procs).await?;
    // Cut the broker, so the leader has records queued in its producer (the load
    // goes on), then pause it with them; the standby finds the broker back.
    s.broker.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(procs[0].pid())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    s.broker.restore();

    let mut standby = vec![procs.remove(1)];
    let (_, new_epoch) = wait_leader(&cfg, &mut standby, epoch, Duration::from_secs(20)).await?;
    load.await??;
    wait_records(&s.broker, "read_committed", TOTAL, &mut standby).await?;
    // Caught up: the new leader's cursor at the head, its records all committed.
    pgcdc_tests::wait_until_msg(Duration::from_secs(60), "the cursor at the head", || {
        let (url, cfg) = (&state_url, &cfg);
        async move {
            store_state(url, cfg)
                .await
                .is_ok_and(|s| s.cursors.iter().all(|(_, c)| *c == s.head))
        }
    })
    .await;
    // The new leader's last progress record (it follows the cursor within 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let bootstrap = s.broker.bootstrap();
    let store_before = store_state(&state_url, &cfg).await?;
    let b2 = bootstrap.clone();
    let kafka_before = tokio::task::spawn_blocking(move || end_offsets(&b2)).await??;

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let old = &mut procs[0];
    pgcdc_tests::wait_until_msg(
        Duration::from_secs(30),
        "the old leader says lost leadership",
        || {
            let log = old.stderr();
            async move { log.contains("lost leadership") }
        },
    )
    .await;
    // Its queued records had the time to reach the broker, if it let them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kafka_after = tokio::task::spawn_blocking(move || end_offsets(&bootstrap)).await??;
    ensure!(
        kafka_before == kafka_after,
        "the resumed old leader wrote to Kafka: end offsets {kafka_before:?}, then {kafka_after:?}; its log:\n{}",
        old.stderr_tail(30)
    );
    let store_after = store_state(&state_url, &cfg).await?;
    ensure!(
        store_before == store_after && store_after.epoch == new_epoch,
        "the resumed old leader changed the store: {store_before:?}, then {store_after:?}"
    );
    ensure!(
        !old.has_exited(),
        "it rejoins as a standby: {}",
        old.stderr_tail(20)
    );
    let (holder, _) = leader(&cfg).await?.context("no leader")?;
    ensure!(holder_pid(&holder) == Some(standby[0].pid()));
    assert_exactly_once_in_order(&consume(&s.broker, "read_committed").await?)?;
    Ok(())
}
