//! High availability end to end: two and three `pgcdc run` processes share a
//! Postgres state store; one leads. Killing the leader with SIGKILL mid-load,
//! again and again, loses nothing at the HTTP receiver (duplicates only of an
//! in-flight batch, with the same ids); a leader paused with SIGSTOP is taken
//! over, and once resumed writes nothing (its store writes are fenced), says
//! "lost leadership" and stands by.

mod e2e_fixture;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use e2e_fixture::ha::{holder_pid, leader, wait_leader};
use e2e_fixture::{create_load_table, Loader, SocketAddr};
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{free_port, state_dir, ConfigFile, PgCluster, Pgcdc};

const ROWS: u64 = 12_000;
const PER_TXN: u64 = 40;
/// 300 transactions at this pace take 9 s or more: the kills land mid-load.
const PACE: Duration = Duration::from_millis(30);
/// Events the runner reads (and may have in flight) per batch.
const RUNNER_BATCH: usize = 1_000;

/// One cluster: the source (database `postgres`) and the state (database `state`).
struct Setup {
    pg: PgCluster,
    receiver: Receiver,
    _dir: tempfile::TempDir,
    /// State URL as in the config.
    state_url: String,
}

async fn setup() -> anyhow::Result<Setup> {
    let pg = PgCluster::new().await?;
    create_load_table(&pg, "load").await?;
    pg.batch("CREATE DATABASE state").await?;
    let receiver = Receiver::start().await?;
    let state_url = pg.url().replace("/postgres?", "/state?");
    Ok(Setup {
        pg,
        receiver,
        _dir: state_dir()?,
        state_url,
    })
}

impl Setup {
    /// The config every process shares; only the admin port differs (one host).
    fn config(&self, state_url: &str) -> anyhow::Result<ConfigFile> {
        let port = free_port()?;
        Ok(ConfigFile::new(&format!(
            r#"[source]
url = "{source}"
tables = ["public.load"]

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
name = "hook"
type = "http"
url = "{receiver}/events"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
            source = self.pg.url(),
            dir = self._dir.path().display(),
            receiver = self.receiver.url(),
        ))?)
    }

    fn spawn(&self, state_url: &str) -> anyhow::Result<(Pgcdc, ConfigFile)> {
        let cfg = self.config(state_url)?;
        let p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
        Ok((p, cfg))
    }
}

/// The admin API's base URL of the process started with `cfg`.
fn admin_base(cfg: &ConfigFile) -> anyhow::Result<String> {
    let listen = config_value(cfg, "admin", "listen")?;
    Ok(format!("http://{listen}"))
}

/// The string value of `key` in `[section]` of the config file (as `Setup::config`
/// writes it: one `key = "value"` a line).
fn config_value(cfg: &ConfigFile, section: &str, key: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(cfg.path())?;
    let header = format!("[{section}]");
    let prefix = format!("{key} = \"");
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| l.strip_prefix(&prefix)?.strip_suffix('"'))
        .map(str::to_string)
        .with_context(|| format!("no {section}.{key} in the config"))
}

/// GET: (status, body); status 0 when the request itself failed.
async fn get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Deliveries as the receiver saw them: event id → (count, idempotency keys).
struct Deliveries {
    per_id: HashMap<String, (u32, Vec<String>)>,
    /// Insert keys (load ids) seen.
    keys: std::collections::HashSet<i64>,
    /// (key, commit LSN) in arrival order, for the per-row order check.
    arrivals: Vec<(i64, String, String)>,
}

fn deliveries(receiver: &Receiver) -> anyhow::Result<Deliveries> {
    let mut d = Deliveries {
        per_id: HashMap::new(),
        keys: Default::default(),
        arrivals: Vec::new(),
    };
    for r in receiver.requests() {
        let v = r.json();
        let id = v["id"].as_str().context("event without id")?.to_string();
        let key = v["key"]["id"].as_i64().context("event without key.id")?;
        let entry = d.per_id.entry(id.clone()).or_default();
        entry.0 += 1;
        entry
            .1
            .push(r.header("idempotency-key").unwrap_or("").to_string());
        d.keys.insert(key);
        d.arrivals
            .push((key, id, v["lsn"].as_str().unwrap_or("").to_string()));
    }
    Ok(d)
}

