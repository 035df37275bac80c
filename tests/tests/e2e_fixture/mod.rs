//! Fixture shared by the `e2e_*` tests: config text, starting pgcdc and
//! waiting until it streams, `pgcdc status --json`, journal inspection, a
//! background loader that survives Postgres restarts, and stdout bookkeeping.

// Each e2e_* test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use pgcdc_tests::{pgcdc_bin, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

pub mod view;

/// Schema of the state tables when a test keeps its state in Postgres.
pub const PG_STATE_SCHEMA: &str = "pgcdc_state";

/// State dirs whose state lives in Postgres instead, with the database's URL: the
/// journal helpers below open that store for them.
static PG_STATE: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// Keeps the state of config `text` in the Postgres database at `url` (schema
/// [`PG_STATE_SCHEMA`]) instead of its `[state] dir`: adds `url` and `schema` to
/// its `[state]` table. The journal helpers follow (by `state`).
pub fn with_pg_state(text: &str, url: &str, state: &Path) -> String {
    if let Ok(mut dirs) = PG_STATE.lock() {
        dirs.push((state.to_path_buf(), url.to_string()));
    }
    text.replacen(
        "[state]\n",
        &format!("[state]\nurl = \"{url}\"\nschema = \"{PG_STATE_SCHEMA}\"\n"),
        1,
    )
}

/// The store of the state dir `state` (Postgres when [`with_pg_state`] moved it).
pub fn store(state: &Path) -> anyhow::Result<pgcdc::journal::Store> {
    let url = PG_STATE.lock().ok().and_then(|dirs| {
        dirs.iter()
            .find(|(d, _)| d == state)
            .map(|(_, u)| u.clone())
    });
    Ok(match url {
        Some(url) => pgcdc::journal::Store::postgres(url.parse()?, PG_STATE_SCHEMA),
        None => pgcdc::journal::Store::sqlite(state),
    })
}

/// Config text with one stdout sink named `out` (plus `extra` appended verbatim);
/// the admin API on an ephemeral port, since tests run in parallel. With
/// `PGCDC_TEST_STATE=postgres` the state goes to the source database (see
/// [`with_pg_state`]).
pub fn config_toml(url: &str, tables: &[&str], state: &Path, extra: &str) -> String {
    let text = config_toml_sqlite(url, tables, state, extra);
    if std::env::var("PGCDC_TEST_STATE").is_ok_and(|v| v == "postgres") {
        return with_pg_state(&text, url, state);
    }
    text
}

fn config_toml_sqlite(url: &str, tables: &[&str], state: &Path, extra: &str) -> String {
    let tables = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[source]\nurl = \"{url}\"\ntables = [{tables}]\n\n[state]\ndir = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stdout\"\n{extra}",
        state.display()
    )
}

/// Spawns `pgcdc run --config CFG`.
pub fn spawn_run(cfg: &ConfigFile) -> anyhow::Result<Pgcdc> {
    Ok(Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?)
}

pub use pgcdc_tests::wait_streaming;

/// Starts pgcdc and waits until it streams.
pub async fn start_streaming(pg: &PgCluster, cfg: &ConfigFile) -> anyhow::Result<Pgcdc> {
    let mut p = spawn_run(cfg)?;
    wait_streaming(pg, &mut p).await?;
    Ok(p)
}

