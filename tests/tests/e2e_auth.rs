//! End to end: pgcdc authenticates (SCRAM, MD5, cleartext password) and
//! encrypts (TLS, verified or not) on its own connections, and says clearly
//! when a password or a certificate is wrong.

mod e2e_fixture;

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{config_toml, pgcdc_output, spawn_run, start_streaming, stderr_with};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

/// Table, grant and publication made by the superuser, so that a plain
/// replication role can stream.
async fn prepare(pg: &PgCluster, user: &str) -> anyhow::Result<()> {
    pg.batch(&format!(
        "CREATE TABLE permits (id int PRIMARY KEY, status text);
         GRANT SELECT ON permits TO {user};
         CREATE PUBLICATION pgcdc FOR TABLE permits;"
    ))
    .await?;
    Ok(())
}

fn config_for(url: &str) -> anyhow::Result<(tempfile::TempDir, ConfigFile)> {
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(url, &["public.permits"], state.path(), ""))?;
    Ok((state, cfg))
}

/// `pgcdc check` passes and `pgcdc run` streams a change with `url`; returns
/// the running process (its walsender is the slot's active pid).
async fn streams_with(pg: &PgCluster, url: &str, id: i32) -> anyhow::Result<Pgcdc> {
    // Each run starts from a new state dir: the previous run's slot goes first, or
    // pgcdc refuses a new journal facing a slot that has moved on (as it must).
    pg.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
        .await?;
    let (state, cfg) = config_for(url)?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "check failed ({code}):\n{out}{err}");
    let mut p = start_streaming(pg, &cfg).await?;
    pg.execute(&format!("INSERT INTO permits VALUES ({id}, 'new')"))
        .await?;
    let line = p
        .next_line(Duration::from_secs(30))
        .await
        .with_context(|| format!("no event; stderr:\n{}", p.stderr_tail(30)))?;
    let v: Value = serde_json::from_str(&line)?;
    ensure!(v["op"] == "insert" && v["key"]["id"] == id, "{line}");
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    drop(state);
    Ok(p)
}

