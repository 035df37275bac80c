//! The publication pgcdc creates and checks: a partitioned table published via its
//! root (events carry the root's name; partitions attached and detached while
//! streaming; the snapshot reads every partition once), per-table row filters and
//! column lists (PostgreSQL 15+; the snapshot honours them too; checked against an
//! existing publication; refused
//! when they would make the application's UPDATE and DELETE fail; refused on 14),
//! and PostgreSQL 18's generated columns when asked for.

mod e2e_fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use e2e_fixture::{pgcdc_output, start_streaming};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster, Pgcdc};
use serde_json::Value;

/// `[source]` with `tables_toml` verbatim (and `extra_source` lines), one stdout sink.
fn config(url: &str, state: &Path, tables_toml: &str, extra_source: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\ntables = {tables_toml}\n{extra_source}\n\n[state]\ndir = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[[sink]]\nname = \"out\"\ntype = \"stdout\"\n",
        state.display()
    )
}

/// The next stdout event, within 30 s.
async fn next_event(p: &mut Pgcdc) -> anyhow::Result<Value> {
    let line = p
        .next_line(Duration::from_secs(30))
        .await
        .with_context(|| format!("no event; stderr:\n{}", p.stderr_tail(30)))?;
    serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
}

/// `pgcdc check`: (passed, stdout + stderr).
async fn check(cfg: &ConfigFile) -> anyhow::Result<(bool, String)> {
    let (code, out, err) = pgcdc_output(&["check", "--config", &cfg.arg()]).await?;
    Ok((code == 0, format!("{out}{err}")))
}

const READINGS: &str = "
    CREATE TABLE readings (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE readings_north PARTITION OF readings FOR VALUES IN ('north');
    CREATE TABLE readings_south PARTITION OF readings FOR VALUES IN ('south');
    INSERT INTO readings SELECT g, CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END, g FROM generate_series(1, 40) g";

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_table_is_published_via_its_root() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(READINGS).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        "[\"public.readings\"]",
        "snapshot = \"initial\"",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let via_root: bool = pg
        .query_scalar("SELECT pubviaroot FROM pg_publication WHERE pubname = 'pgcdc'")
        .await?;
    ensure!(
        via_root,
        "the publication was not created with publish_via_partition_root = true"
    );

    // The snapshot reads the root: every partition's rows, each once, under the root's name.
    let mut reads = BTreeMap::new();
    while reads.len() < 40 {
        let ev = next_event(&mut p).await?;
        ensure!(ev["op"] == "read" && ev["table"] == "readings", "{ev}");
        *reads
            .entry(ev["key"]["id"].as_i64().unwrap_or(-1))
            .or_insert(0) += 1;
    }
    ensure!(
        reads.keys().copied().eq(1..=40) && reads.values().all(|n| *n == 1),
        "snapshot rows: {reads:?}"
    );

    // Streamed changes of every partition carry the root's name.
    pg.batch("INSERT INTO readings VALUES (101, 'north', 1), (102, 'south', 2)")
        .await?;
    for id in [101, 102] {
        let ev = next_event(&mut p).await?;
        ensure!(
            ev["op"] == "insert" && ev["table"] == "readings" && ev["key"]["id"] == id,
            "{ev}"
        );
    }

    // A partition attached while streaming flows; a detached one stops.
    pg.batch(
        "CREATE TABLE readings_east (LIKE readings);
         ALTER TABLE readings ATTACH PARTITION readings_east FOR VALUES IN ('east');
         INSERT INTO readings VALUES (103, 'east', 3);
         ALTER TABLE readings DETACH PARTITION readings_south;
         INSERT INTO readings_south VALUES (104, 'south', 4);
         INSERT INTO readings VALUES (105, 'north', 5);
         UPDATE readings SET v = 30 WHERE id = 103",
    )
    .await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next_event(&mut p).await?;
        ensure!(ev["table"] == "readings", "{ev}");
        seen.push((
            ev["op"].as_str().unwrap_or_default().to_string(),
            ev["key"]["id"].as_i64().unwrap_or(-1),
        ));
    }
    ensure!(
        seen == [
            ("insert".into(), 103),
            ("insert".into(), 105),
            ("update".into(), 103)
        ],
        "after attach/detach: {seen:?} (104 went to a detached partition)"
    );
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());
    Ok(())
}

const PERMITS: &str = "
    CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL, secret text, notes text)";

