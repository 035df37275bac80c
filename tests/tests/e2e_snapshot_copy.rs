//! End to end: the snapshot reads chunks with `COPY (SELECT ...) TO STDOUT`.
//! Values that COPY's text format escapes (control characters, backslashes, a
//! text that reads `\N`) render exactly as the same values streamed; rows wide
//! enough end a chunk before its 2,000 rows (memory bounded in bytes), and the
//! copy still journals every row once.

mod e2e_fixture;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{config_toml, next_lines, start_streaming};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};
use serde_json::Value;

fn snapshot_config(
    pg: &PgCluster,
    table: &str,
    state: &std::path::Path,
) -> anyhow::Result<ConfigFile> {
    let toml = config_toml(&pg.url(), &[table], state, "")
        .replace("tables = [", "snapshot = \"initial\"\ntables = [");
    Ok(ConfigFile::new(&toml)?)
}

/// Every byte COPY's text format escapes, and texts that look like its escapes.
const HOSTILE: &str = "(ID,
    E'bs\\\\ b\\b f\\f v\\x0b r\\r n\\n t\\t ctl\\x01\\x1f del\\x7f é ✓',
    '\\N', 'NULL', '',
    ARRAY[E'a\\\\b', E'tab\\there', '\\N', NULL, E'quote\"s'],
    '{\"s\": \"back\\\\\\\\slash \\\\t \\\\n \\\\u0001\"}',
    E'\\\\x5c0a09',
    NULL)";

#[tokio::test(flavor = "multi_thread")]
async fn escaped_values_read_by_copy_render_as_streamed() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let row = |id: i64| HOSTILE.replace("ID", &id.to_string());
    pg.batch(&format!(
        "CREATE TABLE esc (id int PRIMARY KEY, t text, n1 text, n2 text, e text,
                           ta text[], jb jsonb, by bytea, nul text);
         INSERT INTO esc VALUES {};",
        row(1)
    ))
    .await?;
    let state = state_dir()?;
    let cfg = snapshot_config(&pg, "public.esc", state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch(&format!("INSERT INTO esc VALUES {};", row(11)))
        .await?;
    let lines = next_lines(&mut p, 2, Duration::from_secs(60)).await?;
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let find = |op: &str| {
        events
            .iter()
            .find(|e| e["op"] == op)
            .with_context(|| format!("no {op} event in {lines:#?}"))
    };
    let mut snap = find("read")?["new"].clone();
    let mut streamed = find("insert")?["new"].clone();
    ensure!(
        snap["t"]
            .as_str()
            .is_some_and(|t| t.contains('\u{8}') && t.contains('\\')),
        "{snap}"
    );
    ensure!(snap["n1"] == "\\N" && snap["nul"].is_null(), "{snap}");
    snap["id"] = Value::Null;
    streamed["id"] = Value::Null;
    ensure!(
        snap == streamed,
        "the snapshot renders values differently from the stream\nsnapshot: {snap}\n  stream: {streamed}"
    );
    Ok(())
}

/// Rows of about 8 KiB: 2,500 of them are about 20 MiB, more than two chunks' worth
/// of bytes, though fewer than two chunks' worth of rows.
const WIDE_ROWS: i64 = 2_500;

#[tokio::test(flavor = "multi_thread")]
async fn wide_rows_end_a_chunk_before_its_row_count() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(&format!(
        "CREATE TABLE wide (id int PRIMARY KEY, pad text);
         INSERT INTO wide SELECT g, repeat(md5(g::text), 256) FROM generate_series(1, {WIDE_ROWS}) g;"
    ))
    .await?;
    let state = state_dir()?;
    let cfg = snapshot_config(&pg, "public.wide", state.path())?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let lines = next_lines(&mut p, WIDE_ROWS as usize, Duration::from_secs(120)).await?;
    let mut ids = HashSet::new();
    for line in &lines {
        let e: Value = serde_json::from_str(line)?;
        ensure!(e["op"] == "read", "{line}");
        ensure!(
            e["new"]["pad"].as_str().map(str::len) == Some(8192),
            "{line}"
        );
        ids.insert(e["key"]["id"].as_i64().unwrap_or(-1));
    }
    ensure!(
        ids.len() == WIDE_ROWS as usize,
        "{} distinct rows",
        ids.len()
    );
    let resyncs = e2e_fixture::journal(state.path())?.resyncs(1000)?;
    let snapshot = resyncs
        .iter()
        .find(|r| r.kind == "snapshot")
        .context("no snapshot resync")?;
    // 2,000 rows a chunk would be 2 chunks; about 8 MiB a chunk is 3.
    ensure!(
        snapshot.state == "done" && snapshot.chunks >= 3,
        "state {} after {} chunks",
        snapshot.state,
        snapshot.chunks
    );
    Ok(())
}