/// `pgcdc check` prints a FAIL line with all `words` and exits 1; `pgcdc run`
/// exits non-zero with all `words` on stderr. Both are checked before failing,
/// so one report shows every broken message.
async fn fails_with(url: &str, words: &[&str]) -> anyhow::Result<()> {
    let (_state, cfg) = config_for(url)?;
    let mut problems = Vec::new();
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    if code != 1 {
        problems.push(format!("check must exit 1, got {code}:\n{out}{err}"));
    }
    match out.lines().find(|l| l.starts_with("FAIL")) {
        None => problems.push(format!("check printed no FAIL line:\n{out}")),
        Some(fail) => {
            for w in words {
                if !fail.to_lowercase().contains(w) {
                    problems.push(format!("check's FAIL line lacks {w:?}: {fail}"));
                }
            }
        }
    }
    let mut p = spawn_run(&cfg)?;
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("pgcdc run must give up on a definite error")?;
    if status.success() {
        problems.push("run must fail".to_owned());
    }
    let log = stderr_with(&p, words).await.to_lowercase();
    for w in words {
        if !log.contains(w) {
            problems.push(format!("run's stderr lacks {w:?}:\n{log}"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

async fn password_methods(method: &str) -> anyhow::Result<()> {
    let pg = PgCluster::builder().hba_method(method).start().await?;
    pg.create_user("repl", "s3cret:@/", true).await?;
    prepare(&pg, "repl").await?;
    streams_with(&pg, &pg.url_for("repl", "s3cret:@/", "postgres"), 1).await?;
    fails_with(
        &pg.url_for("repl", "wrong", "postgres"),
        &["authentication"],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_256_streams_and_wrong_password_fails() -> anyhow::Result<()> {
    password_methods("scram-sha-256").await
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_streams_and_wrong_password_fails() -> anyhow::Result<()> {
    password_methods("md5").await
}

#[tokio::test(flavor = "multi_thread")]
async fn cleartext_password_streams_and_wrong_password_fails() -> anyhow::Result<()> {
    password_methods("password").await
}

/// Whether every walsender runs over TLS (and there is at least one).
async fn walsender_uses_tls(pg: &PgCluster) -> anyhow::Result<bool> {
    let row = pg
        .client()
        .await?
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_replication r \
             JOIN pg_stat_ssl s USING (pid)",
            &[],
        )
        .await?;
    let (all, tls): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok(all > 0 && all == tls)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_full_and_require_stream_and_a_wrong_ca_fails() -> anyhow::Result<()> {
    let pg = PgCluster::builder().tls(true).start().await?;
    pg.create_user("repl", "pw", true).await?;
    prepare(&pg, "repl").await?;

    let verified = pg
        .tls_url_for("repl", "pw", "postgres")
        .context("tls url")?;
    ensure!(verified.contains("sslmode=verify-full"));
    let (_state, cfg) = config_for(&verified)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    ensure!(
        walsender_uses_tls(&pg).await?,
        "replication must run over TLS"
    );
    pg.execute("INSERT INTO permits VALUES (1, 'new')").await?;
    let line = p
        .next_line(Duration::from_secs(30))
        .await
        .context("no event")?;
    ensure!(line.contains("\"op\":\"insert\""), "{line}");
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());

    // The certificate names `localhost` too.
    streams_with(&pg, &verified.replace("@127.0.0.1:", "@localhost:"), 2).await?;
    streams_with(
        &pg,
        &pg.url_with_params("repl", "pw", "postgres", "sslmode=require"),
        3,
    )
    .await?;

    // A CA that did not sign the server's certificate.
    let other = PgCluster::builder().tls(true).init().await?;
    let wrong_ca = other
        .ca_cert_path()
        .context("other CA")?
        .to_string_lossy()
        .into_owned();
    let url = pg.url_with_params(
        "repl",
        "pw",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={wrong_ca}"),
    );
    fails_with(&url, &["certificate"]).await?;

    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_against_a_plain_server_fails_clearly() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    prepare(&pg, "postgres").await?;
    let url = pg.url_with_params("postgres", "", "postgres", "sslmode=require");
    fails_with(&url, &["tls"]).await
}

/// Amazon RDS grants logical replication through membership in `rds_replication`
/// (`rolreplication` stays false): emulated here by a role of that name, the check
/// passes and says which. A publication without truncate is a warning, not a failure.
#[tokio::test(flavor = "multi_thread")]
async fn rds_replication_member_passes_and_a_publication_without_truncate_warns(
) -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE ROLE rds_replication WITH REPLICATION NOLOGIN;
         CREATE ROLE cdc LOGIN NOREPLICATION;
         GRANT rds_replication TO cdc;
         CREATE TABLE permits (id int PRIMARY KEY, status text);
         GRANT SELECT ON permits TO cdc;
         CREATE PUBLICATION pgcdc FOR TABLE permits WITH (publish = 'insert, update, delete');",
    )
    .await?;
    let (_state, cfg) = config_for(&pg.url_for("cdc", "", "postgres"))?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(code == 0, "check must pass ({code}):\n{out}{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {name}: ")))
            .unwrap_or_default()
            .to_owned()
    };
    let role = line("role");
    ensure!(
        role.starts_with("ok") && role.contains("member of rds_replication"),
        "role line: {role}\n{out}"
    );
    let publication = line("publication pgcdc");
    ensure!(
        publication.starts_with("warn")
            && publication.contains("truncate")
            && publication.contains("will not be seen"),
        "publication line: {publication}\n{out}"
    );
    Ok(())
}

/// A server that requires TLS, SCRAM and a client certificate (`clientcert=verify-full`,
/// so the certificate's CN names the user): pgcdc checks and streams with sslcert/sslkey
/// and the password, over SCRAM-SHA-256-PLUS when channel_binding=require; without the
/// certificate it fails, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_scram_and_channel_binding_against_a_strict_server() -> anyhow::Result<()>
{
    let user = "pgcdc-client";
    let mut builder = PgCluster::builder().tls(true).hba_method("scram-sha-256");
    for db in ["all", "replication"] {
        builder = builder
            .hba_line(&format!(
                "hostssl {db} {user} 127.0.0.1/32 scram-sha-256 clientcert=verify-full"
            ))
            .hba_line(&format!("hostnossl {db} {user} 127.0.0.1/32 reject"));
    }
    let pg = builder.start().await?;
    pg.create_user(user, "pw", true).await?;
    prepare(&pg, "\"pgcdc-client\"").await?;

    let (cert, key) = pg.client_cert_paths().context("client cert")?;
    // libpq's rule, which pgcdc follows: the key is readable by its owner only.
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let verified = pg.tls_url_for(user, "pw", "postgres").context("tls url")?;
    let with_cert = format!(
        "{verified}&sslcert={}&sslkey={}",
        cert.display(),
        key.display()
    );
    streams_with(&pg, &with_cert, 1).await?;
    streams_with(&pg, &format!("{with_cert}&channel_binding=require"), 2).await?;

    // The same URL without the certificate: the server refuses, and pgcdc says why.
    fails_with(&verified, &["certificate"]).await?;
    Ok(())
}

/// channel_binding=require refuses a connection that cannot bind (no TLS), in `check`
/// and in `run`, naming the setting; over TLS (above) it streams.
#[tokio::test(flavor = "multi_thread")]
async fn channel_binding_require_without_tls_fails_clearly() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .hba_method("scram-sha-256")
        .start()
        .await?;
    pg.create_user("repl", "pw", true).await?;
    prepare(&pg, "repl").await?;
    // sslmode=prefer against a server without TLS: the connection falls back to plain.
    let url = pg.url_with_params(
        "repl",
        "pw",
        "postgres",
        "sslmode=prefer&channel_binding=require",
    );
    fails_with(&url, &["channel_binding=require", "scram"]).await?;
    // sslmode=disable cannot bind at all: the configuration is refused before connecting.
    let url = pg.url_with_params(
        "repl",
        "pw",
        "postgres",
        "sslmode=disable&channel_binding=require",
    );
    let (_state, cfg) = config_for(&url)?;
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    let text = format!("{out}{err}");
    ensure!(
        code != 0 && text.contains("channel_binding=require needs TLS") && !text.contains("pw@"),
        "({code}) {text}"
    );
    Ok(())
}

/// libpq's environment and password file: a `key=value` source that names only the
/// database gets host, port and user from PG* variables and the password from the file
/// PGPASSFILE names (owner-only, wildcard port), in `check` and `run`.
#[tokio::test(flavor = "multi_thread")]
async fn pg_environment_and_password_file_fill_in_the_source() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .hba_method("scram-sha-256")
        .start()
        .await?;
    pg.create_user("repl", "from:file", true).await?;
    prepare(&pg, "repl").await?;
    let dir = tempfile::tempdir()?;
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        "# pgcdc test\nother:*:*:repl:wrong\n127.0.0.1:*:postgres:repl:from\\:file\n",
    )?;
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let port = pg.port().to_string();
    let passfile_arg = passfile.to_string_lossy().into_owned();
    let env = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", "repl"),
        ("PGSSLMODE", "disable"),
        ("PGPASSFILE", passfile_arg.as_str()),
    ];
    let (_state, cfg) = config_for("dbname=postgres")?;
    let (code, out, err) = e2e_fixture::run_output_env(
        &pgcdc_tests::pgcdc_bin(),
        &["check", "--config", &cfg.arg()],
        &env,
    )
    .await?;
    ensure!(code == 0, "check failed ({code}):\n{out}{err}");
    ensure!(
        out.contains("repl@127.0.0.1:"),
        "the source line names the env's user and host:\n{out}"
    );
    let mut p = Pgcdc::spawn(&["run", "--config", &cfg.arg()], &env)?;
    pgcdc_tests::wait_streaming(&pg, &mut p).await?;
    pg.execute("INSERT INTO permits VALUES (7, 'new')").await?;
    let line = p
        .next_line(Duration::from_secs(30))
        .await
        .with_context(|| format!("no event; stderr:\n{}", p.stderr_tail(30)))?;
    ensure!(line.contains("\"op\":\"insert\""), "{line}");
    ensure!(
        !p.stderr().contains("from:file"),
        "the password reached the log"
    );
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());

    // A password file others may read is ignored (with a warning), as libpq does.
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let (code, out, err) = e2e_fixture::run_output_env(
        &pgcdc_tests::pgcdc_bin(),
        &["check", "--config", &cfg.arg()],
        &env,
    )
    .await?;
    ensure!(
        code == 1 && out.contains("password file") && err.contains("group or world access"),
        "check must fail without the ignored file's password ({code}):\n{out}{err}"
    );
    Ok(())
}