#[tokio::test(flavor = "multi_thread")]
async fn row_filters_and_column_lists_go_into_the_publication() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    let state = state_dir()?;
    let filtered =
        "[{ name = \"public.permits\", where = \"id > 100\", columns = [\"id\", \"status\"] }]";
    pg.batch("INSERT INTO permits VALUES (7, 'old', 's7', 'n'), (120, 'old', 's120', 'n')")
        .await?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        filtered,
        "snapshot = \"initial\"",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    // The snapshot copies what the publication would send: row 120, id and status.
    let ev = next_event(&mut p).await?;
    ensure!(
        ev["op"] == "read"
            && ev["key"]["id"] == 120
            && ev["new"] == serde_json::json!({"id": 120, "status": "old"}),
        "snapshot of a filtered table: {ev}"
    );
    let filter: String = pg
        .query_scalar("SELECT rowfilter FROM pg_publication_tables WHERE pubname = 'pgcdc' AND tablename = 'permits'")
        .await?;
    ensure!(
        filter.contains("id > 100"),
        "row filter in the publication: {filter}"
    );

    pg.batch(
        "INSERT INTO permits VALUES (5, 'draft', 's5', 'n'), (150, 'draft', 's150', 'n');
         UPDATE permits SET status = 'approved', secret = 'x' WHERE id IN (5, 150);
         DELETE FROM permits WHERE id IN (5, 150)",
    )
    .await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next_event(&mut p).await?;
        ensure!(
            ev["key"]["id"] == 150,
            "a filtered-out row left the server: {ev}"
        );
        let row = if ev["op"] == "delete" {
            &ev["old"]
        } else {
            &ev["new"]
        };
        let columns: Vec<&str> = row
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        ensure!(
            columns.iter().all(|c| ["id", "status"].contains(c)),
            "unpublished columns arrived: {ev}"
        );
        seen.push(ev["op"].as_str().unwrap_or_default().to_string());
    }
    ensure!(seen == ["insert", "update", "delete"], "{seen:?}");
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());

    // The existing publication no longer matches a changed filter: check names both and the fix.
    cfg.rewrite(&config(
        &pg.url(),
        state.path(),
        &filtered.replace("id > 100", "id > 200"),
        "",
    ))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed
            && out.contains("(id > 100)")
            && out.contains("id > 200")
            && out.contains("ALTER PUBLICATION \"pgcdc\" SET TABLE"),
        "check with a changed filter: {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_that_would_break_updates_is_refused() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(PERMITS).await?;
    pg.batch("INSERT INTO permits VALUES (1, 'draft', 's', 'n')")
        .await?;
    let state = state_dir()?;
    // `status` is outside the replica identity (the primary key): Postgres would
    // make every UPDATE and DELETE of permits fail under this filter.
    let on_status = "[{ name = \"public.permits\", where = \"status <> 'draft'\" }]";
    let cfg = ConfigFile::new(&config(&pg.url(), state.path(), on_status, ""))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed
            && out.contains("outside the replica identity")
            && out.contains("REPLICA IDENTITY")
            && out.contains("publish = \"insert\""),
        "check of a filter on status: {out}"
    );
    // A column list without the key, the same.
    let no_key = "[{ name = \"public.permits\", columns = [\"status\"] }]";
    cfg.rewrite(&config(&pg.url(), state.path(), no_key, ""))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed && out.contains("leaves out id"),
        "check of a list without the key: {out}"
    );

    // `run` refuses too, before creating anything: the application's updates go on.
    cfg.rewrite(&config(&pg.url(), state.path(), on_status, ""))?;
    let mut p = e2e_fixture::spawn_run(&cfg)?;
    let exited = p.wait_exit(Duration::from_secs(60)).await;
    ensure!(
        exited.is_some_and(|s| !s.success()),
        "run started with the filter: {}",
        p.stderr_tail(20)
    );
    let publications: i64 = pg
        .query_scalar("SELECT count(*) FROM pg_publication")
        .await?;
    ensure!(publications == 0, "a publication was created");
    pg.execute("UPDATE permits SET status = 'approved' WHERE id = 1")
        .await?;

    // A publication found with such a filter is refused the same way.
    pg.batch("CREATE PUBLICATION pgcdc FOR TABLE permits WHERE (status <> 'draft')")
        .await?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed
            && out.contains("outside the replica identity")
            && out.contains("ALTER PUBLICATION \"pgcdc\" SET (publish = 'insert')"),
        "check of the existing publication: {out}"
    );
    // Publishing inserts only is the other fix: then the filter is safe and accepted.
    pg.batch("ALTER PUBLICATION pgcdc SET (publish = 'insert')")
        .await?;
    cfg.rewrite(&config(
        &pg.url(),
        state.path(),
        on_status,
        "publish = \"insert\"",
    ))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(passed, "check with publish = insert: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_14_refuses_filters_and_generated_columns_clearly() -> anyhow::Result<()> {
    let pg = PgCluster::builder().version(14).start().await?;
    pg.batch(PERMITS).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        "[{ name = \"public.permits\", where = \"id > 100\" }]",
        "",
    ))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed && out.contains("only from PostgreSQL 15") && out.contains("the source runs 14"),
        "check on 14: {out}"
    );
    // Generated columns need 18.
    cfg.rewrite(&config(
        &pg.url(),
        state.path(),
        "[\"public.permits\"]",
        "publish_generated_columns = true",
    ))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed && out.contains("needs PostgreSQL 18+; the source runs 14"),
        "check of publish_generated_columns on 14: {out}"
    );
    // The plain form still works on 14.
    cfg.rewrite(&config(&pg.url(), state.path(), "[\"public.permits\"]", ""))?;
    let (passed, out) = check(&cfg).await?;
    ensure!(passed, "check of the plain form on 14: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_18_publishes_generated_columns_when_asked() -> anyhow::Result<()> {
    let started = Instant::now();
    let pg = PgCluster::builder().version(18).start().await?;
    pg.batch("CREATE TABLE orders (id int PRIMARY KEY, qty int, total int GENERATED ALWAYS AS (qty * 10) STORED)")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        "[\"public.orders\"]",
        "publish_generated_columns = true",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.execute("INSERT INTO orders (id, qty) VALUES (1, 3)")
        .await?;
    let ev = next_event(&mut p).await?;
    ensure!(ev["new"]["total"] == 30, "generated column missing: {ev}");
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());
    // The existing publication is checked for the option.
    let (passed, out) = check(&cfg).await?;
    ensure!(passed, "check of the publication pgcdc made: {out}");
    pg.batch("ALTER PUBLICATION pgcdc SET (publish_generated_columns = none)")
        .await?;
    let (passed, out) = check(&cfg).await?;
    ensure!(
        !passed && out.contains("SET (publish_generated_columns = stored)"),
        "check of a publication without generated columns: {out}"
    );
    println!("generated columns on 18 in {:?}", started.elapsed());
    Ok(())
}
