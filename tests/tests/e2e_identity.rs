//! Table identity: a captured table is matched by OID, not by name. Renamed
//! while pgcdc runs, its changes keep flowing (with the new name) to the same
//! sinks and triggers, a warning names old and new, and a restart with the old
//! name still in the config captures it. A relation pgcdc cannot place stops it
//! instead of being skipped.

mod e2e_fixture;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{pgcdc_output, start_streaming, stderr_with};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::Value;

/// `permits` and `notes` (referencing it) captured; the stdout sink takes only
/// `public.permits` and an HTTP sink takes the `permitApproved` trigger's events:
/// both route by the configured name.
fn config(url: &str, state: &Path, receiver: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"
tables = ["public.permits", "public.notes"]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:0"

[[trigger]]
name = "permitApproved"
table = "public.permits"
when = '.old.status != "approved" and .new.status == "approved"'

[[sink]]
name = "out"
type = "stdout"
tables = ["public.permits"]

[[sink]]
name = "registry"
type = "http"
events = ["permitApproved"]
url = "{receiver}/api/permits"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
        state = state.display()
    )
}

const SCHEMA: &str = "CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL);
     CREATE TABLE notes (id int PRIMARY KEY, permit_id int REFERENCES permits(id))";

fn parse(line: &str) -> anyhow::Result<Value> {
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

/// (op, table, key id) of a stdout line.
fn summary(v: &Value) -> (String, String, i64) {
    (
        v["op"].as_str().unwrap_or_default().to_string(),
        format!(
            "{}.{}",
            v["schema"].as_str().unwrap_or_default(),
            v["table"].as_str().unwrap_or_default()
        ),
        v["key"]["id"].as_i64().unwrap_or(-1),
    )
}

async fn next_summaries(
    p: &mut pgcdc_tests::Pgcdc,
    n: usize,
) -> anyhow::Result<Vec<(String, String, i64)>> {
    let lines = p.collect_lines(n, Duration::from_secs(30)).await;
    ensure!(
        lines.len() == n,
        "expected {n} events, got {lines:?}; stderr:\n{}",
        p.stderr_tail(20)
    );
    lines
        .iter()
        .map(|l| parse(l).map(|v| summary(&v)))
        .collect()
}

fn s(op: &str, table: &str, id: i64) -> (String, String, i64) {
    (op.to_string(), table.to_string(), id)
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_table_stays_captured_routed_and_accepted_at_restart() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(SCHEMA).await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url()))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    pg.execute("INSERT INTO permits VALUES (1, 'new')").await?;
    ensure!(next_summaries(&mut p, 1).await? == [s("insert", "public.permits", 1)]);

    pg.batch("ALTER TABLE permits RENAME TO permits_v2").await?;
    pg.batch(
        "INSERT INTO permits_v2 VALUES (2, 'new');
         UPDATE permits_v2 SET status = 'approved' WHERE id = 1;
         DELETE FROM permits_v2 WHERE id = 2;
         INSERT INTO notes VALUES (10, 1);
         TRUNCATE permits_v2 CASCADE;",
    )
    .await?;
    // notes is not routed to `out`; its rows and truncate are journaled all the same.
    let got = next_summaries(&mut p, 4).await?;
    ensure!(
        got == [
            s("insert", "public.permits_v2", 2),
            s("update", "public.permits_v2", 1),
            s("delete", "public.permits_v2", 2),
            s("truncate", "public.permits_v2", -1),
        ],
        "{got:?}"
    );
    // The trigger on the configured name fired for the renamed table, with `.old`
    // from the row state kept under the table's identity.
    wait_until_msg(Duration::from_secs(30), "permitApproved delivered", || {
        let n = rx.requests().len();
        async move { n >= 1 }
    })
    .await;
    let reqs = rx.requests();
    ensure!(reqs.len() == 1, "{} requests", reqs.len());
    let body = reqs[0].json();
    ensure!(
        body["trigger"] == "permitApproved" && body["table"] == "permits_v2",
        "{body}"
    );
    let log = stderr_with(&p, &["renamed", "public.permits_v2"]).await;
    ensure!(
        log.contains("renamed")
            && log.contains("from=public.permits ")
            && log.contains("to=public.permits_v2"),
        "the rename must be warned about, naming old and new: {log}"
    );

    // The truncate reached the journal for both tables (the child's too).
    let truncates = journal_truncates(state.path())?;
    ensure!(
        truncates == ["public.notes", "public.permits"],
        "journaled truncates by table identity: {truncates:?}"
    );

    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());

    // The config still says public.permits: `check` and `run` accept it, by OID.
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    ensure!(
        code == 0 && out.contains("renamed to public.permits_v2"),
        "check with the old name: {out}{err}"
    );
    let mut p = start_streaming(&pg, &cfg).await?;
    let log = stderr_with(&p, &["renamed", "update source.tables"]).await;
    ensure!(
        log.contains("renamed") && log.contains("now=public.permits_v2"),
        "{log}"
    );
    pg.execute("INSERT INTO permits_v2 VALUES (3, 'new')")
        .await?;
    ensure!(next_summaries(&mut p, 1).await? == [s("insert", "public.permits_v2", 3)]);
    Ok(())
}

/// Tables whose `truncate` events the journal holds, by the journal's table column.
fn journal_truncates(state: &Path) -> anyhow::Result<Vec<String>> {
    let mut tables: Vec<String> = e2e_fixture::journal_events(state)?
        .into_iter()
        .filter(|e| e.event.op == pgcdc_schema::Op::Truncate)
        .map(|e| e.table.to_string())
        .collect();
    tables.sort();
    Ok(tables)
}

/// A table that joins the publication while pgcdc runs is not skipped quietly: pgcdc
/// stops, naming it, before confirming its changes; the next start lists it as not
/// captured and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn relation_joining_the_publication_stops_then_is_listed_at_restart() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL);
         CREATE TABLE notes (id int PRIMARY KEY, permit_id int);
         CREATE TABLE extra (id int PRIMARY KEY);
         CREATE PUBLICATION pgcdc FOR TABLE permits, notes",
    )
    .await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), &rx.url()))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("ALTER PUBLICATION pgcdc ADD TABLE extra; INSERT INTO extra VALUES (1)")
        .await?;
    let status = p
        .wait_exit(Duration::from_secs(30))
        .await
        .context("pgcdc must stop on a relation it cannot place")?;
    ensure!(!status.success());
    let log = stderr_with(&p, &["public.extra", "source.tables"]).await;
    ensure!(
        log.contains("public.extra") && log.contains("fix:"),
        "the error must name the table and the fix: {log}"
    );

    let mut p = start_streaming(&pg, &cfg).await?;
    let log = stderr_with(&p, &["not in source.tables"]).await;
    ensure!(
        log.contains("public.extra") && log.contains("not in source.tables"),
        "{log}"
    );
    pg.batch("INSERT INTO extra VALUES (2); INSERT INTO permits VALUES (7, 'new')")
        .await?;
    ensure!(next_summaries(&mut p, 1).await? == [s("insert", "public.permits", 7)]);
    Ok(())
}
