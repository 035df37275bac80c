//! End to end: the native event, byte for byte, for every supported column
//! type, recorded once from the event path and kept in `tests/golden/`.
//!
//! It is the reference any rework of the event path (decode, journal record,
//! rendering) must reproduce: snapshot rows, inserts, updates under DEFAULT
//! and FULL replica identity, an unchanged TOAST value, deletes and a
//! truncate. Only what differs from run to run (event id, LSNs, xid, commit
//! time) is replaced by a placeholder; everything else is compared as the
//! bytes pgcdc wrote. `PGCDC_BLESS=1` rewrites the golden file after an
//! intended change of the format (review the diff). It runs on PostgreSQL
//! 14 to 18 against the one file.
//!
//! Both ways a sink runner gets its events render the same bytes: while it
//! keeps up, the events the journal thread wrote last, kept in memory; after
//! a restart (the checkpoint reset to the start), the records read back from
//! the journal. `/metrics` shows which one each run used.

mod e2e_fixture;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{next_lines, pgcdc_output, start_streaming, with_pg_state};
use pgcdc_tests::{free_port, metric, state_dir, ConfigFile, PgCluster};
use serde_json::Value;

/// Every type pgcdc renders; a second table is the same under FULL identity.
const COLUMNS: &str = "
    id int PRIMARY KEY,
    n numeric, n_big numeric(40, 10), i2 int2, i4 int4, i8 int8,
    f4 float4, f8 float8, b bool,
    t text, vc varchar(10), c char(3),
    ts timestamp, tstz timestamptz, d date, tm time, tmtz timetz, iv interval,
    u uuid, ip inet, net cidr, mac macaddr,
    ia int[], ta text[], j json, jb jsonb, by bytea,
    mood mood, pos posint, r int4range, bits bit(4), x xml, m money, pt point,
    big text";

const ROW_1: &str = "(ID,
    'NaN', 123456789012345678901234567890.0123456789, -32768, -2147483648, -9223372036854775808,
    'NaN', 'Infinity', true,
    E'line\\nbreak \"quoted\" \\\\ tab\\t é ✓', 'short', 'ab',
    '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456+05:30', '0001-01-01 BC',
    '24:00:00', '13:45:00.5-03:30', '1 year 2 mons -3 days 04:05:06.789',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
    ARRAY[1, NULL, 3], ARRAY['a', NULL, 'b\"c', 'NULL', ''],
    '{\"big\": 123456789012345678901234567890, \"f\": 1.50, \"s\": \"\\u00e9\"}',
    '{\"big\": 123456789012345678901234567890, \"f\": 1.50, \"s\": \"\\u00e9\"}',
    '\\x00ff10', 'happy', 7, '[1,5)', B'1010', '<a>x &amp; y</a>', '12.34', '(1.5,-2)',
    NULL)";

const ROW_2: &str = "(ID,
    -0.000000000000000000001, NULL, 32767, 2147483647, 9223372036854775807,
    '-Infinity', '-0', false,
    '', NULL, NULL,
    'infinity', '-infinity', 'infinity',
    '00:00:00', '00:00:00+00', '0 seconds',
    NULL, '::1', '2001:db8::/32', NULL,
    '{}', '{{\"a\",\"b\"},{\"c\",NULL}}',
    'null', '[1, [2, {\"a\": null}]]',
    '', 'sad', 1, 'empty', B'0000', NULL, '-1.00', NULL,
    NULL)";

