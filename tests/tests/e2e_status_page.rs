//! End to end: the status page at `GET /` in headless Chromium, driven through
//! chromedriver's WebDriver HTTP API — the DLQ count shows, a real click on
//! "Replay all" answers the token prompt, a refused token is reported in the
//! page, and the dead-lettered events reach the receiver.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs
//! them). Without `/usr/bin/chromium` the test prints why and skips, except
//! under CI (env `CI` set), where it fails.

mod e2e_fixture;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use base64::Engine;
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{free_port, state_dir, ConfigFile, PgCluster, Pgcdc};
use reqwest::Method;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver uses for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const COUNT: &str = r#".card.sink[data-sink="hook"] .dlq-count"#;
const REPLAY: &str = r#"button[data-action="replay"][data-sink="hook"]"#;

/// True when the browser is there; prints why and returns false when the test
/// should skip; an error under CI, where a missing browser is a broken setup.
fn browser_available() -> anyhow::Result<bool> {
    if !Path::new(CHROMIUM).is_file() {
        if std::env::var_os("CI").is_some() {
            bail!("{CHROMIUM} is missing under CI: scripts/test installs chromium and chromium-driver");
        }
        let msg = format!(
            "SKIPPED status page test: {CHROMIUM} not found (apt-get install chromium chromium-driver); \
             with CI set this is a failure"
        );
        println!("{msg}");
        eprintln!("{msg}");
        return Ok(false);
    }
    ensure!(
        Path::new(CHROMEDRIVER).is_file(),
        "{CHROMEDRIVER} not found: apt-get install chromium-driver"
    );
    Ok(true)
}

/// chromedriver in its own process group, with a fresh Chromium profile; the
/// whole group (driver and browser) is killed on drop, even when the test fails.
struct Driver {
    child: tokio::process::Child,
    base: String,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> anyhow::Result<Driver> {
        let port = free_port()?;
        let profile = tempfile::tempdir()?;
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            profile,
        };
        let http = http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match http.get(format!("{}/status", d.base)).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("\"ready\":true"),
                Err(_) => false,
            };
            if ready {
                return Ok(d);
            }
            ensure!(
                Instant::now() < deadline,
                "chromedriver not ready after 20 s; log:\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A browser session: headless, no network besides this machine, fresh profile.
    async fn session(&self) -> anyhow::Result<Browser> {
        let user_data = self.profile.path().join("chromium");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // Prompts stay open for the test to answer through /alert.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", user_data.display()),
                    "--window-size=1280,1200",
                ],
            },
        }}});
        let mut b = Browser {
            http: http_client(),
            url: format!("{}/session", self.base),
        };
        let v = b
            .call(Method::POST, "", Some(caps))
            .await
            .with_context(|| format!("creating a session; chromedriver log:\n{}", self.log()))?;
        let id = v["sessionId"].as_str().context("no sessionId")?;
        b.url = format!("{}/session/{id}", self.base);
        Ok(b)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // Chromium's processes share the driver's group: none outlives the test.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    url: String,
}

