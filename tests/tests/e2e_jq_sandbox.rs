//! End to end: jq programs that never end, recurse without end or yield
//! without end cannot take pgcdc down. Each stops the sink with the event id
//! and the program's config key (the path any jq runtime error takes), the
//! cursor stays before the event, `/healthz` answers while jq runs, SIGTERM
//! is honoured whatever jq does, and memory stays bounded.

mod e2e_fixture;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e_fixture::{pgcdc_output, start_streaming, stderr_with};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{free_port, state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

/// A stdout sink `out` on `public.items` with `sink` lines (a jq program),
/// `[jq]` with `jq` lines (none: the defaults), and the admin API on `admin_port`.
fn config(url: &str, state: &Path, admin_port: u16, sink: &str, jq: &str) -> String {
    let jq = if jq.is_empty() {
        String::new()
    } else {
        format!("[jq]\n{jq}\n")
    };
    format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:{admin_port}"

{jq}
[[sink]]
name = "out"
type = "stdout"
tables = ["public.items"]
{sink}
"#,
        state = state.display()
    )
}

/// The id of the journaled insert of `items` row `id`, once it is journaled.
async fn journaled_id(state: &Path, id: i64) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = e2e_fixture::journal_events(state).map(|events| {
            events
                .into_iter()
                .find(|e| {
                    e.event
                        .key
                        .as_ref()
                        .is_some_and(|k| k.get("id").and_then(|v| v.as_i64()) == Some(id))
                })
                .map(|e| e.event.id.to_string())
        });
        if let Ok(Some(event)) = found {
            return Ok(event);
        }
        ensure!(
            Instant::now() < deadline,
            "row {id} not journaled in 30 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET /healthz with a 2 s limit: whether it answered 200.
async fn healthy(port: u16) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build();
    let Ok(client) = client else { return false };
    match client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16() == 200,
        Err(_) => false,
    }
}

