//! End to end: the admin API tried as an attacker would. Without `admin.token`,
//! pgcdc generates one (owner-only, in the state directory): a `POST /api/resync`
//! whose `where` calls `pg_terminate_backend` is refused and kills nobody; a
//! DNS-rebinding `Host`, a cross-origin request and a form-encoded body are refused
//! even with the token; the CLI prints the token and it works; a `where` that writes
//! or runs too long fails its resync (read-only transaction, statement timeout).
//! With `admin.token` set on a non-loopback address, row data needs the token while
//! probes and `/metrics` stay open.

mod e2e_fixture;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{admin_token, pgcdc_output, start_streaming, status_json};
use pgcdc_tests::{free_port, state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::{json, Value};

/// A `where` that, run with pgcdc's role, terminates every other client session.
const KILL_EVERYONE: &str = "(SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) >= 0";

fn config(url: &str, state: &Path, admin: &str, source_extra: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\ntables = [\"public.items\"]\n{source_extra}\n\n\
         [state]\ndir = \"{}\"\n\n[admin]\n{admin}\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stdout\"\n",
        state.display()
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}

/// Sends `req`: (status, body text).
async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<(u16, String)> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

/// A JSON `POST /api/resync`, with the token when given.
fn resync(base: &str, token: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    let req = client()
        .post(format!("{base}/api/resync"))
        .header("content-type", "application/json")
        .body(body.to_string());
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

async fn resyncs(cfg: &ConfigFile) -> anyhow::Result<Vec<Value>> {
    Ok(status_json(cfg).await?["resyncs"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits until resync `id` is in a final state; returns it.
async fn finished(cfg: &ConfigFile, id: &Value) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = resyncs(cfg)
            .await?
            .into_iter()
            .find(|r| &r["id"] == id)
            .unwrap_or(Value::Null);
        if matches!(r["state"].as_str(), Some("done" | "failed" | "cancelled")) {
            return Ok(r);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "resync {id} not finished: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_configured_token_the_api_refuses_strangers_and_the_cli_token_works(
) -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE items (id int PRIMARY KEY, v text); \
         INSERT INTO items VALUES (1, 'a'), (2, 'b'); \
         CREATE TABLE loot (n int); \
         CREATE FUNCTION leak() RETURNS bool LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO loot VALUES (1); RETURN true; END $$;",
    )
    .await?;
    let state = state_dir()?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        &format!("listen = \"127.0.0.1:{port}\""),
        "resync_statement_timeout = \"2s\"",
    ))?;
    let _p = start_streaming(&pg, &cfg).await?;

    // The generated token: in the state directory, owner-only; the CLI prints it.
    let file = state.path().join("admin.token");
    let mode = std::fs::metadata(&file)
        .with_context(|| format!("{} was not generated", file.display()))?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "token file mode {:o}", mode & 0o777);
    let token = admin_token(&cfg).await?;
    ensure!(token.len() >= 32, "a short token: {} chars", token.len());
    let (code, url, err) = pgcdc_output(&["admin-token", "--config", &cfg.arg(), "--url"]).await?;
    ensure!(
        code == 0 && url.trim() == format!("{base}/#token={token}"),
        "admin-token --url: {code} {url} {err}"
    );

    // The attack: a session of the portal, then a resync whose where kills it.
    let victim = pg.client().await?;
    let attack = json!({ "table": "public.items", "where": KILL_EVERYONE });
    let (code, body) = send(resync(&base, None, &attack)).await?;
    ensure!(
        code == 401 && body.contains("admin-token"),
        "no token: {code} {body}"
    );
    let (code, body) = send(resync(&base, Some("guess"), &attack)).await?;
    ensure!(code == 403, "a wrong token: {code} {body}");

    // With the token, a browser-borne request is still refused: DNS rebinding,
    // cross-origin, a form body.
    let (code, body) = send(
        resync(&base, Some(&token), &attack)
            .header("host", format!("rebind.attacker.example:{port}")),
    )
    .await?;
    ensure!(
        code == 403 && body.contains("admin.allowed_hosts"),
        "rebinding Host: {code} {body}"
    );
    let (code, body) =
        send(resync(&base, Some(&token), &attack).header("origin", "http://attacker.example"))
            .await?;
    ensure!(
        code == 403 && body.contains("cross-origin"),
        "cross-origin: {code} {body}"
    );
    let (code, body) =
        send(resync(&base, Some(&token), &attack).header("sec-fetch-site", "cross-site")).await?;
    ensure!(code == 403, "Sec-Fetch-Site cross-site: {code} {body}");
    let form = client()
        .post(format!("{base}/api/resync"))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("table=public.items&where=true");
    let (code, body) = send(form).await?;
    ensure!(code == 415, "form body: {code} {body}");
    let plain = client()
        .post(format!("{base}/api/resync"))
        .header("content-type", "text/plain")
        .body(attack.to_string());
    let (code, _) = send(plain).await?;
    ensure!(code == 415, "text/plain body: {code}");

    // Nothing was queued, and the portal's session lives.
    ensure!(
        resyncs(&cfg).await?.is_empty(),
        "a refused request queued a resync"
    );
    victim
        .simple_query("SELECT 1")
        .await
        .context("the portal's session was killed")?;

    // The token works: a plain resync runs.
    let (code, body) = send(resync(
        &base,
        Some(&token),
        &json!({ "table": "public.items", "where": "id = 1" }),
    ))
    .await?;
    ensure!(code == 200, "with the token: {code} {body}");
    let id = serde_json::from_str::<Value>(&body)?["id"].clone();
    let r = finished(&cfg, &id).await?;
    ensure!(r["state"] == "done" && r["rows"] == 1, "{r}");

    // A where that writes fails in the read-only transaction; nothing is written.
    let (code, body) = send(resync(
        &base,
        Some(&token),
        &json!({ "table": "public.items", "where": "leak()" }),
    ))
    .await?;
    ensure!(code == 200, "{code} {body}");
    let id = serde_json::from_str::<Value>(&body)?["id"].clone();
    let r = finished(&cfg, &id).await?;
    ensure!(
        r["state"] == "failed"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("read-only transaction")),
        "a writing where: {r}"
    );
    let loot: i64 = pg
        .client()
        .await?
        .query_one("SELECT count(*) FROM loot", &[])
        .await?
        .get(0);
    ensure!(loot == 0, "the where wrote {loot} row(s)");

    // A where that runs too long is cancelled by the statement timeout.
    let (code, body) = send(resync(
        &base,
        Some(&token),
        &json!({ "table": "public.items", "where": "(SELECT true FROM pg_sleep(5))" }),
    ))
    .await?;
    ensure!(code == 200, "{code} {body}");
    let id = serde_json::from_str::<Value>(&body)?["id"].clone();
    let r = finished(&cfg, &id).await?;
    ensure!(
        r["state"] == "failed"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("resync_statement_timeout")),
        "a slow where: {r}"
    );
    victim.simple_query("SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_row_data_needs_it_and_probes_stay_open() -> anyhow::Result<()> {
    const TOKEN: &str = "pod-network-t0ken-0123456789";
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await?;
    let state = state_dir()?;
    let port = free_port()?;
    // Reachable from other hosts, as in a pod.
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        &format!("listen = \"0.0.0.0:{port}\"\ntoken = \"{TOKEN}\""),
        "",
    ))?;
    let _p = start_streaming(&pg, &cfg).await?;
    let base = format!("http://127.0.0.1:{port}");
    ensure!(
        !state.path().join("admin.token").exists(),
        "a token was generated although admin.token is set"
    );
    wait_until_msg(Duration::from_secs(30), "/readyz 200", || async {
        matches!(
            send(client().get(format!("{base}/readyz"))).await,
            Ok((200, _))
        )
    })
    .await;

    for path in ["/api/status", "/api/sinks/out/dlq", "/api/audit?sink=out"] {
        let (code, body) = send(client().get(format!("{base}{path}"))).await?;
        ensure!(code == 401, "{path} without the token: {code} {body}");
        let (code, body) = send(client().get(format!("{base}{path}")).bearer_auth(TOKEN)).await?;
        ensure!(code == 200, "{path} with the token: {code} {body}");
    }
    // Probes and scrapes need nothing, under a Service's name too.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let req = client()
            .get(format!("{base}{path}"))
            .header("host", format!("pgcdc.monitoring.svc:{port}"));
        let (code, body) = send(req).await?;
        ensure!(code == 200, "{path}: {code} {body}");
    }
    let (code, _) = send(
        client()
            .get(format!("{base}/api/status"))
            .bearer_auth(TOKEN)
            .header("host", format!("pgcdc.monitoring.svc:{port}")),
    )
    .await?;
    ensure!(code == 403, "row data under a name not allowed: {code}");
    // The CLI prints the configured token.
    ensure!(admin_token(&cfg).await? == TOKEN);
    Ok(())
}
