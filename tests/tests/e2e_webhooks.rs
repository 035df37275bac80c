//! End to end: Standard Webhooks as its receivers verify it. The receiver is the
//! official verifier (PyPI `standardwebhooks`), which refuses a `webhook-timestamp`
//! more than five minutes from its clock. Postgres runs ten minutes in the past
//! (under `faketime`), so every event is a backlog older than five minutes when it
//! is delivered: each attempt must be signed with its own time, while `webhook-id`,
//! `Idempotency-Key` and the body stay the same, across a retry and a DLQ replay.
//!
//! Needs `faketime` and `python3 -m pip install standardwebhooks` (scripts/test
//! installs both); without them the test prints why and skips, except under CI
//! (env `CI` set), where it fails.

mod e2e_fixture;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use base64::Engine;
use e2e_fixture::{pgcdc_output, start_streaming};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const RECEIVER: &str = include_str!("standard_webhooks_receiver.py");
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How far in the past Postgres's clock runs.
const BEHIND_SECS: i64 = 600;

/// True when faketime and the verifier are there; prints why and returns false when
/// the test should skip; an error under CI.
fn tools_available() -> anyhow::Result<bool> {
    let faketime = std::process::Command::new("faketime")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let verifier = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if faketime && verifier {
        return Ok(true);
    }
    let msg = format!(
        "SKIPPED Standard Webhooks test: faketime {}, python standardwebhooks {} \
         (apt-get install faketime; python3 -m pip install standardwebhooks)",
        if faketime { "found" } else { "missing" },
        if verifier { "found" } else { "missing" }
    );
    if std::env::var_os("CI").is_some() {
        bail!("{msg}; under CI this is a failure");
    }
    println!("{msg}");
    eprintln!("{msg}");
    Ok(false)
}

/// A bin dir whose `postgres` runs `BEHIND_SECS` in the past; the rest link to `real`.
fn past_postgres(real: &Path) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(real)? {
        let entry = entry?;
        if entry.file_name() != "postgres" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name()))?;
        }
    }
    let script = dir.path().join("postgres");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec faketime -f \"-{BEHIND_SECS}s\" {} \"$@\"\n",
            real.join("postgres").display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// The Python receiver: its port and the JSON lines it printed.
