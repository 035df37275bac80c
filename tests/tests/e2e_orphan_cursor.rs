//! End to end: the cursor of a sink removed from the config pins the journal
//! (pruning keeps everything after the lowest cursor). `status` shows it with
//! what it holds back, `run` warns about it, and `pgcdc checkpoint drop` /
//! `DELETE /api/sinks/{sink}/checkpoint` remove it (refused while the sink is
//! configured), after which the journal prunes.

mod e2e_fixture;

use std::time::Duration;

use anyhow::ensure;
use e2e_fixture::{pgcdc_output, start_streaming, status_json, stderr_with};
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{free_port, state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::Value;

const TOKEN: &str = "orphan-test-token-0123456789";

fn config(
    pg: &PgCluster,
    state: &std::path::Path,
    port: u16,
    gone: Option<&str>,
    max_bytes: u64,
) -> String {
    let gone = gone.map_or(String::new(), |url| {
        format!(
            "[[sink]]\nname = \"gone\"\ntype = \"http\"\nurl = \"{url}\"\n\
             retry = {{ initial_backoff_ms = 100, max_backoff_ms = 300 }}\n"
        )
    });
    format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]
[state]
dir = "{state}"
[journal]
retention = "0s"
max_bytes = {max_bytes}
[admin]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
[[sink]]
name = "out"
type = "stdout"
{gone}"#,
        url = pg.url(),
        state = state.display(),
    )
}

fn orphans(status: &Value) -> Vec<Value> {
    status["orphaned_cursors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_an_orphaned_cursor_lets_the_journal_prune() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(503));
    let state = state_dir()?;
    let port = free_port()?;

    // Two sinks; "gone" cannot deliver, so its cursor stays at the start. The
    // journal has room for the 200 rows here (the reader checks the limit between
    // messages, so a tight one would pause it inside their transaction); the next
    // run's limit is below what they take.
    let with_gone = ConfigFile::new(&config(
        &pg,
        state.path(),
        port,
        Some(&rx.url()),
        10_000_000,
    ))?;
    let mut p = start_streaming(&pg, &with_gone).await?;
    // 1 KB of hex per row that packing cannot shrink (alike rows would be
    // journaled in packed blocks a fraction of their size).
    pg.batch(
        "INSERT INTO items SELECT g, (SELECT string_agg(md5(g || '.' || i), '') \
         FROM generate_series(1, 32) i) FROM generate_series(1, 200) g",
    )
    .await?;
    let lines = p.collect_lines(200, Duration::from_secs(60)).await;
    ensure!(lines.len() == 200, "stdout got {} lines", lines.len());
    // A configured sink is never an orphan, and its cursor cannot be dropped.
    let (code, _, err) = pgcdc_output(&[
        "checkpoint",
        "drop",
        "--config",
        &with_gone.arg(),
        "--sink",
        "gone",
    ])
    .await?;
    ensure!(code == 2 && err.contains("is configured"), "{code}: {err}");
    let s = status_json(&with_gone).await?;
    ensure!(orphans(&s).is_empty(), "{s}");
    p.terminate()?;
    ensure!(
        p.wait_exit(Duration::from_secs(30)).await.is_some(),
        "pgcdc did not stop"
    );

    // The sink is removed from the config: its cursor remains and pins the journal.
    let without = ConfigFile::new(&config(&pg, state.path(), port, None, 200_000))?;
    let mut p = start_streaming(&pg, &without).await?;
    let log = stderr_with(&p, &["no longer configured", "gone"]).await;
    ensure!(
        log.contains("pgcdc checkpoint drop --sink gone"),
        "run must warn about the orphaned cursor: {log}"
    );
    // The journal is past max_bytes: the reader pauses until pruning makes room, and
    // it prunes at every wake-up (each second), but never past the orphaned cursor.
    pg.batch("INSERT INTO items SELECT g, 'later' FROM generate_series(201, 210) g")
        .await?;
    wait_until_msg(Duration::from_secs(30), "the reader pauses", || async {
        status_json(&without)
            .await
            .is_ok_and(|s| s["journal"]["reader_paused"] == true)
    })
    .await;
    let s = status_json(&without).await?;
    let o = orphans(&s);
    ensure!(
        o.len() == 1 && o[0]["sink"] == "gone" && o[0]["cursor"] == 0,
        "status must list the orphaned cursor: {s}"
    );
    ensure!(
        o[0]["held_events"].as_i64().is_some_and(|n| n >= 200),
        "it holds back what every configured sink has passed: {s}"
    );
    let head = s["journal"]["head"].as_i64();
    ensure!(
        p.next_line(Duration::from_secs(3)).await.is_none(),
        "nothing new may be journaled while the orphan pins the journal"
    );
    let s = status_json(&without).await?;
    ensure!(s["journal"]["head"].as_i64() == head, "{s}");
    ensure!(orphans(&s).len() == 1, "{s}");
    let (code, out, _) = pgcdc_output(&["status", "--config", &without.arg()]).await?;
    ensure!(
        code == 0 && out.contains("orphaned cursor gone"),
        "status text: {out}"
    );

    // The admin API needs the token, and refuses a configured sink.
    let http = reqwest::Client::new();
    let url = |sink: &str| format!("http://127.0.0.1:{port}/api/sinks/{sink}/checkpoint");
    let r = http.delete(url("gone")).send().await?;
    ensure!(r.status() == 401, "no token: {}", r.status());
    let r = http.delete(url("out")).bearer_auth(TOKEN).send().await?;
    ensure!(r.status() == 409, "configured sink: {}", r.status());
    let r = http.delete(url("gone")).bearer_auth(TOKEN).send().await?;
    ensure!(
        r.status() == 200,
        "drop: {} {}",
        r.status(),
        r.text().await?
    );
    let r = http.delete(url("gone")).bearer_auth(TOKEN).send().await?;
    ensure!(r.status() == 404, "dropped twice: {}", r.status());

    // Now the journal prunes, the reader resumes and the later rows arrive.
    let later = p.collect_lines(10, Duration::from_secs(60)).await;
    ensure!(
        later.len() == 10,
        "after the drop the later rows must arrive, got {}: {}",
        later.len(),
        p.stderr_tail(20)
    );
    let s = status_json(&without).await?;
    ensure!(
        orphans(&s).is_empty() && s["journal"]["reader_paused"] == false,
        "{s}"
    );
    ensure!(!p.has_exited(), "{}", p.stderr_tail(20));
    Ok(())
}
