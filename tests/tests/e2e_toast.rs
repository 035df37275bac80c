//! End to end: `source.fill_toast`. Postgres leaves an unchanged out-of-line
//! (TOAST) value out of an update; for the tables listed, pgcdc fills it in
//! from the row it remembers, across a kill -9, and lists in
//! `unchanged_toast` only what it never saw. Other tables are as before.

mod e2e_fixture;

use std::time::Duration;

use anyhow::ensure;
use e2e_fixture::{config_toml, next_events, spawn_run, start_streaming};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};
use serde_json::{json, Value};

/// ~13 kB of random hex: it does not compress, so it is stored out of line.
const BIG: &str = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400))";

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toast_values_are_filled_from_the_remembered_row() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, status text, notes text);
         CREATE TABLE plain (id int PRIMARY KEY, status text, notes text);
         INSERT INTO docs VALUES (1, 'old', {BIG});"
    ))
    .await?;
    let state = state_dir()?;
    let text = config_toml(
        &pg.url(),
        &["public.docs", "public.plain"],
        state.path(),
        "",
    )
    .replace("tables = [", "fill_toast = [\"public.docs\"]\ntables = [");
    let cfg = ConfigFile::new(&text)?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let notes = |id: i32, table: &'static str| {
        let pg = &pg;
        async move {
            pg.query_scalar::<String>(&format!("SELECT notes FROM {table} WHERE id = {id}"))
                .await
        }
    };

    // Row 1 was there before pgcdc (no snapshot): its value was never seen.
    pg.execute("UPDATE docs SET status = 'seen' WHERE id = 1")
        .await?;
    let ev = next_events(&mut p, 1, Duration::from_secs(60)).await?;
    ensure!(
        ev[0]["unchanged_toast"] == json!(["notes"]) && ev[0]["new"].get("notes").is_none(),
        "a value never seen cannot be filled and is listed: {}",
        ev[0]
    );

    // Row 2 is seen when inserted: its updates carry the value.
    pg.batch(&format!(
        "INSERT INTO docs VALUES (2, 'draft', {BIG});
         UPDATE docs SET status = 'final' WHERE id = 2;
         INSERT INTO plain VALUES (2, 'draft', {BIG});
         UPDATE plain SET status = 'final' WHERE id = 2;"
    ))
    .await?;
    let ev = next_events(&mut p, 4, Duration::from_secs(60)).await?;
    let docs2 = notes(2, "docs").await?;
    expect_filled(&ev[1], &docs2, "final")?;
    ensure!(
        ev[3]["unchanged_toast"] == json!(["notes"]) && ev[3]["new"].get("notes").is_none(),
        "a table not in fill_toast is as before: {}",
        ev[3]
    );

    // The remembered row survives a kill -9.
    p.kill9()?;
    let mut p = spawn_run(&cfg)?;
    pg.execute("UPDATE docs SET status = 'archived' WHERE id = 2")
        .await?;
    let ev = next_events(&mut p, 1, Duration::from_secs(60)).await?;
    expect_filled(&ev[0], &docs2, "archived")?;
    Ok(())
}

fn expect_filled(ev: &Value, notes: &str, status: &str) -> anyhow::Result<()> {
    ensure!(ev["op"] == "update", "{ev}");
    ensure!(
        ev["new"] == json!({"id": 2, "status": status, "notes": notes}),
        "the unchanged value is filled in, in column order: {}",
        ev["new"]
    );
    ensure!(
        ev["unchanged_toast"].as_array().is_some_and(Vec::is_empty),
        "nothing is left unfilled: {}",
        ev["unchanged_toast"]
    );
    Ok(())
}