struct PyReceiver {
    _child: tokio::process::Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl PyReceiver {
    async fn start(secret: &str, dir: &Path) -> anyhow::Result<PyReceiver> {
        let script = dir.join("receiver.py");
        std::fs::write(&script, RECEIVER)?;
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .env("WEBHOOK_SECRET", secret)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        let mut out = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .context("the receiver did not start in 20 s")??
            .unwrap_or_default();
        let port = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("receiver said {first:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        Ok(PyReceiver {
            _child: child,
            port,
            lines,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn mode(&self, mode: &str) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/control", self.port))
            .body(serde_json::json!({ "mode": mode }).to_string())
            .send()
            .await?;
        ensure!(r.status().is_success(), "control: {}", r.status());
        Ok(())
    }

    /// The requests whose body is the event of row `id`.
    fn of_row(&self, id: i64) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| {
                serde_json::from_str::<Value>(l["body"].as_str().unwrap_or("null"))
                    .is_ok_and(|b| b["new"]["id"] == id)
            })
            .cloned()
            .collect()
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The commit time in a delivered body, UNIX seconds.
fn commit_secs(line: &Value) -> anyhow::Result<i64> {
    let body: Value = serde_json::from_str(line["body"].as_str().unwrap_or("null"))?;
    let t = body["commit_time"].as_str().context("no commit_time")?;
    Ok(chrono::DateTime::parse_from_rfc3339(t)?.timestamp())
}

/// Checks what every attempt must be: verified by the library, signed at its own time.
fn signed_now(line: &Value) -> anyhow::Result<()> {
    ensure!(
        line["verified"] == true,
        "the Standard Webhooks library refused the request: {line}"
    );
    let ts = line["timestamp"].as_i64().unwrap_or_default();
    let at = line["now"].as_f64().unwrap_or_default() as i64;
    ensure!(
        (ts - at).abs() <= 5,
        "webhook-timestamp {ts} is not the attempt's time {at}"
    );
    let backlog = ts - commit_secs(line)?;
    ensure!(
        backlog > 300,
        "the event is only {backlog} s old at delivery: not a backlog past the 5 min tolerance"
    );
    ensure!(line["id"] == line["idempotency_key"], "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_backlog_and_a_dlq_replay_verify_with_the_official_library() -> anyhow::Result<()> {
    if !tools_available()? {
        return Ok(());
    }
    let real = std::env::var_os("PG_BIN").map_or_else(|| PathBuf::from(PG_BIN), PathBuf::from);
    let bin = past_postgres(&real)?;
    let pg = PgCluster::builder().bin_dir(bin.path()).start().await?;
    let db_now: i64 = pg
        .client()
        .await?
        .query_one("SELECT extract(epoch FROM now())::bigint", &[])
        .await?
        .get(0);
    ensure!(
        now_secs() - db_now > BEHIND_SECS - 60,
        "Postgres's clock is not in the past under faketime: {db_now} vs {}",
        now_secs()
    );
    pg.batch("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await?;

    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"standard webhooks test key")
    );
    let state = state_dir()?;
    let rx = PyReceiver::start(&secret, state.path()).await?;
    let extra = format!(
        "\n[[sink]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{}\"\nsigning_secret = \"{secret}\"\n\
         retry = {{ initial_backoff_ms = 100, max_backoff_ms = 500 }}\n",
        rx.url()
    );
    let cfg = ConfigFile::new(&e2e_fixture::config_toml(
        &pg.url(),
        &["public.items"],
        state.path(),
        &extra,
    ))?;
    let _p = start_streaming(&pg, &cfg).await?;

    // 1. A retry (503, Retry-After: 2): two attempts, each signed at its own time.
    rx.mode("busy_once").await?;
    pg.batch("INSERT INTO items VALUES (1, 'a')").await?;
    wait_until_msg(Duration::from_secs(60), "row 1 answered 204", || async {
        rx.of_row(1).iter().any(|l| l["answered"] == 204)
    })
    .await;
    let attempts = rx.of_row(1);
    ensure!(attempts.len() == 2, "{attempts:#?}");
    ensure!(
        attempts[0]["answered"] == 503 && attempts[1]["answered"] == 204,
        "{attempts:#?}"
    );
    for a in &attempts {
        signed_now(a)?;
    }
    ensure!(
        attempts[0]["id"] == attempts[1]["id"] && attempts[0]["body"] == attempts[1]["body"],
        "webhook-id or body changed between attempts: {attempts:#?}"
    );
    ensure!(
        attempts[1]["timestamp"].as_i64() > attempts[0]["timestamp"].as_i64(),
        "the retry carries the first attempt's timestamp: {attempts:#?}"
    );

    // 2. Dead-lettered (400), then replayed later: the replay is signed at its time.
    rx.mode("reject").await?;
    pg.batch("INSERT INTO items VALUES (2, 'b')").await?;
    wait_until_msg(Duration::from_secs(60), "row 2 answered 400", || async {
        rx.of_row(2).iter().any(|l| l["answered"] == 400)
    })
    .await;
    let rejected = rx.of_row(2)[0].clone();
    signed_now(&rejected)?;
    let list = || async {
        pgcdc_output(&[
            "dlq",
            "list",
            "--config",
            &cfg.arg(),
            "--sink",
            "hook",
            "--json",
        ])
        .await
        .ok()
        .and_then(|(_, out, _)| serde_json::from_str::<Value>(&out).ok())
        .and_then(|v| v.as_array().map(Vec::len))
    };
    wait_until_msg(Duration::from_secs(30), "row 2 in the DLQ", || async {
        list().await == Some(1)
    })
    .await;
    rx.mode("ok").await?;
    // The replay happens in a later second than the refused attempt.
    let refused_at = rejected["timestamp"].as_i64().unwrap_or_default();
    wait_until_msg(
        Duration::from_secs(5),
        "the clock passes a second",
        || async { now_secs() > refused_at + 1 },
    )
    .await;
    let (code, out, err) = pgcdc_output(&[
        "dlq",
        "replay",
        "--config",
        &cfg.arg(),
        "--sink",
        "hook",
        "--all",
    ])
    .await?;
    ensure!(code == 0, "dlq replay: {out}{err}");
    wait_until_msg(Duration::from_secs(60), "row 2 replayed, 204", || async {
        rx.of_row(2).iter().any(|l| l["answered"] == 204)
    })
    .await;
    let replayed = rx
        .of_row(2)
        .into_iter()
        .find(|l| l["answered"] == 204)
        .context("replay")?;
    signed_now(&replayed)?;
    ensure!(
        replayed["id"] == rejected["id"] && replayed["body"] == rejected["body"],
        "the replay changed webhook-id or the body: {rejected} vs {replayed}"
    );
    ensure!(
        replayed["timestamp"].as_i64().unwrap_or_default() > refused_at,
        "the replay carries the refused attempt's timestamp: {replayed}"
    );
    Ok(())
}
