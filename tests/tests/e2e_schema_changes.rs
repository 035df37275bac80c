//! End to end: schema changes mid-stream. A sink with `schema_changes = true`
//! receives a `schema` event (columns after, columns before) in stream order,
//! right before the first change written under the new shape: a column added,
//! renamed, retyped, dropped (across a kill -9 between the DDL and the next
//! change), a new primary key. Row events are decoded with the shape in force
//! when they were written. Other sinks see only row changes.

mod e2e_fixture;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{
    config_toml, config_toml_sqlite, hold_synchronous_commits, next_events,
    release_synchronous_commits, spawn_run, start_streaming,
};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster, Pgcdc};
use serde_json::{json, Value};

fn cols(spec: &[(&str, &str, bool)]) -> Value {
    Value::Array(
        spec.iter()
            .map(|(n, t, k)| json!({"name": n, "type": t, "key": k}))
            .collect(),
    )
}

/// The next events, each once (a restart may show the last ones again, same ids).
async fn next_unique(
    p: &mut Pgcdc,
    seen: &mut HashSet<String>,
    n: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    while out.len() < n {
        for ev in next_events(p, 1, Duration::from_secs(60)).await? {
            let id = ev["id"].as_str().context("event id")?.to_owned();
            if seen.insert(id) {
                out.push(ev);
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_events_come_before_the_first_change_under_the_new_shape() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.permits"],
        state.path(),
        "schema_changes = true\n",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut seen = HashSet::new();

    // First sight of the table: its shape is learnt, no event.
    pg.execute("INSERT INTO permits VALUES (1, 'a')").await?;
    let ev = next_unique(&mut p, &mut seen, 1).await?;
    ensure!(ev[0]["op"] == "insert", "{}", ev[0]);

    pg.batch(
        "ALTER TABLE permits ADD COLUMN note text;
         INSERT INTO permits VALUES (2, 'b', 'n');",
    )
    .await?;
    let ev = next_unique(&mut p, &mut seen, 2).await?;
    ensure!(ev[0]["op"] == "schema", "{}", ev[0]);
    ensure!(
        ev[0]["schema"] == "public" && ev[0]["table"] == "permits",
        "{}",
        ev[0]
    );
    ensure!(
        ev[0]["columns"]
            == cols(&[
                ("id", "int4", true),
                ("status", "text", false),
                ("note", "text", false)
            ])
            && ev[0]["previous"] == cols(&[("id", "int4", true), ("status", "text", false)]),
        "an added column: {}",
        ev[0]
    );
    ensure!(ev[0]["lsn"] == ev[1]["lsn"] && ev[0]["id"].as_str() < ev[1]["id"].as_str());
    ensure!(
        ev[1]["new"] == json!({"id": 2, "status": "b", "note": "n"}),
        "{}",
        ev[1]
    );

    pg.batch(
        "ALTER TABLE permits RENAME COLUMN note TO remark;
         UPDATE permits SET remark = 'r' WHERE id = 2;",
    )
    .await?;
    let ev = next_unique(&mut p, &mut seen, 2).await?;
    ensure!(
        ev[0]["op"] == "schema" && ev[0]["columns"][2]["name"] == "remark",
        "a renamed column: {}",
        ev[0]
    );
    ensure!(
        ev[1]["new"] == json!({"id": 2, "status": "b", "remark": "r"}),
        "{}",
        ev[1]
    );

    pg.batch(
        "ALTER TABLE permits ALTER COLUMN id TYPE bigint;
         INSERT INTO permits VALUES (9007199254740993, 'c', NULL);",
    )
    .await?;
    let ev = next_unique(&mut p, &mut seen, 2).await?;
    ensure!(
        ev[0]["op"] == "schema"
            && ev[0]["columns"][0] == json!({"name": "id", "type": "int8", "key": true}),
        "a retyped column: {}",
        ev[0]
    );
    ensure!(
        serde_json::to_string(&ev[1]["new"]["id"])? == "9007199254740993",
        "values typed by the new type: {}",
        ev[1]
    );

    // kill -9 between the DDL and the next change.
    p.kill9()?;
    pg.execute("ALTER TABLE permits DROP COLUMN remark").await?;
    let mut p = spawn_run(&cfg)?;
    pg.execute("INSERT INTO permits VALUES (4, 'd')").await?;
    let ev = next_unique(&mut p, &mut seen, 2).await?;
    ensure!(
        ev[0]["op"] == "schema"
            && ev[0]["columns"] == cols(&[("id", "int8", true), ("status", "text", false)])
            && ev[0]["previous"]
                == cols(&[
                    ("id", "int8", true),
                    ("status", "text", false),
                    ("remark", "text", false)
                ]),
        "a dropped column, seen after a restart: {}",
        ev[0]
    );
    ensure!(ev[1]["new"] == json!({"id": 4, "status": "d"}), "{}", ev[1]);

    pg.batch(
        "ALTER TABLE permits DROP CONSTRAINT permits_pkey, ADD PRIMARY KEY (id, status);
         INSERT INTO permits VALUES (5, 'e');",
    )
    .await?;
    let ev = next_unique(&mut p, &mut seen, 2).await?;
    ensure!(
        ev[0]["op"] == "schema"
            && ev[0]["columns"] == cols(&[("id", "int8", true), ("status", "text", true)]),
        "a new primary key: {}",
        ev[0]
    );
    ensure!(ev[1]["key"] == json!({"id": 5, "status": "e"}), "{}", ev[1]);

    // A restart without DDL brings no schema event: the shapes are stored.
    p.kill9()?;
    let mut p = spawn_run(&cfg)?;
    pg.execute("INSERT INTO permits VALUES (6, 'f')").await?;
    let ev = next_unique(&mut p, &mut seen, 1).await?;
    ensure!(
        ev[0]["op"] == "insert",
        "no schema event without a change: {}",
        ev[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_without_schema_changes_sees_only_rows() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.permits"],
        state.path(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(
        "INSERT INTO permits VALUES (1, 'a');
         ALTER TABLE permits ADD COLUMN note text;
         INSERT INTO permits VALUES (2, 'b', 'n');",
    )
    .await?;
    let ev = next_events(&mut p, 2, Duration::from_secs(60)).await?;
    ensure!(
        ev.iter().all(|e| e["op"] == "insert"),
        "only row changes: {ev:?}"
    );
    ensure!(
        ev[1]["new"] == json!({"id": 2, "status": "b", "note": "n"}),
        "{}",
        ev[1]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_capture_reports_a_schema_change_when_its_ddl_commits() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    let text = config_toml(
        &pg.url(),
        &["public.permits"],
        state.path(),
        "schema_changes = true\n",
    )
    .replace("tables = [", "ddl_capture = true\ntables = [");
    let cfg = ConfigFile::new(&text)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let triggers: i64 = pg
        .query_scalar("SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgcdc_ddl_pgcdc'")
        .await?;
    ensure!(triggers == 1, "the event trigger is installed");

    pg.execute("INSERT INTO permits VALUES (1, 'a')").await?;
    let ev = next_events(&mut p, 1, Duration::from_secs(60)).await?;
    ensure!(ev[0]["op"] == "insert", "{}", ev[0]);

    // No write after the DDL: only the trigger's message can report it.
    pg.execute("ALTER TABLE permits ADD COLUMN note text")
        .await?;
    let ev = next_events(&mut p, 1, Duration::from_secs(60)).await?;
    ensure!(
        ev[0]["op"] == "schema"
            && ev[0]["columns"]
                == cols(&[
                    ("id", "int4", true),
                    ("status", "text", false),
                    ("note", "text", false)
                ]),
        "the schema event comes when the DDL commits: {}",
        ev[0]
    );
    // The next write's Relation message finds the shape known: no second event.
    pg.execute("INSERT INTO permits VALUES (2, 'b', 'n')")
        .await?;
    let ev = next_events(&mut p, 1, Duration::from_secs(60)).await?;
    ensure!(ev[0]["op"] == "insert", "{}", ev[0]);

    p.terminate()?;
    p.wait_exit(Duration::from_secs(30)).await;
    let (code, out, err) =
        e2e_fixture::pgcdc_output(&["teardown", "--config", &cfg.arg(), "--yes"]).await?;
    ensure!(code == 0, "teardown: {out}\n{err}");
    ensure!(
        out.contains("dropped event trigger pgcdc_ddl_pgcdc"),
        "{out}"
    );
    let triggers: i64 = pg
        .query_scalar("SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgcdc_ddl_pgcdc'")
        .await?;
    ensure!(triggers == 0, "teardown removes the event trigger");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_reading_a_dropped_column_says_so_once() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text, region text)")
        .await?;
    let state = state_dir()?;
    // Two sinks see the schema change; the log says it once, not per sink or event.
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.permits"],
        state.path(),
        "tables = [\"public.permits\"]\nevents = [\"northApproved\"]\n\n\
         [[sink]]\nname = \"quiet\"\ntype = \"stdout\"\nevents = [\"northApproved\"]\n\
         filter = \"false\"\n\n\
         [[trigger]]\nname = \"northApproved\"\ntable = \"public.permits\"\n\
         when = '.new.status == \"approved\" and .new.region == \"north\"'\n",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let mut seen = HashSet::new();
    pg.execute("INSERT INTO permits VALUES (1, 'approved', 'north')")
        .await?;
    let ev = next_unique(&mut p, &mut seen, 1).await?;
    ensure!(ev[0]["trigger"] == "northApproved", "{}", ev[0]);

    pg.batch(
        "ALTER TABLE permits DROP COLUMN region;
         UPDATE permits SET status = 'approved' WHERE id = 1;
         UPDATE permits SET status = 'revoked' WHERE id = 1;
         INSERT INTO permits VALUES (2, 'approved');",
    )
    .await?;
    let ev = next_unique(&mut p, &mut seen, 3).await?;
    ensure!(
        ev.iter()
            .all(|e| e["op"] != "schema" && e["trigger"].is_null()),
        "{ev:?}"
    );
    let warning = "reads columns the table no longer has";
    let said = p.stderr().matches(warning).count();
    ensure!(said == 1, "said {said} times:\n{}", p.stderr_tail(40));
    ensure!(
        p.stderr().contains("northApproved") && p.stderr().contains("region"),
        "{}",
        p.stderr_tail(40)
    );
    Ok(())
}

/// A migration that creates a domain and an array of it, adds columns of them and
/// writes a row, in one transaction, reaches pgcdc before the domain is visible
/// to its catalog queries (here its commit waits for a synchronous standby):
/// the reader waits until it is, so the values keep their meaning (a number,
/// an array of numbers), not the text a type it could not find would give.
#[tokio::test(flavor = "multi_thread")]
async fn a_type_created_with_its_first_row_is_looked_up_once_visible() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    hold_synchronous_commits(&pg).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml_sqlite(
        &pg.url(),
        &["public.permits"],
        state.path(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let migration = pg.client().await?;
    migration
        .batch_execute("SET synchronous_commit = on")
        .await?;
    let held = tokio::spawn(async move {
        migration
            .batch_execute(
                "BEGIN;
                 CREATE DOMAIN floors AS int4 CHECK (VALUE >= 0);
                 ALTER TABLE permits ADD COLUMN height floors, ADD COLUMN levels floors[];
                 INSERT INTO permits VALUES (1, 'a', 5, '{1,2}');
                 COMMIT;",
            )
            .await
    });
    // pgcdc has the transaction now; the domain is not visible yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(!held.is_finished(), "the migration did not wait");
    let visible: i64 = pg
        .query_scalar("SELECT count(*) FROM pg_type WHERE typname = 'floors'")
        .await?;
    ensure!(visible == 0, "the domain is already visible");
    release_synchronous_commits(&pg).await?;
    held.await??;
    let ev = next_events(&mut p, 1, Duration::from_secs(60)).await?;
    ensure!(
        ev[0]["op"] == "insert" && ev[0]["new"]["height"] == json!(5),
        "{}\n{}",
        ev[0],
        p.stderr_tail(30)
    );
    ensure!(ev[0]["new"]["levels"] == json!([1, 2]), "{}", ev[0]);
    Ok(())
}