impl Deliveries {
    /// Every key arrived; duplicates are whole re-sends of an id with its own key,
    /// at most `in_flight` of them; a row's events never arrive out of order.
    fn check(&self, rows: u64, in_flight: usize) -> anyhow::Result<usize> {
        let missing: Vec<u64> = (1..=rows)
            .filter(|k| !self.keys.contains(&(*k as i64)))
            .take(10)
            .collect();
        ensure!(
            missing.is_empty(),
            "keys never delivered (first 10): {missing:?}"
        );
        let mut dups = 0;
        for (id, (n, keys)) in &self.per_id {
            ensure!(
                keys.iter().all(|k| k == id),
                "event {id} was sent with Idempotency-Key {keys:?}"
            );
            if *n > 1 {
                dups += 1;
            }
        }
        ensure!(
            dups <= in_flight,
            "{dups} events delivered more than once; at most the in-flight batches ({in_flight}) may be"
        );
        // One insert per row here: each row's first arrival is its only event, and
        // a re-send repeats an id already seen (never a new one out of order).
        let mut first: HashMap<i64, &str> = HashMap::new();
        for (key, id, _) in &self.arrivals {
            let seen = first.entry(*key).or_insert(id.as_str());
            ensure!(
                *seen == id.as_str(),
                "row {key} got two different events: {seen} then {id}"
            );
        }
        Ok(dups)
    }
}