/// pgcdc's stderr once it contains every word (case-insensitive), or as it is
/// after 10 s: the stderr reader may lag behind the process's exit.
pub async fn stderr_with(p: &Pgcdc, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = p.stderr();
        let lower = log.to_lowercase();
        if words.iter().all(|w| lower.contains(&w.to_lowercase())) || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a pgcdc command to completion: (exit code, stdout, stderr).
pub async fn pgcdc_output(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    run_output(&pgcdc_bin(), args).await
}

/// Runs any program to completion with a 60 s limit: (exit code, stdout, stderr).
pub async fn run_output(bin: &Path, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    run_output_env(bin, args, &[]).await
}

/// [`run_output`] with extra environment variables.
pub async fn run_output_env(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{} {args:?} did not finish in 60 s", bin.display()))??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `pgcdc status --config CFG --json`, parsed.
pub async fn status_json(cfg: &ConfigFile) -> anyhow::Result<Value> {
    let (code, out, err) = pgcdc_output(&["status", "--config", &cfg.arg(), "--json"]).await?;
    ensure!(code == 0, "pgcdc status exited {code}: {err}");
    serde_json::from_str(&out).with_context(|| format!("status is not JSON: {out}"))
}

/// Parses `X/Y` (Postgres LSN text).
pub fn parse_lsn(s: &str) -> anyhow::Result<u64> {
    let (hi, lo) = s
        .split_once('/')
        .with_context(|| format!("not an LSN: {s}"))?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

/// `pg_current_wal_lsn()` as a number.
pub async fn current_wal_lsn(pg: &PgCluster) -> anyhow::Result<u64> {
    let s: String = pg.query_scalar("SELECT pg_current_wal_lsn()::text").await?;
    parse_lsn(&s)
}

/// The slot's `confirmed_flush_lsn` as a number.
pub async fn slot_confirmed(pg: &PgCluster, slot: &str) -> anyhow::Result<u64> {
    let s: Option<String> = pg
        .client()
        .await?
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .try_get(0)?;
    parse_lsn(&s.context("slot has no confirmed_flush_lsn")?)
}

/// What the journal holds.
#[derive(Debug, PartialEq, Eq)]
pub struct JournalStats {
    /// Events in the journal.
    pub events: i64,
    /// Distinct event ids among them.
    pub distinct_ids: i64,
    /// Distinct (commit_lsn, seq) positions.
    pub distinct_positions: i64,
    /// Distinct `table:key` of insert events.
    pub distinct_insert_keys: i64,
}

/// Opens a session on the journal in `state` (pgcdc may be running).
pub fn journal(state: &Path) -> anyhow::Result<Box<dyn pgcdc::journal::StateStore>> {
    store(state)?
        .open(pgcdc::journal::Access::Existing)
        .with_context(|| format!("open the journal in {}", state.display()))
}

/// Every event the journal holds, in journal order.
pub fn journal_events(state: &Path) -> anyhow::Result<Vec<pgcdc::journal::StoredEvent>> {
    let journal = journal(state)?;
    let mut out = Vec::new();
    loop {
        let after = out
            .last()
            .map_or(0, |e: &pgcdc::journal::StoredEvent| e.pos);
        let page = journal.read_after(after, 10_000)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// Counts what the journal in `state` holds (through pgcdc's store API).
pub fn journal_stats(state: &Path) -> anyhow::Result<JournalStats> {
    let events = journal_events(state)?;
    let ids: HashSet<String> = events.iter().map(|e| e.event.id.to_string()).collect();
    let positions: HashSet<(u64, u32)> = events.iter().map(|e| (e.event.lsn.0, e.seq)).collect();
    let insert_keys: HashSet<String> = events
        .iter()
        .filter(|e| e.event.op == pgcdc_schema::Op::Insert)
        .filter_map(|e| {
            let key = serde_json::to_string(e.event.key.as_ref()?).ok()?;
            Some(format!("{}:{key}", e.table))
        })
        .collect();
    Ok(JournalStats {
        events: events.len() as i64,
        distinct_ids: ids.len() as i64,
        distinct_positions: positions.len() as i64,
        distinct_insert_keys: insert_keys.len() as i64,
    })
}

/// A socket connection config for a cluster, usable from a task that does not
/// own the `PgCluster` (which the test restarts meanwhile).
#[derive(Clone, Debug)]
pub struct SocketAddr {
    dir: PathBuf,
    port: u16,
}

impl SocketAddr {
    /// The cluster's unix socket.
    pub fn of(pg: &PgCluster) -> SocketAddr {
        SocketAddr {
            dir: pg.socket_dir().to_path_buf(),
            port: pg.port(),
        }
    }

    /// A superuser client on `postgres`.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// A background writer of `rows` rows into `table(id int8 primary key, v text)`
/// in transactions of `per_txn` rows. Idempotent (`ON CONFLICT DO NOTHING`) and
/// retrying, so it completes through Postgres restarts with each row inserted once.
pub struct Loader {
    /// Rows known committed so far.
    pub done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Rows in total.
    pub rows: u64,
}

/// `CREATE TABLE name (id int8 PRIMARY KEY, v text)`.
pub async fn create_load_table(pg: &PgCluster, name: &str) -> anyhow::Result<()> {
    pg.batch(&format!(
        "CREATE TABLE {name} (id int8 PRIMARY KEY, v text NOT NULL)"
    ))
    .await?;
    Ok(())
}

impl Loader {
    /// Starts loading ids `1..=rows`, pausing `pace` between transactions so
    /// that faults injected by the test land in the middle of the load.
    pub fn start(addr: SocketAddr, table: &str, rows: u64, per_txn: u64, pace: Duration) -> Loader {
        let done = Arc::new(AtomicU64::new(0));
        let progress = done.clone();
        let table = table.to_owned();
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut client: Option<tokio_postgres::Client> = None;
            let mut from = 1u64;
            while from <= rows {
                let to = (from + per_txn - 1).min(rows);
                let sql = format!(
                    "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series({from}, {to}) g \
                     ON CONFLICT DO NOTHING"
                );
                let result = match &client {
                    Some(c) => c.batch_execute(&sql).await.map_err(anyhow::Error::from),
                    None => match addr.connect().await {
                        Ok(c) => {
                            client = Some(c);
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        progress.store(to, Ordering::SeqCst);
                        from = to + 1;
                        tokio::time::sleep(pace).await;
                    }
                    Err(e) => {
                        // Postgres is restarting: reconnect and retry the same batch.
                        client = None;
                        if Instant::now() > deadline {
                            bail!("loader gave up at row {from}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Ok(())
        });
        Loader { done, task, rows }
    }

    /// Rows committed so far.
    pub fn progress(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rows are committed.
    pub async fn wait_for(&self, n: u64) {
        let done = self.done.clone();
        wait_until_msg(
            Duration::from_secs(300),
            &format!("loader reached {n} rows"),
            || {
                let d = done.load(Ordering::SeqCst);
                async move { d >= n }
            },
        )
        .await;
    }

    /// Waits for the loader to finish.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.task.await.context("loader task panicked")?
    }
}

/// Native events seen on stdout, across one or more pgcdc runs.
#[derive(Default, Debug)]
pub struct Seen {
    /// Event ids seen (with how often).
    pub ids: HashMap<String, u32>,
    /// Insert keys (`key.id`) seen.
    pub insert_keys: HashSet<i64>,
    /// Lines read.
    pub lines: u64,
}

impl Seen {
    /// Records one stdout line; errors if it is not a native event.
    pub fn record(&mut self, line: &str) -> anyhow::Result<()> {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("stdout line is not JSON: {line}"))?;
        let id = v["id"]
            .as_str()
            .with_context(|| format!("event without id: {line}"))?;
        *self.ids.entry(id.to_owned()).or_default() += 1;
        if v["op"] == "insert" {
            let key = v["key"]["id"]
                .as_i64()
                .with_context(|| format!("insert without key.id: {line}"))?;
            self.insert_keys.insert(key);
        }
        self.lines += 1;
        Ok(())
    }

    /// Reads and records lines until `done()` holds (checked between lines).
    pub async fn drain_while_waiting(
        &mut self,
        p: &mut Pgcdc,
        what: &str,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done() {
            ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            match p.next_line(Duration::from_millis(100)).await {
                Some(line) => self.record(&line)?,
                None if p.has_exited() => {
                    bail!(
                        "pgcdc exited while waiting for {what}; stderr:\n{}",
                        p.stderr_tail(30)
                    )
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Reads until `n` lines were recorded in total, or fails after `timeout`.
    pub async fn read_until_lines(
        &mut self,
        p: &mut Pgcdc,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.lines < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.next_line(left).await {
                Some(line) => self.record(&line)?,
                None => bail!(
                    "only {} of {n} lines; stderr:\n{}",
                    self.lines,
                    p.stderr_tail(30)
                ),
            }
        }
        Ok(())
    }

    /// Reads lines from `p` for up to `max`, recording them.
    pub async fn drain_for(&mut self, p: &mut Pgcdc, max: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + max;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match p.next_line(left).await {
                Some(line) => self.record(&line)?,
                None => return Ok(()),
            }
        }
    }

    /// Reads lines until keys `1..=rows` were all inserted, or fails after `timeout`.
    pub async fn until_all_keys(
        &mut self,
        p: &mut Pgcdc,
        rows: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while (self.insert_keys.len() as u64) < rows {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.next_line(left).await {
                Some(line) => self.record(&line)?,
                None => bail!(
                    "only {} of {rows} keys on stdout after {timeout:?} (exited: {}); stderr:\n{}",
                    self.insert_keys.len(),
                    p.has_exited(),
                    p.stderr_tail(30)
                ),
            }
        }
        Ok(())
    }

    /// Asserts every key `1..=rows` was seen.
    pub fn assert_all_keys(&self, rows: u64) -> anyhow::Result<()> {
        let missing: Vec<u64> = (1..=rows)
            .filter(|k| !self.insert_keys.contains(&(*k as i64)))
            .take(10)
            .collect();
        ensure!(
            missing.is_empty(),
            "keys never on stdout (first 10): {missing:?}"
        );
        Ok(())
    }
}

/// Asserts the journal holds each of the `rows` inserts exactly once.
pub fn assert_journal_exact(state: &Path, rows: u64) -> anyhow::Result<()> {
    let s = journal_stats(state)?;
    let rows = rows as i64;
    ensure!(
        s.events == rows && s.distinct_ids == rows && s.distinct_positions == rows,
        "journal must hold each of {rows} changes exactly once: {s:?}"
    );
    ensure!(s.distinct_insert_keys == rows, "journal keys: {s:?}");
    Ok(())
}

/// Peak resident set (VmHWM) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kib)
}
