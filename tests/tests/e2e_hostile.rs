//! End to end: inputs a careless operator or a hostile schema produces, which
//! pgcdc must survive with a clear word and nothing lost (regressions of the
//! issue-17 probe's "passed" list that no other test covers): a corrupt
//! journal header, 1,600 columns, odd identifiers and values, a 50 MB text
//! value, and DROP TABLE of a captured table while streaming.

mod e2e_fixture;

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{config_toml, next_events, spawn_run, start_streaming, stderr_with};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};

/// The next `n` events (pgcdc prints large ones slowly).
const EVENTS_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_journal_header_stops_with_a_clear_error() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let state = state_dir()?;
    std::fs::write(
        state.path().join("journal.db"),
        b"this is not an SQLite file, but it is long enough to have a header......",
    )?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &["public.t"], state.path(), ""))?;
    let mut p = spawn_run(&cfg)?;
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("pgcdc must stop on a corrupt journal")?;
    ensure!(status.code() == Some(2), "exit {status:?}");
    let log = stderr_with(&p, &["journal.db"]).await;
    ensure!(
        log.contains("journal.db") && log.to_lowercase().contains("not a database"),
        "the error must name the file and the problem: {log}"
    );
    // Nothing was created on the source: the slot does not exist.
    let slots: i64 = pg
        .query_scalar("SELECT count(*) FROM pg_replication_slots")
        .await?;
    ensure!(
        slots == 0,
        "no slot may be created before the journal opens"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wide_odd_and_huge_rows_stream_whole() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let cols: Vec<String> = (1..1600).map(|i| format!("c{i} int")).collect();
    pg.batch(&format!(
        "CREATE TABLE wide (id int PRIMARY KEY, {});
         CREATE SCHEMA \"Odd Schema\";
         CREATE TABLE \"Odd Schema\".\"Tâble x\" (\"Id\" int PRIMARY KEY, \"na me\" text, \"ключ\" text);
         CREATE TABLE big (id int PRIMARY KEY, v text);",
        cols.join(", ")
    ))
    .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.wide", "Odd Schema.Tâble x", "public.big"],
        state.path(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let vals: Vec<String> = (1..1600).map(|i| i.to_string()).collect();
    pg.batch(&format!("INSERT INTO wide VALUES (1, {})", vals.join(", ")))
        .await?;
    pg.batch(
        "INSERT INTO \"Odd Schema\".\"Tâble x\" VALUES \
         (1, E'line\\nbreak \"quoted\" \\\\ back\\tslash 🦀', 'значение')",
    )
    .await?;
    // 50 MB of random hex (incompressible): stored out of line, sent whole.
    pg.batch(
        "INSERT INTO big SELECT 1, string_agg(md5(g::text || random()::text), '') \
         FROM generate_series(1, 1600000) g",
    )
    .await?;
    let ev = next_events(&mut p, 3, EVENTS_WITHIN).await?;
    ensure!(ev[0]["table"] == "wide", "{:.300}", ev[0].to_string());
    ensure!(
        ev[0]["new"].as_object().map(|o| o.len()) == Some(1600) && ev[0]["new"]["c1599"] == 1599,
        "every column of the wide row"
    );
    ensure!(
        ev[1]["schema"] == "Odd Schema" && ev[1]["table"] == "Tâble x",
        "odd names: {}",
        ev[1]
    );
    ensure!(
        ev[1]["new"]
            == serde_json::json!({"Id": 1, "na me": "line\nbreak \"quoted\" \\ back\tslash 🦀", "ключ": "значение"}),
        "odd values: {}",
        ev[1]
    );
    let v = ev[2]["new"]["v"].as_str().unwrap_or_default();
    ensure!(
        v.len() == 1_600_000 * 32,
        "50 MB value, got {} bytes",
        v.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_table_while_streaming_keeps_the_other_tables_flowing() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, v text);",
    )
    .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.a", "public.b"],
        state.path(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO a VALUES (1, 'x'); INSERT INTO b VALUES (1, 'y');")
        .await?;
    next_events(&mut p, 2, EVENTS_WITHIN).await?;
    pg.batch("DROP TABLE a").await?;
    pg.batch("INSERT INTO b VALUES (2, 'after the drop')")
        .await?;
    let ev = next_events(&mut p, 1, EVENTS_WITHIN).await?;
    ensure!(
        ev[0]["table"] == "b" && ev[0]["new"]["id"] == 2,
        "{}",
        ev[0]
    );
    ensure!(!p.has_exited(), "{}", p.stderr_tail(20));
    Ok(())
}