async fn wait_deliveries(receiver: &Receiver, more_than: usize, what: &str) {
    pgcdc_tests::wait_until_msg(Duration::from_secs(60), what, || {
        let n = receiver.requests().len();
        async move { n > more_than }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_leader_mid_load_loses_nothing_with_two_processes() -> anyhow::Result<()> {
    kill9_of_the_leader_mid_load(2).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_leader_mid_load_loses_nothing_with_three_processes() -> anyhow::Result<()> {
    kill9_of_the_leader_mid_load(3).await
}

/// `n` processes; the leader is killed three times, each time replaced by a new
/// standby so that `n` keep running.
async fn kill9_of_the_leader_mid_load(n: usize) -> anyhow::Result<()> {
    let s = setup().await?;
    let mut procs = Vec::new();
    // Each process reads its config file when it starts: they stay until the end.
    let mut cfgs = Vec::new();
    for _ in 0..n {
        let (p, c) = s.spawn(&s.state_url)?;
        procs.push(p);
        cfgs.push(c);
    }
    let cfg = &cfgs[0];
    let (mut lead, mut epoch) = wait_leader(cfg, &mut procs, 0, Duration::from_secs(60)).await?;
    pgcdc_tests::wait_streaming(&s.pg, &mut procs[lead]).await?;
    let loader = Loader::start(SocketAddr::of(&s.pg), "load", ROWS, PER_TXN, PACE);
    let kills = 3;
    let mut takeovers = Vec::new();
    for round in 1..=kills {
        wait_deliveries(
            &s.receiver,
            s.receiver.requests().len(),
            "the leader delivers",
        )
        .await;
        ensure!(
            loader.progress() < ROWS,
            "the load ended before kill {round}"
        );
        procs[lead].kill9()?;
        let killed_at = Instant::now();
        ensure!(procs[lead]
            .wait_exit(Duration::from_secs(10))
            .await
            .is_some());
        // Keep n: a new standby joins for each one killed.
        let (p, c) = s.spawn(&s.state_url)?;
        procs[lead] = p;
        cfgs.push(c);
        let (next, next_epoch) =
            wait_leader(&cfgs[0], &mut procs, epoch, Duration::from_secs(30)).await?;
        takeovers.push(killed_at.elapsed());
        let before = s.receiver.requests().len();
        wait_deliveries(&s.receiver, before, "the new leader delivers").await;
        (lead, epoch) = (next, next_epoch);
    }
    loader.finish().await?;
    pgcdc_tests::wait_until_msg(Duration::from_secs(120), "every row delivered", || {
        let n = deliveries(&s.receiver).map(|d| d.keys.len()).unwrap_or(0);
        async move { n as u64 >= ROWS }
    })
    .await;
    let dups = deliveries(&s.receiver)?.check(ROWS, kills * RUNNER_BATCH)?;
    for p in procs.iter_mut() {
        ensure!(!p.has_exited(), "a standby exited: {}", p.stderr_tail(20));
    }
    println!("{n} processes, kill -9 of the leader x{kills}: takeovers {takeovers:?}, {dups} ids re-sent");
    Ok(())
}

/// Store state that a fenced process must leave as it is. (Not the confirmed LSN:
/// the new leader moves it on an idle stream, with the server's keepalives.)
#[derive(Debug, PartialEq)]
struct Snapshot {
    head: i64,
    cursors: Vec<(String, i64)>,
    audit_rows: usize,
    epoch: i64,
}

async fn snapshot(cfg: &ConfigFile) -> anyhow::Result<Snapshot> {
    let url: pgcdc::replication::SourceUrl = config_value(cfg, "state", "url")?.parse()?;
    let (_, epoch) = leader(cfg).await?.context("no leader")?;
    tokio::task::spawn_blocking(move || {
        let store = pgcdc::journal::Store::postgres(url, "pgcdc");
        let j = store.open(pgcdc::journal::Access::Existing)?;
        let head = j.head()?;
        Ok(Snapshot {
            head: head.pos,
            cursors: j.cursors()?.into_iter().map(|c| (c.sink, c.pos)).collect(),
            audit_rows: j
                .audit_by_sink("hook", "2000-01-01T00:00:00Z", 1_000_000)?
                .len(),
            epoch,
        })
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_is_taken_over_and_writes_nothing_when_it_wakes() -> anyhow::Result<()> {
    let s = setup().await?;
    // Sessions named by the operator: the takeover can end only the old leader's
    // lock session, so its store sessions live on and the fence alone must stop
    // its writes.
    let state_url = format!("{}&application_name=pgcdc-ha-test", s.state_url);
    let (a, cfg) = s.spawn(&state_url)?;
    let a_admin = admin_base(&cfg)?;
    let mut procs = vec![a];
    let (first, epoch) = wait_leader(&cfg, &mut procs, 0, Duration::from_secs(60)).await?;
    pgcdc_tests::wait_streaming(&s.pg, &mut procs[first]).await?;
    let (b, b_cfg) = s.spawn(&state_url)?;
    let b_admin = admin_base(&b_cfg)?;
    procs.push(b);
    let loader = Loader::start(SocketAddr::of(&s.pg), "load", ROWS / 4, PER_TXN, PACE);
    wait_deliveries(&s.receiver, 100, "the leader delivers").await;
    // Slow answers: the leader is inside a request when it is paused.
    s.receiver
        .set_mode(Mode::Delay(Duration::from_millis(1500)));
    let n = s.receiver.requests().len();
    wait_deliveries(&s.receiver, n, "a slow request in flight").await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(procs[first].pid())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let stopped_at = Instant::now();
    s.receiver.set_mode(Mode::Ok);

    // The standby takes over within lease_timeout (3 s) plus a few seconds.
    let mut standby = vec![procs.remove(1)];
    let (_, new_epoch) = wait_leader(&cfg, &mut standby, epoch, Duration::from_secs(20)).await?;
    let takeover = stopped_at.elapsed();
    ensure!(
        takeover < Duration::from_secs(3 + 5),
        "takeover after SIGSTOP took {takeover:?}"
    );
    loader.finish().await?;
    pgcdc_tests::wait_until_msg(Duration::from_secs(120), "every row delivered", || {
        let n = deliveries(&s.receiver).map(|d| d.keys.len()).unwrap_or(0);
        async move { n as u64 >= ROWS / 4 }
    })
    .await;
    // Caught up: the new leader's cursor is at the head.
    pgcdc_tests::wait_until_msg(Duration::from_secs(60), "the cursor at the head", || {
        let cfg = &cfg;
        async move {
            snapshot(cfg)
                .await
                .is_ok_and(|s| s.cursors.iter().all(|(_, c)| *c == s.head))
        }
    })
    .await;
    let before = snapshot(&cfg).await?;

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
    // It was inside a delivery: finishing it, it tried to record it, and the fence
    // refused (the error says nothing was written).
    pgcdc_tests::wait_until_msg(
        Duration::from_secs(30),
        "its refused write in the log",
        || {
            let log = old.stderr();
            async move { log.contains("nothing was written") }
        },
    )
    .await;
    let after = snapshot(&cfg).await?;
    ensure!(
        before == after,
        "the resumed old leader changed the store: before {before:?}, after {after:?}"
    );
    ensure!(after.epoch == new_epoch, "the lease moved again: {after:?}");
    ensure!(
        !old.has_exited(),
        "it rejoins as a standby: {}",
        old.stderr_tail(20)
    );
    deliveries(&s.receiver)?.check(ROWS / 4, RUNNER_BATCH)?;

    // Each process shows its role and the current leader; the standby is ready.
    pgcdc_tests::wait_until_msg(
        Duration::from_secs(30),
        "the old leader ready as a standby",
        || {
            let url = format!("{a_admin}/readyz");
            async move { get(&url).await.0 == 200 }
        },
    )
    .await;
    for (base, role, leader) in [(&a_admin, "standby", 0), (&b_admin, "leader", 1)] {
        ensure!(
            get(&format!("{base}/healthz")).await.0 == 200,
            "{base}/healthz"
        );
        let (code, body) = get(&format!("{base}/api/status")).await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        ensure!(
            code == 200
                && status["ha"]["role"] == role
                && status["ha"]["leader"]["epoch"] == new_epoch,
            "{base}/api/status: {code} {body}"
        );
        let (_, metrics) = get(&format!("{base}/metrics")).await;
        ensure!(
            metrics.contains(&format!("pgcdc_leader {leader}")),
            "{base}/metrics lacks pgcdc_leader {leader}"
        );
    }
    let cli = e2e_fixture::status_json(&cfg).await?;
    ensure!(
        cli["ha"]["leader"]["epoch"] == new_epoch
            && holder_pid(cli["ha"]["leader"]["holder_id"].as_str().unwrap_or(""))
                == Some(standby[0].pid()),
        "pgcdc status names the leader: {}",
        cli["ha"]
    );
    println!("SIGSTOP: takeover after {takeover:?}");
    Ok(())
}