/// Processes whose parent is `pid`, with their command lines.
fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let status = std::fs::read_to_string(format!("/proc/{child}/status")).ok()?;
            let ppid: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (ppid == pid).then_some((child, cmdline))
        })
        .collect()
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/PID/status` value in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(s) => s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

/// Waits for pgcdc to stop on its own with an error (not a crash) whose
/// stderr names every word; returns the stderr.
async fn stops_with(p: &mut Pgcdc, within: Duration, words: &[&str]) -> anyhow::Result<String> {
    let status = p
        .wait_exit(within)
        .await
        .with_context(|| format!("pgcdc still runs after {within:?}:\n{}", p.stderr_tail(20)))?;
    let log = stderr_with(p, words).await;
    ensure!(
        status.code() == Some(2),
        "pgcdc must stop with an error (exit 2), not crash: {status:?}\n{}",
        p.stderr_tail(20)
    );
    for w in words {
        ensure!(log.contains(w), "stderr lacks {w:?}:\n{log}");
    }
    Ok(log)
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_transform_stops_the_sink_with_the_event_instead_of_aborting(
) -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let state = state_dir()?;
    let port = free_port()?;
    let toml = config(
        &pg.url(),
        state.path(),
        port,
        "transform = 'def f: 1 + f; f'",
        "",
    );
    let cfg = ConfigFile::new(&toml)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    ensure!(healthy(port).await, "/healthz answers before the event");
    pg.batch("INSERT INTO items VALUES (1, 'deep')").await?;
    let event = journaled_id(state.path(), 1).await?;
    stops_with(
        &mut p,
        Duration::from_secs(60),
        &[&event, "sink[0].transform", "recursed too deeply"],
    )
    .await?;

    // The event was not lost: with a fixed transform it is delivered.
    cfg.rewrite(&config(
        &pg.url(),
        state.path(),
        port,
        "transform = '{id: .new.id}'",
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let line = p
        .next_line(Duration::from_secs(30))
        .await
        .context("the event after the fix")?;
    ensure!(line == r#"{"id":1}"#, "delivered after the fix: {line}");
    ensure!(healthy(port).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_filter_is_timed_out_while_healthz_answers_and_sigterm_is_honoured(
) -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let state = state_dir()?;
    let port = free_port()?;
    let filter = "filter = 'last(range(1e12)) > 0'";
    // First with a time limit far away: jq really runs when SIGTERM comes.
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        port,
        filter,
        "timeout_ms = 600000",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO items VALUES (1, 'forever')").await?;
    let event = journaled_id(state.path(), 1).await?;
    let pid = p.pid();
    // jq is busy on the event when the process tree burns CPU: in a jq
    // worker (the sandbox), or in pgcdc itself (without one).
    let base = cpu_ticks(pid).unwrap_or(0);
    let mut worker = None;
    wait_until_msg(Duration::from_secs(30), "jq busy on the event", || {
        worker = children(pid)
            .into_iter()
            .find(|(_, cmd)| cmd.contains("__jq-worker"))
            .map(|(w, _)| w);
        let busy = worker.and_then(cpu_ticks).unwrap_or(0) >= 50
            || cpu_ticks(pid).unwrap_or(0).saturating_sub(base) >= 50;
        async move { busy }
    })
    .await;
    for _ in 0..3 {
        ensure!(healthy(port).await, "/healthz must answer while jq runs");
    }
    let asked = Instant::now();
    p.terminate()?;
    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .context("pgcdc ignored SIGTERM while jq ran")?;
    ensure!(
        status.success() && asked.elapsed() < Duration::from_secs(5),
        "SIGTERM: {status:?} after {:?}\n{}",
        asked.elapsed(),
        p.stderr_tail(20)
    );
    let worker = worker.context("no jq worker process")?;
    wait_until_msg(
        Duration::from_secs(10),
        "the jq worker ends with pgcdc",
        || {
            let ended = gone(worker);
            async move { ended }
        },
    )
    .await;

    // Then with a short limit: the event fails after it, naming itself.
    cfg.rewrite(&config(
        &pg.url(),
        state.path(),
        port,
        filter,
        "timeout_ms = 3000",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let started = Instant::now();
    let mut answered = 0;
    while !p.has_exited() && started.elapsed() < Duration::from_secs(2) {
        ensure!(healthy(port).await, "/healthz must answer while jq runs");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(answered >= 3, "/healthz answered {answered} times");
    stops_with(
        &mut p,
        Duration::from_secs(60),
        &[
            &event,
            "sink[0].filter",
            "ran longer than 3000 ms",
            "timeout_ms",
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_generator_transform_is_cut_at_max_outputs_with_bounded_memory(
) -> anyhow::Result<()> {
    /// Far above what pgcdc needs, far below what `repeat(1)` reaches unbounded.
    const MAX_RSS_KB: u64 = 300 * 1024;
    let pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let state = state_dir()?;
    let port = free_port()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        port,
        "transform = 'repeat(1)'",
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO items VALUES (1, 'many')").await?;
    let event = journaled_id(state.path(), 1).await?;
    let pid = p.pid();
    let started = Instant::now();
    let mut hwm = 0;
    while !p.has_exited() {
        let rss = status_kb(pid, "VmRSS").unwrap_or(0);
        hwm = hwm.max(status_kb(pid, "VmHWM").unwrap_or(0)).max(rss);
        for (child, _) in children(pid) {
            hwm = hwm.max(status_kb(child, "VmRSS").unwrap_or(0));
        }
        if hwm > MAX_RSS_KB || started.elapsed() > Duration::from_secs(60) {
            p.kill9()?;
            bail!(
                "memory must stay bounded: {hwm} kB after {:?}\n{}",
                started.elapsed(),
                p.stderr_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stops_with(
        &mut p,
        Duration::from_secs(5),
        &[
            &event,
            "sink[0].transform",
            "more than 10000 outputs",
            "max_outputs",
        ],
    )
    .await?;
    ensure!(hwm < MAX_RSS_KB, "peak memory {hwm} kB");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_url_placeholder_dead_letters_its_item_and_the_sink_goes_on() -> anyhow::Result<()>
{
    let pg = PgCluster::new().await?;
    pg.batch(TABLE).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let port = free_port()?;
    // Row 1's URL never finishes rendering; row 2's does.
    let toml = format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:{port}"

[jq]
timeout_ms = 1000

[[sink]]
name = "hook"
type = "http"
tables = ["public.items"]
url = "{receiver}/{{.new.id | if . == 1 then last(range(1e12)) else . end}}"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
        url = pg.url(),
        state = state.path().display(),
        receiver = rx.url().trim_end_matches('/'),
    );
    let cfg = ConfigFile::new(&toml)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO items VALUES (1, 'stuck'), (2, 'fine')")
        .await?;
    let event = journaled_id(state.path(), 1).await?;
    wait_until_msg(Duration::from_secs(30), "row 2 delivered", || async {
        rx.requests().iter().any(|r| r.path.ends_with("/2"))
    })
    .await;
    ensure!(healthy(port).await, "/healthz answers");
    let (code, out, err) = pgcdc_output(&[
        "dlq",
        "list",
        "--config",
        &cfg.arg(),
        "--sink",
        "hook",
        "--json",
    ])
    .await?;
    ensure!(code == 0, "dlq list: {err}");
    let dlq: Value = serde_json::from_str(&out)?;
    ensure!(
        dlq.as_array().map(Vec::len) == Some(1) && dlq[0]["id"].as_str() == Some(event.as_str()),
        "row 1 is the one dead letter: {dlq:#}"
    );
    let error = dlq[0]["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("sink[0].url") && error.contains("ran longer than 1000 ms"),
        "the dead letter says why: {error}"
    );
    ensure!(
        !p.has_exited(),
        "pgcdc keeps running:\n{}",
        p.stderr_tail(20)
    );
    Ok(())
}
