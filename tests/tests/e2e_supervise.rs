//! End to end: pgcdc does not fall over or lose work when it runs out of file
//! descriptors or its admin port is flooded — a resync that hits EMFILE is
//! retried (and `/readyz` says so meanwhile); idle and slow-header floods stay
//! within the connection cap, the head-size bound and the header timeout, so
//! fds and memory stay bounded and new clients are served once they pass;
//! bad requests still get their 4xx; and `check`/`run` name a too-low fd limit.

mod e2e_fixture;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use e2e_fixture::{
    config_toml, pgcdc_output, proc_status_kib, run_output, start_streaming, stderr_with,
};
use pgcdc_tests::{
    free_port, pgcdc_bin, state_dir, wait_streaming, wait_until_msg, ConfigFile, PgCluster, Pgcdc,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Rows a resync reads.
const ROWS: usize = 50;

/// A table of `ROWS` rows; a config with one stdout sink, no initial snapshot (so every
/// `read` event comes from the resync) and the admin API on `port`.
async fn setup(pg: &PgCluster, state: &Path, port: u16) -> anyhow::Result<ConfigFile> {
    pg.batch(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v int); \
         INSERT INTO items SELECT g, g FROM generate_series(1, {ROWS}) g"
    ))
    .await?;
    let toml = config_toml(&pg.url(), &["public.items"], state, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("tables = [", "snapshot = \"never\"\ntables = [");
    Ok(ConfigFile::new(&toml)?)
}

/// The process's open file descriptors.
fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Reads stdout until `n` resync (`read`) events came, or fails after `timeout`.
async fn reads(p: &mut Pgcdc, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p.next_line(left).await.with_context(|| {
            format!(
                "{seen} of {n} resync rows delivered; stderr:\n{}",
                p.stderr_tail(20)
            )
        })?;
        if serde_json::from_str::<Value>(&line)?["op"] == "read" {
            seen += 1;
        }
    }
    Ok(())
}

/// One HTTP/1.1 keep-alive connection, used request after request (a client pool
/// might open a second connection, which pgcdc cannot accept while out of fds).
struct KeepAlive {
    stream: BufReader<TcpStream>,
    /// The admin token (mutations need it).
    token: String,
}

