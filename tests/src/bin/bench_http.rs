//! End-to-end HTTP delivery benchmark: Postgres → pgcdc → a local receiver
//! that answers at once.
//!
//! 1. Throughput at `concurrency` 1, 8 and 32: one transaction inserts N rows;
//!    rate = N / (last arrival − first arrival).
//! 2. Latency at a steady 1,000 events/s: 10 single-row transactions every
//!    10 ms for 15 s; latency = arrival time − the event's `commit_time`.
//!
//! Run: `scripts/bench-http` (builds pgcdc and this binary in release mode).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{state_dir, wait_streaming, ConfigFile, PgCluster, Pgcdc};

const ROWS: usize = 20_000;

fn config(pg: &PgCluster, state: &std::path::Path, url: &str, concurrency: usize) -> String {
    format!(
        r#"
[source]
url = "{}"
tables = ["public.permits"]
[state]
dir = "{}"
[[sink]]
name = "api"
type = "http"
tables = ["public.permits"]
url = "{url}"
concurrency = {concurrency}
"#,
        pg.url(),
        state.display()
    )
}

async fn wait_for(rx: &Receiver, n: usize, p: &Pgcdc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    // Counted, not copied: copying every recorded request 50 times a second
    // took the CPU the receiver and pgcdc share (2 cores) and slowed both.
    while rx.api_request_count() < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} requests arrived:\n{}",
                rx.api_request_count(),
                p.stderr_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn throughput(concurrency: usize) -> anyhow::Result<f64> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text, applicant text, fee numeric, updated_at timestamptz DEFAULT now())")
        .await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg, state.path(), &rx.url(), concurrency))?;
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
    wait_streaming(&pg, &mut p).await?;
    pg.batch(&format!(
        "INSERT INTO permits (id, status, applicant, fee) \
         SELECT g, 'pending', 'applicant ' || g, 125.50 FROM generate_series(1, {ROWS}) g"
    ))
    .await?;
    wait_for(&rx, ROWS, &p).await?;
    let reqs = rx.api_requests();
    let (first, last) = (reqs[0].at, reqs[ROWS - 1].at);
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok((ROWS - 1) as f64 / last.duration_since(first).as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn latency() -> anyhow::Result<(f64, f64, f64, usize)> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg, state.path(), &rx.url(), 32))?;
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
    wait_streaming(&pg, &mut p).await?;
    let client = pg.client().await?;
    let stmt = client
        .prepare("INSERT INTO permits VALUES ($1, 'approved')")
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut id: i32 = 0;
    while started.elapsed() < Duration::from_secs(15) {
        tick.tick().await;
        for _ in 0..10 {
            id += 1;
            client.execute(&stmt, &[&id]).await?;
        }
    }
    let sent = id as usize;
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    wait_for(&rx, sent, &p).await?;
    // Receiver times are Instants; map them to wall-clock via one reference point.
    let now_instant = Instant::now();
    let now_wall = chrono::Utc::now();
    let mut lat: Vec<f64> = Vec::with_capacity(sent);
    for r in rx.api_requests() {
        let body = r.json();
        let commit = body["commit_time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .context("commit_time in body")?;
        let arrival = now_wall - chrono::Duration::from_std(now_instant.duration_since(r.at))?;
        lat.push(
            (arrival - commit.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0,
        );
    }
    lat.sort_by(f64::total_cmp);
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99), offered, sent))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("pgcdc HTTP delivery benchmark ({ROWS} events per throughput run)");
    for c in [1, 8, 32] {
        let rate = throughput(c).await?;
        println!("throughput  concurrency {c:>2}: {rate:>8.0} events/s");
    }
    let (p50, p99, offered, n) = latency().await?;
    println!("latency     commit -> 2xx at {offered:.0} events/s ({n} events): p50 {p50:.1} ms, p99 {p99:.1} ms");
    Ok(())
}
