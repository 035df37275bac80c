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