impl KeepAlive {
    async fn connect(port: u16, token: String) -> anyhow::Result<KeepAlive> {
        Ok(KeepAlive {
            stream: BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?),
            token,
        })
    }

    /// (status, body), within 5 s.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        tokio::time::timeout(Duration::from_secs(5), self.exchange(method, path, body))
            .await
            .context("no answer in 5 s")?
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             authorization: Bearer {}\r\ncontent-length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not a status line: {line:?}"))?;
        let mut len = 0;
        loop {
            line.clear();
            ensure!(
                self.stream.read_line(&mut line).await? > 0,
                "closed mid-head"
            );
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `prlimit --pid PID --nofile=SOFT:` (the soft limit of a running process).
async fn set_soft_fd_limit(pid: u32, soft: u64) -> anyhow::Result<()> {
    let (code, out, err) = run_output(
        Path::new("prlimit"),
        &["--pid", &pid.to_string(), &format!("--nofile={soft}:")],
    )
    .await?;
    ensure!(code == 0, "prlimit: {out}{err}");
    Ok(())
}

/// Spawns `pgcdc ARGS` with the open-files limit (soft and hard) set to `limit`.
fn spawn_limited(limit: u64, args: &[&str]) -> anyhow::Result<Pgcdc> {
    let bin = pgcdc_bin().display().to_string();
    let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
    let mut argv = vec!["-c", script.as_str(), bin.as_str()];
    argv.extend_from_slice(args);
    Ok(Pgcdc::spawn_bin(Path::new("bash"), &argv, &[])?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resync_that_runs_out_of_file_descriptors_is_retried_and_completes() -> anyhow::Result<()>
{
    let pg = PgCluster::new().await?;
    let state = state_dir()?;
    let port = free_port()?;
    let cfg = setup(&pg, state.path(), port).await?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let pid = p.pid();
    // One keep-alive connection, opened now: while pgcdc is out of descriptors it
    // cannot accept another (a client pool might open a second one).
    // Mutations need the token: the one pgcdc generated, as the CLI prints it.
    let token = e2e_fixture::admin_token(&cfg).await?;
    let conn = Arc::new(tokio::sync::Mutex::new(
        KeepAlive::connect(port, token).await?,
    ));
    let readyz = || {
        let conn = conn.clone();
        async move {
            let mut c = conn.lock().await;
            c.request("GET", "/readyz", "")
                .await
                .unwrap_or_else(|e| (0, e.to_string()))
        }
    };
    wait_until_msg(Duration::from_secs(30), "pgcdc ready", || async {
        readyz().await.0 == 200
    })
    .await;
    let (soft, _) = fd_limits(pid)?;

    // Every descriptor pgcdc opens from now on fails with EMFILE.
    set_soft_fd_limit(pid, 3).await?;
    let (code, body) = conn
        .lock()
        .await
        .request("POST", "/api/resync", r#"{"table": "public.items"}"#)
        .await?;
    ensure!(code == 200, "resync request: {code} {body}");
    // The driver's journal handle cannot be opened: retried, and /readyz says why.
    wait_until_msg(
        Duration::from_secs(20),
        "/readyz names the failing resync driver and the fd limit",
        || async {
            let (code, body) = readyz().await;
            code == 503
                && body.contains("resync driver")
                && body.contains("too many open files (limit 3)")
        },
    )
    .await;
    let (_, broken) = readyz().await;
    eprintln!("while out of descriptors: {broken}");

    set_soft_fd_limit(pid, soft).await?;
    reads(&mut p, ROWS, Duration::from_secs(60)).await?;
    wait_until_msg(Duration::from_secs(20), "ready again", || async {
        readyz().await.0 == 200
    })
    .await;
    let log = p.stderr();
    ensure!(
        log.contains("ulimit -n / LimitNOFILE"),
        "the log does not name the fix: {log}"
    );
    p.terminate()?;
    let status = p.wait_exit(Duration::from_secs(20)).await;
    ensure!(
        status.is_some_and(|s| s.success()),
        "after a passing fault, SIGTERM must exit 0: {status:?}\n{}",
        p.stderr_tail(20)
    );
    Ok(())
}

/// The soft and hard open-files limits of a process, from `/proc/PID/limits`.
fn fd_limits(pid: u32) -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open files line")?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    ensure!(nums.len() >= 2, "{line}");
    Ok((nums[0], nums[1]))
}

/// Opens `n` connections to `port` that each send `head` (possibly nothing) and then
/// wait; each records in `closed` when the server closes it. Returns the streams' tasks.
async fn flood(
    port: u16,
    n: usize,
    head: Arc<Vec<u8>>,
    closed: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            closed.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        let (head, closed) = (head.clone(), closed.clone());
        tasks.push(tokio::spawn(async move {
            // A refused or answered connection may be reset mid-write: that is a close.
            let _ = s.write_all(&head).await;
            let mut buf = [0u8; 4096];
            // Bounded: the test's own deadline; the server's timeouts are shorter.
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                // EOF or a reset ends it; data (an answer) or a quiet second does not.
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                {
                    break;
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
        }));
    }
    tasks
}

/// One raw request on a new connection: the status code of the answer (0 if none).
async fn raw_status(port: u16, request: &[u8]) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_floods_stay_within_the_connection_cap_and_memory_bounds() -> anyhow::Result<()> {
    const LIMIT: u64 = 256;
    let pg = PgCluster::new().await?;
    let state = state_dir()?;
    let port = free_port()?;
    let cfg = setup(&pg, state.path(), port).await?;
    let mut p = spawn_limited(LIMIT, &["run", "--config", &cfg.arg()])?;
    wait_streaming(&pg, &mut p).await?;
    let pid = p.pid();
    let log = p.stderr();
    let cap: usize = log
        .split("max_connections=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no max_connections in the log: {log}"))?;
    ensure!(
        cap > 16 && (cap as u64) < LIMIT / 2,
        "admin connection cap {cap} for an fd limit of {LIMIT}"
    );
    let fds_before = open_fds(pid)?;
    let rss_before = proc_status_kib(pid, "VmRSS")?;

    // 1. More idle connections than the fd limit: the cap holds, the excess is closed
    //    at once, the engine keeps its descriptors (a resync completes meanwhile), and
    //    the header timeout frees the held ones.
    let idle = 600;
    let closed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks = flood(port, idle, Arc::new(Vec::new()), closed.clone()).await;
    wait_until_msg(
        Duration::from_secs(10),
        "connections past the cap closed at once",
        || async { closed.load(Ordering::SeqCst) >= idle - cap - 8 },
    )
    .await;
    let fds_flooded = open_fds(pid)?;
    ensure!(
        fds_flooded <= fds_before + cap + 8,
        "{fds_flooded} fds open during the flood ({fds_before} before, cap {cap})"
    );
    let (code, out, err) =
        pgcdc_output(&["resync", "--config", &cfg.arg(), "--table", "public.items"]).await?;
    ensure!(code == 0, "resync: {out}{err}");
    reads(&mut p, ROWS, Duration::from_secs(30)).await?;
    wait_until_msg(
        Duration::from_secs(20),
        "every idle connection closed by the header timeout",
        || async { closed.load(Ordering::SeqCst) == idle },
    )
    .await;
    let held_for = started.elapsed();
    ensure!(
        held_for < Duration::from_secs(16),
        "idle connections held for {held_for:?}"
    );
    for t in tasks {
        t.await?;
    }
    // A new client is served again.
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await?;
    ensure!(health.status().as_u16() == 200, "/healthz after the flood");

    // 2. Slow, huge request heads: at most one bounded buffer per held connection.
    let slow = 200;
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    head.resize(380 * 1024, b'a');
    let closed = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            for _ in 0..400 {
                if let Ok(kb) = proc_status_kib(pid, "VmRSS") {
                    peak.fetch_max(kb as usize, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let tasks = flood(port, slow, Arc::new(head), closed.clone()).await;
    wait_until_msg(
        Duration::from_secs(20),
        "every slow-header connection closed",
        || async { closed.load(Ordering::SeqCst) == slow },
    )
    .await;
    for t in tasks {
        t.await?;
    }
    sampler.abort();
    let peak_kb = (peak.load(Ordering::SeqCst) as u64).max(proc_status_kib(pid, "VmRSS")?);
    wait_until_msg(
        Duration::from_secs(20),
        "RSS back near its level before the floods",
        || async { proc_status_kib(pid, "VmRSS").is_ok_and(|kb| kb < rss_before + 16 * 1024) },
    )
    .await;
    let rss_after = proc_status_kib(pid, "VmRSS")?;
    eprintln!(
        "fds: {fds_before} before, {fds_flooded} during {idle} idle connections (cap {cap}); \
         RSS: {rss_before} kB before, peak {peak_kb} kB during {slow} x 380 KB heads, \
         {rss_after} kB after"
    );
    ensure!(
        peak_kb < rss_before + 24 * 1024,
        "RSS grew from {rss_before} kB to {peak_kb} kB under {slow} slow heads"
    );

    // 3. Bad requests still get their answers.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let code = |r: reqwest::Response| r.status().as_u16();
    let big = format!(
        r#"{{"table": "public.items", "pad": "{}"}}"#,
        "x".repeat(100_000)
    );
    // Mutations need the token: the one pgcdc generated, as the CLI prints it.
    let token = e2e_fixture::admin_token(&cfg).await?;
    let r = http
        .post(format!("{base}/api/resync"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    ensure!(code(r) == 413, "oversized body");
    let r = http
        .post(format!("{base}/api/resync"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await?;
    ensure!(code(r) == 400, "malformed body");
    let r = http.get(format!("{base}/no/such/thing")).send().await?;
    ensure!(code(r) == 404, "unknown path");
    let long = format!("{base}/api/audit?event={}", "e".repeat(9_000));
    let r = http.get(long).send().await?;
    ensure!(code(r) == 414, "long URI");
    let mut huge_header = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    huge_header.resize(40 * 1024, b'a');
    huge_header.extend_from_slice(b"\r\n\r\n");
    let c = raw_status(port, &huge_header).await?;
    ensure!(c == 431, "a 40 KiB head got {c}");
    let c = raw_status(port, b"NOT HTTP AT ALL\r\n\r\n").await?;
    ensure!(c == 400, "garbage got {c}");

    p.terminate()?;
    let status = p.wait_exit(Duration::from_secs(20)).await;
    ensure!(
        status.is_some_and(|s| s.success()),
        "SIGTERM after the floods must exit 0: {status:?}\n{}",
        p.stderr_tail(20)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_run_name_a_too_low_fd_limit() -> anyhow::Result<()> {
    let state = state_dir()?;
    // No database needed: the fd check comes first in `run`, and `check` reports each
    // item (the source connection fails here, on a closed port).
    let url = format!("postgres://pgcdc@127.0.0.1:{}/db", free_port()?);
    let sinks: String = (0..60)
        .map(|i| {
            format!("[[sink]]\nname = \"s{i}\"\ntype = \"stdout\"\ntables = [\"public.items\"]\n")
        })
        .collect();
    let cfg = ConfigFile::new(&config_toml(&url, &["public.items"], state.path(), &sinks))?;

    let mut check = spawn_limited(256, &["check", "--config", &cfg.arg()])?;
    let status = check.wait_exit(Duration::from_secs(30)).await;
    let out = check
        .collect_lines(200, Duration::from_secs(2))
        .await
        .join("\n");
    ensure!(
        status.is_some_and(|s| s.code() == Some(1)),
        "check must fail: {status:?}\n{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("file descriptors"))
        .with_context(|| format!("check does not report file descriptors:\n{out}"))?;
    ensure!(
        line.starts_with("FAIL")
            && line.contains("limit is 256")
            && line.contains("ulimit -n")
            && line.contains("LimitNOFILE"),
        "{line}"
    );

    let started = Instant::now();
    let mut run = spawn_limited(256, &["run", "--config", &cfg.arg()])?;
    let status = run.wait_exit(Duration::from_secs(30)).await;
    // The stderr reader may lag behind the exit.
    let err = stderr_with(&run, &["limit is 256", "ulimit -n", "LimitNOFILE"]).await;
    ensure!(
        status.is_some_and(|s| s.code() == Some(2)) && started.elapsed() < Duration::from_secs(10),
        "run must refuse at once: {status:?} after {:?}\n{err}",
        started.elapsed()
    );
    ensure!(
        err.contains("limit is 256") && err.contains("ulimit -n") && err.contains("LimitNOFILE"),
        "{err}"
    );

    // With one sink the same limit is enough.
    let one = ConfigFile::new(&config_toml(&url, &["public.items"], state.path(), ""))?;
    let mut check = spawn_limited(256, &["check", "--config", &one.arg()])?;
    check.wait_exit(Duration::from_secs(30)).await;
    let out = check
        .collect_lines(50, Duration::from_secs(2))
        .await
        .join("\n");
    ensure!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("file descriptors")),
        "{out}"
    );
    Ok(())
}
