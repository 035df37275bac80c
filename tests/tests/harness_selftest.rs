//! Self-tests of the harness: each one fails if the harness feature it relies
//! on is broken, so end-to-end failures can be trusted to be about pgcdc.

use std::time::Duration;

use anyhow::{ensure, Context};
use pgcdc_tests::{wait_until, ConfigFile, PgCluster, Pgcdc};

async fn show(cluster: &PgCluster, setting: &str) -> anyhow::Result<String> {
    let row = cluster
        .client()
        .await?
        .query_one(&format!("SHOW {setting}"), &[])
        .await?;
    Ok(row.try_get(0)?)
}

async fn count(cluster: &PgCluster, sql: &str) -> anyhow::Result<i64> {
    Ok(cluster
        .client()
        .await?
        .query_one(sql, &[])
        .await?
        .try_get(0)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_is_logical_and_survives_restart_and_crash() -> anyhow::Result<()> {
    let mut pg = PgCluster::builder()
        .wal_sender_timeout(Duration::from_secs(7))
        .setting("application_name", "harness_selftest")
        .start()
        .await?;
    ensure!(show(&pg, "wal_level").await? == "logical");
    ensure!(show(&pg, "wal_sender_timeout").await? == "7s");
    ensure!(show(&pg, "application_name").await? == "harness_selftest");
    ensure!(show(&pg, "port").await? == pg.port().to_string());

    // The public URL works over TCP (trust hba) without a password.
    let (tcp, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let one: i32 = tcp.query_one("SELECT 1", &[]).await?.try_get(0)?;
    ensure!(one == 1);
    drop(tcp);

    pg.batch("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await?;
    ensure!(pg.execute("INSERT INTO t VALUES (3)").await? == 1);

    let port = pg.port();
    let pid_before = pg.pid();
    pg.restart().await?;
    ensure!(pg.port() == port, "restart must keep the port");
    ensure!(
        pg.pid() != pid_before,
        "restart must start a new postmaster"
    );
    ensure!(count(&pg, "SELECT count(*) FROM t").await? == 3);

    pg.execute("INSERT INTO t VALUES (4)").await?;
    // An open session leaves an orphaned backend behind the killed postmaster.
    let held = pg.client().await?;
    pg.kill9().await?;
    ensure!(!pg.is_running());
    ensure!(
        pg.client().await.is_err(),
        "server must be down after kill9"
    );
    pg.start().await.context("start after kill9")?;
    ensure!(count(&pg, "SELECT count(*) FROM t").await? == 4);
    ensure!(
        held.simple_query("SELECT 1").await.is_err(),
        "old session must be dead"
    );
    ensure!(
        pg.log_tail(200).contains("not properly shut down"),
        "start after kill9 must go through crash recovery; log:\n{}",
        pg.log_tail(30)
    );

    pg.stop().await?;
    ensure!(pg.client().await.is_err(), "server must be down after stop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_hba_checks_passwords_over_tcp() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .hba_method("scram-sha-256")
        .start()
        .await?;
    pg.create_user("alice", "s3cret:@/", true).await?;

    let wrong = pg.client_tcp("alice", "nope", "postgres").await;
    let err = wrong.err().context("wrong password must be rejected")?;
    ensure!(
        err.to_string().contains("password authentication failed"),
        "unexpected error: {err}"
    );

    let client = pg.client_tcp("alice", "s3cret:@/", "postgres").await?;
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    ensure!(row.try_get::<_, String>(0)? == "alice");
    ensure!(
        row.try_get::<_, bool>(1)?,
        "replication attribute must be set"
    );

    // The socket stays trust, so the superuser client needs no password.
    ensure!(show(&pg, "password_encryption").await? == "scram-sha-256");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_hba_stores_md5_passwords() -> anyhow::Result<()> {
    let pg = PgCluster::builder().hba_method("md5").start().await?;
    pg.create_user("bob", "pw", false).await?;
    let stored: String = pg
        .client()
        .await?
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'bob'",
            &[],
        )
        .await?
        .try_get(0)?;
    ensure!(stored.starts_with("md5"), "stored as {stored}");
    ensure!(pg.client_tcp("bob", "bad", "postgres").await.is_err());
    pg.client_tcp("bob", "pw", "postgres").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_cluster_serves_verified_tls() -> anyhow::Result<()> {
    let pg = PgCluster::builder().tls(true).start().await?;
    ensure!(show(&pg, "ssl").await? == "on");
    let ca = pg.ca_cert_path().context("tls cluster has a CA")?;
    ensure!(ca.is_file());
    ensure!(pg.server_cert_path().is_some_and(|p| p.is_file()));
    let url = pg
        .tls_url_for("postgres", "", "postgres")
        .context("tls url")?;
    ensure!(url.contains("sslmode=verify-full"));

    // A rustls client that trusts only the harness CA gets an encrypted session.
    let client = pg.client_tls("postgres", "", "postgres").await?;
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .try_get(0)?;
    ensure!(ssl, "connection must be encrypted");

    // A plain cluster has no certificates and ssl stays off.
    let plain = PgCluster::new().await?;
    ensure!(plain.ca_cert_path().is_none());
    ensure!(show(&plain, "ssl").await? == "off");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_in_one_process_are_isolated() -> anyhow::Result<()> {
    let a = PgCluster::new().await?;
    let b = PgCluster::new().await?;
    ensure!(a.port() != b.port());
    ensure!(a.data_dir() != b.data_dir());
    a.batch("CREATE TABLE only_in_a (x int)").await?;
    let in_b = count(
        &b,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
    )
    .await?;
    ensure!(in_b == 0);

    // Drop stops the server and removes its directory.
    let dir = a.data_dir().to_path_buf();
    let pid = a.pid().context("running cluster has a pid")?;
    drop(a);
    ensure!(!dir.exists(), "cluster dir must be removed on drop");
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), None);
    ensure!(alive.is_err(), "postmaster {pid} must be gone after drop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_sees_a_row_appear() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE flag (x int)").await?;
    let writer = pg.client().await?;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = writer.execute("INSERT INTO flag VALUES (1)", &[]).await;
    });
    wait_until(Duration::from_secs(10), || async {
        count(&pg, "SELECT count(*) FROM flag").await.ok() == Some(1)
    })
    .await;
    Ok(())
}

/// The process runner, exercised on `sh` so it does not depend on pgcdc being built.
#[tokio::test(flavor = "multi_thread")]
async fn process_runner_streams_stdout_and_logs_stderr() -> anyhow::Result<()> {
    let cfg = ConfigFile::new("[source]\nurl = \"x\"\n")?;
    ensure!(std::fs::read_to_string(cfg.path())?.contains("[source]"));

    let sh = std::path::Path::new("/bin/sh");
    let script = "echo one; echo two; echo \"err $GREETING\" >&2; echo three; exec sleep 30";
    let mut p = Pgcdc::spawn_bin(sh, &["-c", script], &[("GREETING", "hi")])?;
    let lines = p.collect_lines(3, Duration::from_secs(10)).await;
    ensure!(lines == ["one", "two", "three"], "got {lines:?}");
    ensure!(p.next_line(Duration::from_millis(100)).await.is_none());
    wait_until(Duration::from_secs(5), || {
        let tail = p.stderr_tail(5);
        async move { tail.contains("err hi") }
    })
    .await;

    ensure!(p.wait_exit(Duration::from_millis(100)).await.is_none());
    p.terminate()?;
    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .context("exits after SIGTERM")?;
    use std::os::unix::process::ExitStatusExt;
    ensure!(status.signal() == Some(15), "status {status:?}");

    let mut q = Pgcdc::spawn_bin(sh, &["-c", "exec sleep 30"], &[])?;
    q.kill9()?;
    let status = q
        .wait_exit(Duration::from_secs(10))
        .await
        .context("exits")?;
    ensure!(status.signal() == Some(9), "status {status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_moves_to_a_free_port_when_the_picked_one_is_taken() -> anyhow::Result<()> {
    let mut pg = PgCluster::builder().init().await?;
    let picked = pg.port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", picked))?;
    pg.start().await?;
    ensure!(pg.port() != picked, "must not stay on the taken port");
    let port: String = pg.query_scalar("SHOW port").await?;
    ensure!(port == pg.port().to_string());
    drop(squatter);
    Ok(())
}

/// Each supported major version starts, and a physical standby made by the
/// harness's hand-made base backup replays the primary's writes (14: the
/// pg_start_backup spelling; 17: the current one), then promotes.
#[tokio::test(flavor = "multi_thread")]
async fn versioned_clusters_start_and_make_streaming_standbys() -> anyhow::Result<()> {
    for major in [14u32, 17] {
        let primary = PgCluster::builder().version(major).start().await?;
        ensure!(
            primary.server_major().await? == major,
            "server is not {major}"
        );
        primary
            .batch("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
            .await?;
        let standby = primary.start_standby("standby1", &[]).await?;
        primary.execute("INSERT INTO t VALUES (2)").await?;
        wait_until(Duration::from_secs(30), || async {
            count(&standby, "SELECT count(*) FROM t").await.ok() == Some(2)
        })
        .await;
        ensure!(show(&standby, "transaction_read_only").await? == "on");
        standby.promote().await?;
        standby.execute("INSERT INTO t VALUES (3)").await?;
        ensure!(count(&standby, "SELECT count(*) FROM t").await? == 3);
    }
    Ok(())
}
