//! A sink's view of a table rebuilt from native events (insert/update/read set
//! the row, delete removes it), compared with the table itself; and a writer
//! that updates, deletes and inserts rows while a test runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use pgcdc_tests::{PgCluster, Pgcdc};
use serde_json::Value;

/// Rows (`id` → `v`) of `table` as the stdout sink's events describe them.
#[derive(Default, Debug)]
pub struct View {
    /// id → v.
    pub rows: BTreeMap<i64, i64>,
    /// Read events seen.
    pub reads: u64,
    /// Whether the fence row's insert was seen.
    pub fenced: bool,
    table: String,
}

impl View {
    /// A view of `public.<table>`.
    pub fn of(table: &str) -> View {
        View {
            table: table.to_string(),
            ..View::default()
        }
    }

    /// Applies one stdout line.
    pub fn apply(&mut self, line: &str) -> anyhow::Result<()> {
        let e: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        if e["table"] == "fence" {
            self.fenced = true;
            return Ok(());
        }
        if e["table"] != self.table.as_str() {
            return Ok(());
        }
        let id = e["key"]["id"]
            .as_i64()
            .with_context(|| format!("no key: {line}"))?;
        match e["op"].as_str() {
            Some("insert" | "update" | "read") => {
                if e["op"] == "read" {
                    self.reads += 1;
                }
                let v = e["new"]["v"]
                    .as_i64()
                    .with_context(|| format!("no v: {line}"))?;
                self.rows.insert(id, v);
            }
            Some("delete") => {
                self.rows.remove(&id);
            }
            _ => bail!("unexpected event: {line}"),
        }
        Ok(())
    }

    /// Reads stdout until `done(self)` holds; fails after `timeout` or if pgcdc exits.
    pub async fn drain_until(
        &mut self,
        p: &mut Pgcdc,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&View) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            ensure!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                p.stderr_tail(30)
            );
            match p.next_line(Duration::from_millis(100)).await {
                Some(line) => self.apply(&line)?,
                None if p.has_exited() => bail!(
                    "pgcdc exited while waiting for {what}; stderr:\n{}",
                    p.stderr_tail(30)
                ),
                None => {}
            }
        }
        Ok(())
    }

    /// Writes a row into `public.fence` and reads until its event arrives: every
    /// change committed before it has then been seen.
    pub async fn fence(&mut self, pg: &PgCluster, p: &mut Pgcdc) -> anyhow::Result<()> {
        self.fenced = false;
        pg.batch("INSERT INTO fence DEFAULT VALUES").await?;
        self.drain_until(p, Duration::from_secs(120), "the fence row", |v| v.fenced)
            .await
    }

    /// Fails unless the view equals the table's rows.
    pub async fn assert_equals_table(&self, pg: &PgCluster) -> anyhow::Result<()> {
        let client = pg.client().await?;
        let rows = client
            .query(
                &format!("SELECT id::int8, v::int8 FROM {} ORDER BY id", self.table),
                &[],
            )
            .await?;
        let table: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let missing: Vec<_> = table
            .iter()
            .filter(|(k, _)| !self.rows.contains_key(k))
            .take(5)
            .collect();
        let extra: Vec<_> = self
            .rows
            .iter()
            .filter(|(k, _)| !table.contains_key(k))
            .take(5)
            .collect();
        let stale: Vec<_> = table
            .iter()
            .filter(|(k, v)| self.rows.get(k).is_some_and(|s| s != *v))
            .take(5)
            .collect();
        ensure!(
            missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "sink view != table ({} vs {} rows): missing {missing:?}, extra {extra:?}, stale (table) {stale:?}",
            self.rows.len(),
            table.len()
        );
        Ok(())
    }
}

/// `CREATE TABLE <table> (id int PRIMARY KEY, v int)` with `rows` rows, and the fence table.
pub async fn create_tables(pg: &PgCluster, table: &str, rows: i64) -> anyhow::Result<()> {
    pg.batch(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {rows}) g;
         CREATE TABLE fence (id serial PRIMARY KEY);"
    ))
    .await?;
    Ok(())
}

/// Updates, deletes and re-inserts random rows of `table` (ids 1..=max_id) until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    /// Statements committed.
    pub done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Writer {
    /// Starts writing.
    pub async fn start(pg: &PgCluster, table: &str, max_id: i64) -> anyhow::Result<Writer> {
        let client = pg.client().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d, table) = (stop.clone(), done.clone(), table.to_string());
        let task = tokio::spawn(async move {
            let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
            while !s.load(Ordering::SeqCst) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = ((seed >> 33) % max_id as u64) as i32 + 1;
                let sql = match (seed >> 20) % 10 {
                    0..=5 => format!("UPDATE {table} SET v = v + 1 WHERE id = $1"),
                    6 | 7 => format!("DELETE FROM {table} WHERE id = $1"),
                    _ => format!("INSERT INTO {table} VALUES ($1, 100) ON CONFLICT (id) DO UPDATE SET v = {table}.v + 100"),
                };
                client.execute(&sql, &[&id]).await?;
                d.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        Ok(Writer { stop, done, task })
    }

    /// Stops and waits for the writer; returns the statements committed.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("writer panicked")??;
        Ok(self.done.load(Ordering::SeqCst))
    }
}