/// One golden file for every supported server version: the event does not
/// depend on which PostgreSQL wrote the WAL.
async fn golden(major: u32) -> anyhow::Result<()> {
    let pg = PgCluster::builder().version(major).start().await?;
    pg.batch(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TABLE golden_default ({COLUMNS});
         CREATE TABLE golden_full ({COLUMNS});
         ALTER TABLE golden_full REPLICA IDENTITY FULL;
         ALTER TABLE golden_default ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE golden_full ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO golden_default VALUES {r1}, {r2};
         INSERT INTO golden_full VALUES {r1}, {r2};",
        r1 = row(ROW_1, 1),
        r2 = row(ROW_2, 2),
    ))
    .await?;

    let state = state_dir()?;
    let url = pg.url();
    let port = free_port()?;
    let mut text = format!(
        "[source]\nurl = \"{url}\"\ntables = [\"public.golden_default\", \"public.golden_full\"]\n\
         snapshot = \"initial\"\n\n[state]\ndir = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\n\n[[sink]]\nname = \"out\"\ntype = \"stdout\"\n",
        state.path().display()
    );
    if std::env::var("PGCDC_TEST_STATE").is_ok_and(|v| v == "postgres") {
        text = with_pg_state(&text, &url, state.path());
    }
    let cfg = ConfigFile::new(&text)?;
    let mut p = start_streaming(&pg, &cfg).await?;

    // A value stored out of line (TOAST), then updates that leave it alone.
    let big = "0123456789abcdef".repeat(1024);
    for table in ["golden_default", "golden_full"] {
        pg.batch(&format!(
            "INSERT INTO {table} VALUES {r1}, {r2};
             UPDATE {table} SET big = '{big}' WHERE id = 12;
             UPDATE {table} SET i4 = 42, ta = ARRAY['x'] WHERE id = 12;
             UPDATE {table} SET id = 13 WHERE id = 11;
             DELETE FROM {table} WHERE id = 12;",
            r1 = row(ROW_1, 11),
            r2 = row(ROW_2, 12),
        ))
        .await?;
    }
    pg.batch("TRUNCATE golden_default, golden_full").await?;

    // 4 snapshot rows, 6 changes per table, 2 truncates (one per table).
    let lines = next_lines(&mut p, 4 + 12 + 2, Duration::from_secs(60)).await?;

    // A value reads the same from the snapshot as from the stream.
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    for table in ["golden_default", "golden_full"] {
        for id in [1, 2] {
            let find = |op: &str, id: i64| {
                events
                    .iter()
                    .find(|e| e["op"] == op && e["table"] == table && e["key"]["id"] == id)
                    .with_context(|| format!("no {op} of {table} id {id}"))
            };
            let mut snap = find("read", id)?["new"].clone();
            let mut streamed = find("insert", id + 10)?["new"].clone();
            snap["id"] = Value::Null;
            streamed["id"] = Value::Null;
            ensure!(
                snap == streamed,
                "{table} row {id}: the snapshot renders values differently from the stream\n\
                 snapshot: {snap}\n  stream: {streamed}"
            );
        }
    }
    let bless = major == 15 && std::env::var("PGCDC_BLESS").is_ok_and(|v| v == "1");
    against_golden(&lines, bless).context("events kept in memory")?;
    let reads = batch_reads(port).await?;
    ensure!(reads.0 > 0.0, "no batch came from memory: {reads:?}");
    // Each journal write is counted, with the changes it stored.
    let admin = format!("http://127.0.0.1:{port}");
    let writes = metric(&admin, "pgcdc_journal_writes_total").await?;
    let changes = metric(&admin, "pgcdc_journal_changes_total").await?;
    ensure!(
        writes >= 1.0 && writes <= changes,
        "journal writes {writes}, changes {changes}, for {} events",
        lines.len()
    );

    // Again from the journal: a new process (nothing in memory) from the start.
    p.terminate()?;
    ensure!(p
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    let (code, out, err) = pgcdc_output(&[
        "checkpoint",
        "reset",
        "--config",
        &cfg.arg(),
        "--sink",
        "out",
        "--time",
        "2000-01-01T00:00:00Z",
    ])
    .await?;
    ensure!(code == 0, "reset: {out}{err}");
    let mut p = start_streaming(&pg, &cfg).await?;
    let again = next_lines(&mut p, lines.len(), Duration::from_secs(60)).await?;
    against_golden(&again, false).context("events read back from the journal")?;
    let reads = batch_reads(port).await?;
    ensure!(
        reads.1 > 0.0,
        "no batch was read from the journal: {reads:?}"
    );
    Ok(())
}

/// Compares the lines, normalised, with the golden file (`bless`: records them first).
fn against_golden(lines: &[String], bless: bool) -> anyhow::Result<()> {
    let mut got = String::new();
    for line in lines {
        got.push_str(&normalise(line)?);
        got.push('\n');
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/native_all_types.jsonl");
    if bless {
        std::fs::write(&path, &got).with_context(|| format!("writing {}", path.display()))?;
    }
    let want = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (PGCDC_BLESS=1 records it)", path.display()))?;
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        ensure!(
            g == w,
            "event {i} differs from the golden file\n got: {g}\nwant: {w}"
        );
    }
    ensure!(
        got.lines().count() == want.lines().count(),
        "{} events, the golden file has {}",
        got.lines().count(),
        want.lines().count()
    );
    Ok(())
}

/// The stdout sink's batch reads so far, (from memory, from the journal), from `/metrics`.
async fn batch_reads(port: u16) -> anyhow::Result<(f64, f64)> {
    let admin = format!("http://127.0.0.1:{port}");
    let count =
        |source: &str| format!("pgcdc_sink_batch_reads_total{{sink=\"out\",source=\"{source}\"}}");
    Ok((
        metric(&admin, &count("memory")).await?,
        metric(&admin, &count("journal")).await?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_14() -> anyhow::Result<()> {
    golden(14).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_15() -> anyhow::Result<()> {
    golden(15).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_16() -> anyhow::Result<()> {
    golden(16).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_17() -> anyhow::Result<()> {
    golden(17).await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_18() -> anyhow::Result<()> {
    golden(18).await
}

fn row(template: &str, id: i64) -> String {
    template.replacen("ID", &id.to_string(), 1)
}

/// The line with its run-dependent fields replaced, after checking that the
/// line is exactly what serde_json writes for its own value: the placeholders
/// are put in by re-serialising, so the check keeps the comparison byte-exact.
fn normalise(line: &str) -> anyhow::Result<String> {
    let mut v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
    ensure!(
        serde_json::to_string(&v)? == line,
        "the line is not in serde_json's canonical form: {line}"
    );
    let obj = v.as_object_mut().context("an event is a JSON object")?;
    for (field, value) in obj.iter_mut() {
        let volatile =
            matches!(field.as_str(), "id" | "xid" | "commit_time") || field.contains("lsn");
        if volatile && !value.is_null() {
            *value = Value::String(format!("<{field}>"));
        }
    }
    Ok(serde_json::to_string(&v)?)
}
