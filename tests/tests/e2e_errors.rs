//! End to end: preflight and configuration errors. Each one names the
//! problem and the fix, `pgcdc check` exits 1 on a source problem, and a bad
//! config exits 2 naming the key.

mod e2e_fixture;

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{config_toml, pgcdc_output, spawn_run, start_streaming, stderr_with};
use pgcdc_tests::{free_port, state_dir, ConfigFile, PgCluster};

/// Runs `pgcdc check` (must exit 1 with a FAIL line for `check_name`
/// containing every word) and `pgcdc run` (must exit non-zero with the same
/// words on stderr). Words are matched case-insensitively.
async fn preflight_fails(toml: &str, check_name: &str, words: &[&str]) -> anyhow::Result<()> {
    let cfg = ConfigFile::new(toml)?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 1, "check must exit 1, got {code}:\n{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains(check_name))
        .with_context(|| format!("no FAIL line for {check_name}:\n{out}"))?;
    ensure!(line.contains("fix:"), "FAIL line must say the fix: {line}");
    for w in words {
        ensure!(
            line.to_lowercase().contains(&w.to_lowercase()),
            "FAIL line lacks {w:?}: {line}"
        );
    }
    let mut p = spawn_run(&cfg)?;
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("pgcdc run must stop on a failed preflight")?;
    ensure!(!status.success(), "run must fail");
    let log = stderr_with(&p, words).await.to_lowercase();
    for w in words {
        ensure!(
            log.contains(&w.to_lowercase()),
            "run's stderr lacks {w:?}:\n{log}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_replica_is_refused_with_the_fix() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .setting("wal_level", "replica")
        .start()
        .await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY)")
        .await?;
    let state = state_dir()?;
    let toml = config_toml(&pg.url(), &["public.permits"], state.path(), "");
    preflight_fails(
        &toml,
        "wal_level",
        &["replica", "wal_level = logical", "restart"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn role_and_table_problems_are_named_with_their_fixes() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE permits (id int PRIMARY KEY, status text);
         CREATE TABLE nopk (id int, status text);",
    )
    .await?;
    pg.create_user("norepl", "", false).await?;
    pg.create_user("noselect", "", true).await?;
    pg.batch("GRANT SELECT ON permits TO norepl").await?;
    let state = state_dir()?;
    let dir = state.path();

    let as_norepl = config_toml(
        &pg.url_for("norepl", "", "postgres"),
        &["public.permits"],
        dir,
        "",
    );
    preflight_fails(&as_norepl, "role", &["norepl", "REPLICATION", "ALTER ROLE"]).await?;

    let as_noselect = config_toml(
        &pg.url_for("noselect", "", "postgres"),
        &["public.permits"],
        dir,
        "",
    );
    preflight_fails(
        &as_noselect,
        "table public.permits",
        &["SELECT", "GRANT SELECT"],
    )
    .await?;

    let missing = config_toml(&pg.url(), &["public.nope"], dir, "");
    preflight_fails(&missing, "table public.nope", &["does not exist"]).await?;

    let nopk = config_toml(&pg.url(), &["public.nopk"], dir, "");
    preflight_fails(
        &nopk,
        "table public.nopk",
        &["primary key", "REPLICA IDENTITY FULL"],
    )
    .await?;

    // None of the failed runs left a slot behind.
    let slots: i64 = pg
        .query_scalar("SELECT count(*) FROM pg_replication_slots")
        .await?;
    ensure!(slots == 0, "a failed preflight must not create a slot");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn second_pgcdc_on_the_same_slot_fails_saying_it_is_in_use() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY)")
        .await?;
    let state_a = state_dir()?;
    let cfg_a = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.permits"],
        state_a.path(),
        "",
    ))?;
    let mut first = start_streaming(&pg, &cfg_a).await?;

    let state_b = state_dir()?;
    let toml_b = config_toml(&pg.url(), &["public.permits"], state_b.path(), "");
    let cfg_b = ConfigFile::new(&toml_b)?;
    let (code, out, _) = pgcdc_output(&["check", "--config", &cfg_b.arg()]).await?;
    ensure!(code == 1, "{out}");
    ensure!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("in use") && l.contains("fix:")),
        "{out}"
    );

    let started = std::time::Instant::now();
    let mut second = spawn_run(&cfg_b)?;
    let status = second
        .wait_exit(Duration::from_secs(90))
        .await
        .context("the second pgcdc must give up")?;
    ensure!(!status.success());
    let log = stderr_with(&second, &["in use", "pg_terminate_backend"]).await;
    ensure!(log.contains("in use"), "{log}");
    ensure!(
        log.contains("pg_terminate_backend"),
        "the fix must be named: {log}"
    );
    println!(
        "second pgcdc gave up after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The first one was not disturbed.
    ensure!(!first.has_exited(), "{}", first.stderr_tail(20));
    pg.execute("INSERT INTO permits VALUES (1)").await?;
    let line = first
        .next_line(Duration::from_secs(30))
        .await
        .context("first still streams")?;
    ensure!(line.contains("\"op\":\"insert\""), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_fails_check_and_run() -> anyhow::Result<()> {
    let port = free_port()?;
    let state = state_dir()?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let cfg = ConfigFile::new(&config_toml(&url, &["public.permits"], state.path(), ""))?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 1, "check must exit 1, got {code}:\n{out}{err}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .with_context(|| format!("no FAIL line:\n{out}"))?;
    ensure!(
        fail.contains("source connection") && fail.contains(&port.to_string()),
        "{fail}"
    );
    ensure!(fail.contains("fix:"), "{fail}");

    let mut p = spawn_run(&cfg)?;
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("run must give up on an unreachable source")?;
    ensure!(!status.success());
    let log = stderr_with(&p, &["cannot connect"]).await;
    ensure!(log.contains("cannot connect"), "{log}");
    Ok(())
}

/// `pgcdc check` on a bad config: exit 2, `error: config key `KEY`` plus `words`.
async fn config_error(toml: &str, key: &str, words: &[&str]) -> anyhow::Result<()> {
    let cfg = ConfigFile::new(toml)?;
    for cmd in ["check", "run"] {
        let (code, out, err) = pgcdc_output(&[cmd, "--config", &cfg.arg()]).await?;
        ensure!(code == 2, "{cmd} must exit 2, got {code}:\n{out}{err}");
        ensure!(out.is_empty(), "nothing on stdout: {out}");
        ensure!(
            err.contains(&format!("error: config key `{key}")),
            "{cmd}: {err}"
        );
        for w in words {
            ensure!(err.contains(w), "{cmd}: stderr lacks {w:?}: {err}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_exit_2_naming_the_key() -> anyhow::Result<()> {
    let state = state_dir()?;
    let dir = state.path();
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    let good = config_toml(url, &["public.permits"], dir, "");

    let unknown = good.replace("[state]\n", "[state]\nretention = 3\n");
    config_error(&unknown, "state", &["retention"]).await?;
    let unknown_sink = format!("{good}colour = \"red\"\n");
    config_error(&unknown_sink, "sink[0].colour", &[]).await?;

    let env = config_toml("${PGCDC_E2E_SURELY_UNSET}", &["public.permits"], dir, "");
    config_error(&env, "source.url", &["PGCDC_E2E_SURELY_UNSET", "not set"]).await?;

    let bad_table = config_toml(url, &["public.permits", "a.b.c"], dir, "");
    config_error(&bad_table, "source.tables[1]", &["a.b.c", "schema.table"]).await?;
    Ok(())
}

/// The binary runs mimalloc with pgcdc's purge delay (100 ms, `pgcdc-alloc`),
/// and `MIMALLOC_PURGE_DELAY` still overrides it.
#[test]
fn allocator_purge_delay_is_pgcdcs_unless_the_environment_sets_one() -> anyhow::Result<()> {
    let delay = |env: Option<&str>| -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(pgcdc_tests::pgcdc_bin());
        cmd.args(["run", "--config", "/nonexistent/pgcdc.toml"])
            .env("PGCDC_LOG", "debug")
            .env_remove("PGCDC_LOG_FORMAT")
            .env_remove("MIMALLOC_PURGE_DELAY");
        if let Some(ms) = env {
            cmd.env("MIMALLOC_PURGE_DELAY", ms);
        }
        let out = cmd.output()?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.lines()
            .find(|l| l.contains("allocator: mimalloc"))
            .and_then(|l| l.split("purge_delay_ms=").nth(1))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no allocator line in: {err}"))
    };
    ensure!(delay(None)? == "100");
    ensure!(delay(Some("7"))? == "7");
    Ok(())
}

/// The binary turns transparent huge pages off for itself (with them, each 2 MiB
/// the allocator touches is resident in full), and `MIMALLOC_ALLOW_THP` keeps
/// them as the system has them. Checked in the kernel's view of a running pgcdc.
#[test]
fn huge_pages_are_off_unless_the_environment_allows_them() -> anyhow::Result<()> {
    // The kernel's THP_enabled line of a /proc/PID/status text.
    let thp_line = |status: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    };
    let thp_enabled = |allow: Option<&str>| -> anyhow::Result<String> {
        // `pgcdc run` waiting on a source that never answers: alive long enough to look at.
        let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!(
            "postgres://nobody@{}/none?sslmode=disable",
            silent.local_addr()?
        );
        let state = state_dir()?;
        let cfg = ConfigFile::new(&config_toml(&url, &["public.t"], state.path(), ""))?;
        let mut cmd = std::process::Command::new(pgcdc_tests::pgcdc_bin());
        cmd.args(["run", "--config", &cfg.arg()])
            .env_remove("MIMALLOC_ALLOW_THP")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(v) = allow {
            cmd.env("MIMALLOC_ALLOW_THP", v);
        }
        let mut child = cmd.spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let _ = child.kill();
        let _ = child.wait();
        let status = status.context("pgcdc exited before it could be looked at")?;
        thp_line(&status).context("the kernel reports no THP_enabled (Linux 5.0 or later does)")
    };
    ensure!(thp_enabled(None)? == "0", "huge pages are on for pgcdc");
    // Left alone, pgcdc has what it inherited: what this test process has.
    let inherited = thp_line(&std::fs::read_to_string("/proc/self/status")?);
    ensure!(
        thp_enabled(Some("1")).ok() == inherited,
        "MIMALLOC_ALLOW_THP=1 did not leave them as inherited ({inherited:?})"
    );
    Ok(())
}