impl Browser {
    /// Sends a command; returns its `value`, or the WebDriver error as an error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text}"))?;
        ensure!(
            status.is_success(),
            "{method} {path}: {status} {}",
            v["value"]
        );
        Ok(v["value"].clone())
    }

    async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Runs `script` in the page (arguments in `args`) and returns its result.
    async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The text of the first element matching `css`, `None` if there is none.
    async fn text_of(&self, css: &str) -> anyhow::Result<Option<String>> {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    /// A real click: WebDriver scrolls the element into view and sends mouse
    /// events at its centre, as a person's click would.
    async fn click(&self, css: &str) -> anyhow::Result<()> {
        let el = self
            .call(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        let id = el[ELEMENT_KEY].as_str().context("no element id")?;
        self.call(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Waits for a prompt, checks its text, types `answer` and accepts it.
    async fn answer_prompt(&self, expect: &str, answer: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            match self.call(Method::GET, "/alert/text", None).await {
                Ok(v) => break v.as_str().unwrap_or_default().to_string(),
                Err(e) if Instant::now() > deadline => bail!("no prompt opened: {e:#}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        ensure!(text.contains(expect), "prompt text: {text:?}");
        self.call(Method::POST, "/alert/text", Some(json!({ "text": answer })))
            .await?;
        self.call(Method::POST, "/alert/accept", Some(json!({})))
            .await
            .map(drop)
    }

    /// What the page shows in its banners, for failure messages.
    async fn banners(&self) -> String {
        let error = self.text_of("#error").await.ok().flatten();
        let notice = self.text_of("#notice").await.ok().flatten();
        format!("error banner: {error:?}; notice: {notice:?}")
    }

    /// Polls `check` (which reads the page) until it returns `Some`.
    async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let start = Instant::now();
        loop {
            let last = match check().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => String::new(),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > timeout {
                bail!(
                    "page: {what} not seen after {timeout:?} ({last}); {}",
                    self.banners().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, to: &Path) -> anyhow::Result<()> {
        let b64 = self.call(Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().context("screenshot is not a string")?)?;
        std::fs::write(to, png).with_context(|| format!("writing {}", to.display()))
    }

    async fn close(&self) {
        let _ = self.call(Method::DELETE, "", None).await;
    }
}

/// `target/` of this build (the test binary runs from `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn config(url: &str, state: &Path, receiver: &str, port: u16, admin_extra: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:{port}"
{admin_extra}

[[sink]]
name = "hook"
type = "http"
tables = ["public.items"]
url = "{receiver}"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
        state = state.display()
    )
}

/// The `new.v` of the events the receiver accepted, in arrival order.
fn received(rx: &Receiver) -> Vec<String> {
    rx.requests()
        .iter()
        .map(|r| r.json()["new"]["v"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The page's audit rows as `(event id, outcome)`.
async fn audit_rows(b: &Browser) -> anyhow::Result<Vec<(String, String)>> {
    let v = b
        .eval(
            "return [...document.querySelectorAll('#audit tr[data-outcome]')]\
             .map(r => [r.children[2].textContent, r.dataset.outcome]);",
            json!([]),
        )
        .await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            (s(0), s(1))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_replays_the_dlq_with_a_real_click() -> anyhow::Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await?;
    let rx = Receiver::start().await?;
    // 400 (definite: dead-lettered at once) for rows whose v starts with "bad".
    rx.set_mode(Mode::FailFor {
        status: 400,
        when: std::sync::Arc::new(|b: &Value| {
            b["new"]["v"].as_str().is_some_and(|v| v.starts_with("bad"))
        }),
    });
    let state = state_dir()?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), port, ""))?;
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
    e2e_fixture::wait_streaming(&pg, &mut p).await?;
    // No admin.token: the page works with the token pgcdc generated, as the CLI prints it.
    let token = e2e_fixture::admin_token(&cfg).await?;

    // Row 2 is dead-lettered, then its update is parked behind it: 2 in the DLQ.
    pg.batch(
        "INSERT INTO items VALUES (1, 'ok-1'); INSERT INTO items VALUES (2, 'bad-1'); \
         UPDATE items SET v = 'bad-2' WHERE id = 2; INSERT INTO items VALUES (3, 'ok-3');",
    )
    .await?;

    let driver = Driver::start().await?;
    let b = driver.session().await?;
    let mut result = drive(&b, &base, &rx, &token).await;
    // The screenshot is taken whatever happened: it shows what went wrong.
    let shot = target_dir().join("status-page.png");
    let shot_result = b.screenshot(&shot).await;
    if result.is_ok() {
        ensure!(
            !p.has_exited(),
            "pgcdc exited; stderr:\n{}",
            p.stderr_tail(30)
        );
        p.terminate()?;
        result = api_down_is_shown(&b).await;
    }
    b.close().await;
    result?;
    shot_result?;
    println!("screenshot: {}", shot.display());
    Ok(())
}

/// With pgcdc gone, the page says so instead of showing stale numbers as current.
async fn api_down_is_shown(b: &Browser) -> anyhow::Result<()> {
    b.wait_for(
        "the unreachable API in the page",
        Duration::from_secs(30),
        || async {
            let error = b.text_of("#error").await?.unwrap_or_default();
            let conn = b.text_of("#conn").await?.unwrap_or_default();
            let stale = b
                .eval(
                    "return document.body.classList.contains('stale');",
                    json!([]),
                )
                .await?;
            Ok((error.contains("/api/status")
                && error.contains("cannot reach pgcdc")
                && conn == "no status"
                && stale == json!(true))
            .then_some(()))
        },
    )
    .await?;
    b.screenshot(&target_dir().join("status-page-api-down.png"))
        .await
}

async fn drive(b: &Browser, base: &str, rx: &Receiver, token: &str) -> anyhow::Result<()> {
    b.goto(&format!("{base}/")).await?;
    let long = Duration::from_secs(60);
    b.wait_for("DLQ count 2", long, || async {
        Ok(b.text_of(COUNT).await?.filter(|t| t == "2"))
    })
    .await?;
    // The receiver records every request, the refused one too.
    let mut first = received(rx);
    first.sort();
    ensure!(first == ["bad-1", "ok-1", "ok-3"], "{first:?}");

    // The rest of the page: slot, WAL, lag charts, the failed attempt, resync.
    b.wait_for("slot active, wal_status reserved", long, || async {
        let active = b.text_of("#slot-active").await?.unwrap_or_default();
        let ws = b.text_of("#slot-wal-status").await?.unwrap_or_default();
        Ok((active.starts_with("active") && ws == "reserved").then_some(()))
    })
    .await?;
    let retained = b.text_of("#slot-retained").await?.unwrap_or_default();
    ensure!(retained.ends_with("B"), "WAL retained: {retained:?}");
    let lsn = b.text_of("#slot-confirmed").await?.unwrap_or_default();
    ensure!(lsn.contains('/'), "confirmed LSN: {lsn:?}");
    let points = b
        .eval(
            "return document.querySelector(arguments[0]).getAttribute('points');",
            json!([r#".card.sink[data-sink="hook"] polyline"#]),
        )
        .await?;
    ensure!(
        points.as_str().is_some_and(|p| p.contains(',')),
        "lag sparkline has no points: {points}"
    );
    let failed = b
        .wait_for("the failed attempt in the table", long, || async {
            let rows = audit_rows(b).await?;
            Ok(rows
                .into_iter()
                .find(|(_, o)| o == "failed")
                .map(|(id, _)| id))
        })
        .await?;
    let resync = b.text_of("#resync-status").await?.unwrap_or_default();
    ensure!(resync.contains("No resync yet"), "{resync}");

    b.screenshot(&target_dir().join("status-page-dlq.png"))
        .await?;
    rx.set_mode(Mode::Ok);

    // A wrong token: the API's refusal shows in the page, nothing is replayed,
    // and the token is forgotten so the next click asks again.
    b.click(REPLAY).await?;
    b.answer_prompt("admin.token", "not-the-token").await?;
    b.wait_for("the refusal in the page", long, || async {
        let n = b.text_of("#notice").await?.unwrap_or_default();
        Ok(n.contains("does not match admin.token").then_some(()))
    })
    .await?;
    let kept = b
        .eval(
            "return sessionStorage.getItem('pgcdc.adminToken');",
            json!([]),
        )
        .await?;
    ensure!(kept.is_null(), "a refused token is kept: {kept}");
    ensure!(b.text_of(COUNT).await?.as_deref() == Some("2"));
    ensure!(received(rx).len() == 3, "replayed without the token");

    b.wait_for("Replay all enabled again", long, || async {
        let v = b
            .eval(
                "return !document.querySelector(arguments[0]).disabled;",
                json!([REPLAY]),
            )
            .await?;
        Ok((v == json!(true)).then_some(()))
    })
    .await?;
    b.click(REPLAY).await?;
    b.answer_prompt("admin.token", token).await?;

    let deadline = Instant::now() + long;
    while received(rx).len() < 5 {
        ensure!(
            Instant::now() < deadline,
            "the replayed events did not arrive: {:?}; {}",
            received(rx),
            b.banners().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        received(rx)[3..] == ["bad-1", "bad-2"],
        "replayed in row order: {:?}",
        received(rx)
    );
    b.wait_for("DLQ count 0", long, || async {
        Ok(b.text_of(COUNT).await?.filter(|t| t == "0"))
    })
    .await?;
    let notice = b.text_of("#notice").await?.unwrap_or_default();
    ensure!(notice.contains("marked for replay"), "notice: {notice:?}");
    let kept = b
        .eval(
            "return sessionStorage.getItem('pgcdc.adminToken');",
            json!([]),
        )
        .await?;
    ensure!(kept == json!(token), "the accepted token is kept: {kept}");
    b.wait_for("the delivered replay in the table", long, || async {
        let rows = audit_rows(b).await?;
        Ok(rows
            .iter()
            .any(|(id, o)| id == &failed && o == "delivered")
            .then_some(()))
    })
    .await?;
    let error = b.text_of("#error").await?.unwrap_or_default();
    ensure!(error.is_empty(), "the page shows an error: {error}");
    Ok(())
}

/// With `admin.token` set, the status and the audit need it too: the page takes it
/// from the address `pgcdc admin-token --url` prints (and clears the address), or
/// asks for it when a read is refused.
#[tokio::test(flavor = "multi_thread")]
async fn status_page_reads_with_the_token_from_its_address_or_the_prompt() -> anyhow::Result<()> {
    const TOKEN: &str = "page-t0ken-for-reads";
    if !browser_available()? {
        return Ok(());
    }
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(400));
    let state = state_dir()?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("token = \"{TOKEN}\"");
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url(), port, &admin))?;
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &[])?;
    e2e_fixture::wait_streaming(&pg, &mut p).await?;
    pg.batch("INSERT INTO items VALUES (1, 'bad')").await?;
    let (code, url, err) =
        e2e_fixture::pgcdc_output(&["admin-token", "--config", &cfg.arg(), "--url"]).await?;
    ensure!(code == 0, "admin-token --url: {err}");

    let driver = Driver::start().await?;
    let b = driver.session().await?;
    let long = Duration::from_secs(60);
    let result = async {
        b.goto(url.trim()).await?;
        b.wait_for("DLQ count 1, read with the token", long, || async {
            Ok(b.text_of(COUNT).await?.filter(|t| t == "1"))
        })
        .await?;
        let address = b.eval("return location.href;", json!([])).await?;
        ensure!(
            address == json!(format!("{base}/")),
            "the token stays in the address: {address}"
        );
        // A tab without it is asked once, and then reads.
        b.eval("sessionStorage.clear(); location.reload();", json!([]))
            .await?;
        b.answer_prompt("to see status", TOKEN).await?;
        b.wait_for("DLQ count 1 after the prompt", long, || async {
            Ok(b.text_of(COUNT).await?.filter(|t| t == "1"))
        })
        .await?;
        // The kept token also acts: Replay all asks nothing more.
        rx.set_mode(Mode::Ok);
        b.click(REPLAY).await?;
        b.wait_for("DLQ count 0", long, || async {
            Ok(b.text_of(COUNT).await?.filter(|t| t == "0"))
        })
        .await?;
        ensure!(received(&rx).len() == 2, "{:?}", received(&rx));
        Ok(())
    }
    .await;
    b.close().await;
    result
}
