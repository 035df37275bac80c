//! End to end: `journal.max_bytes`. A sink that cannot deliver holds the
//! journal; once it holds `max_bytes` the reader pauses (journal head stops,
//! status/metrics/readyz say so, the slot keeps the WAL), and it resumes
//! when the sink catches up and pruning makes room.

mod e2e_fixture;

use std::time::Duration;

use anyhow::ensure;
use e2e_fixture::{start_streaming, status_json};
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{free_port, state_dir, wait_until_msg, ConfigFile, PgCluster};

/// Journal limit: a few hundred 1 KB rows exceed it.
const MAX_BYTES: u64 = 400_000;

async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let r = reqwest::get(url).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread")]
async fn full_journal_pauses_the_reader_visibly_and_pruning_resumes_it() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(503));
    let state = state_dir()?;
    let port = free_port()?;
    let cfg = ConfigFile::new(&format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]
[state]
dir = "{state}"
[journal]
retention = "0s"
max_bytes = {MAX_BYTES}
[admin]
listen = "127.0.0.1:{port}"
[[sink]]
name = "hook"
type = "http"
url = "{rx}"
retry = {{ initial_backoff_ms = 100, max_backoff_ms = 300 }}
"#,
        url = pg.url(),
        state = state.path().display(),
        rx = rx.url()
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // 1 KB of hex per row that packing cannot shrink (alike rows would be
    // journaled in packed blocks a fraction of their size).
    pg.batch(
        "INSERT INTO items SELECT g, (SELECT string_agg(md5(g || '.' || i), '') \
         FROM generate_series(1, 32) i) FROM generate_series(1, 600) g",
    )
    .await?;
    let base = format!("http://127.0.0.1:{port}");
    wait_until_msg(Duration::from_secs(60), "the reader pauses", || async {
        status_json(&cfg)
            .await
            .is_ok_and(|s| s["journal"]["reader_paused"] == true)
    })
    .await;
    // The reader notices within its status interval (1 s).
    wait_until_msg(
        Duration::from_secs(30),
        "the paused gauge and /readyz",
        || async {
            let m = get(&format!("{base}/metrics")).await.unwrap_or_default().1;
            let (code, ready) = get(&format!("{base}/readyz")).await.unwrap_or_default();
            m.lines().any(|l| l == "pgcdc_reader_paused 1")
                && code == 503
                && ready.contains("max_bytes")
        },
    )
    .await;
    // Paused: new changes stay in Postgres' WAL, the journal head does not move.
    let head = status_json(&cfg).await?["journal"]["head"].as_i64();
    pg.batch("INSERT INTO items SELECT g, 'later' FROM generate_series(1001, 1050) g")
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = status_json(&cfg).await?;
    ensure!(
        s["journal"]["head"].as_i64() == head,
        "journal grew while paused: {s}"
    );
    ensure!(!p.has_exited(), "pgcdc exited: {}", p.stderr_tail(20));

    // The sink catches up, pruning frees the journal, the reader resumes.
    rx.set_mode(Mode::Ok);
    wait_until_msg(
        Duration::from_secs(120),
        "the later rows are delivered",
        || async { rx.requests().iter().any(|r| r.json()["new"]["id"] == 1050) },
    )
    .await;
    // Pruning runs at the journal thread's next wake-up after the last delivery
    // (a paused reader syncs every second): wait for it.
    wait_until_msg(
        Duration::from_secs(30),
        "pruning resumes the reader",
        || async {
            status_json(&cfg)
                .await
                .is_ok_and(|s| s["journal"]["reader_paused"] == false)
        },
    )
    .await;
    // `pgcdc status` reads the journal's fill from disk; the reader sees the
    // room at its next wake-up (status interval, 1 s), then sets the gauge and logs.
    wait_until_msg(
        Duration::from_secs(30),
        "the paused gauge drops and the reader logs that it resumes",
        || async {
            let m = get(&format!("{base}/metrics")).await.unwrap_or_default().1;
            m.lines().any(|l| l == "pgcdc_reader_paused 0") && p.stderr().contains("reader resumes")
        },
    )
    .await;
    Ok(())
}
