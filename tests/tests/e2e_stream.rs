//! End to end: pgcdc streams committed changes from a real Postgres to its
//! stdout sink as native JSON events, with typed values, positions and ids.

mod e2e_fixture;

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{
    config_toml, current_wal_lsn, next_events, parse_lsn, slot_confirmed, start_streaming,
    status_json, vm_hwm_kib,
};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::{json, Value};

/// `<16 hex>-<8 hex>`.
fn is_event_id(id: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    id.split_once('-')
        .is_some_and(|(lsn, seq)| hex(lsn, 16) && hex(seq, 8))
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    s.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
        && (s.len() == 20 || (b[19] == b'.' && digits(20..s.len() - 1)))
}

fn parse_events(lines: &[String]) -> anyhow::Result<Vec<Value>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Asserts one event's op, table, key, old and new.
fn expect_event(
    ev: &Value,
    op: &str,
    table: &str,
    key: Value,
    old: Value,
    new: Value,
) -> anyhow::Result<()> {
    let got = json!({
        "op": ev["op"], "schema": ev["schema"], "table": ev["table"],
        "key": ev["key"], "old": ev["old"], "new": ev["new"], "trigger": ev["trigger"],
    });
    let want = json!({
        "op": op, "schema": "public", "table": table,
        "key": key, "old": old, "new": new, "trigger": null,
    });
    ensure!(got == want, "event mismatch\n got: {got}\nwant: {want}");
    Ok(())
}

const PERMITS_DDL: &str = "
CREATE TYPE permit_kind AS ENUM ('building', 'event');
CREATE DOMAIN floor_count AS int CHECK (VALUE > 0);
CREATE TABLE permits (
    id serial PRIMARY KEY,
    status text,
    fee numeric(12, 2),
    issued date,
    decided_at timestamptz,
    meta jsonb,
    tags text[],
    scan bytea,
    kind permit_kind,
    floors floor_count,
    big int8
);
CREATE TABLE permits_full (id int PRIMARY KEY, status text, fee numeric);
ALTER TABLE permits_full REPLICA IDENTITY FULL;
";

#[tokio::test(flavor = "multi_thread")]
async fn typed_events_in_commit_order_with_positions_and_ids() -> anyhow::Result<()> {
    // A non-UTC server time zone: timestamps must still come out in UTC with `Z`.
    let pg = PgCluster::builder()
        .setting("timezone", "America/New_York")
        .start()
        .await?;
    pg.batch(PERMITS_DDL).await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.permits", "public.permits_full"],
        state.path(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    pg.batch(
        "BEGIN;
         INSERT INTO permits (status, fee, issued, decided_at, meta, tags, scan, kind, floors, big)
           VALUES ('new', 12.5, '2026-01-02', '2026-01-02 03:04:05.123456+02',
                   '{\"a\": [1, 2], \"b\": null, \"c\": \"x\"}', '{x,\"y z\",NULL}', '\\xdeadbeef',
                   'event', 7, 9223372036854775806);
         INSERT INTO permits (status) VALUES (NULL);
         UPDATE permits SET status = 'approved', fee = 13 WHERE id = 1;
         COMMIT;",
    )
    .await?;
    // Ta begins first but commits after Tb: events follow commit order.
    let ta = pg.client().await?;
    let tb = pg.client().await?;
    ta.batch_execute("BEGIN; INSERT INTO permits_full VALUES (10, 'a', 1.5)")
        .await?;
    tb.batch_execute("INSERT INTO permits_full VALUES (11, 'b', 2)")
        .await?;
    ta.batch_execute("COMMIT").await?;
    // One statement per call: a multi-statement simple query is one transaction.
    for sql in [
        "UPDATE permits_full SET status = 'z' WHERE id = 10",
        "DELETE FROM permits_full WHERE id = 11",
        "DELETE FROM permits WHERE id = 2",
        "TRUNCATE permits",
    ] {
        pg.execute(sql).await?;
    }

    let lines = p.collect_lines(9, Duration::from_secs(60)).await;
    ensure!(lines.len() == 9, "got {lines:#?}\n{}", p.stderr_tail(30));
    ensure!(
        lines[0].contains("9223372036854775806"),
        "int8 must be printed exactly: {}",
        lines[0]
    );
    let ev = parse_events(&lines)?;

    let row1 = json!({
        "id": 1, "status": "new", "fee": "12.50", "issued": "2026-01-02",
        "decided_at": "2026-01-02T01:04:05.123456Z",
        "meta": {"a": [1, 2], "b": null, "c": "x"}, "tags": ["x", "y z", null],
        "scan": "3q2+7w==", "kind": "event", "floors": 7, "big": 9_223_372_036_854_775_806_i64,
    });
    expect_event(
        &ev[0],
        "insert",
        "permits",
        json!({"id": 1}),
        Value::Null,
        row1.clone(),
    )?;
    let row2 = json!({
        "id": 2, "status": null, "fee": null, "issued": null, "decided_at": null, "meta": null,
        "tags": null, "scan": null, "kind": null, "floors": null, "big": null,
    });
    expect_event(
        &ev[1],
        "insert",
        "permits",
        json!({"id": 2}),
        Value::Null,
        row2,
    )?;
    let mut row1_updated = row1;
    row1_updated["status"] = json!("approved");
    row1_updated["fee"] = json!("13.00");
    // Default identity without a key change: Postgres sends no old row.
    expect_event(
        &ev[2],
        "update",
        "permits",
        json!({"id": 1}),
        Value::Null,
        row1_updated,
    )?;
    let r11 = json!({"id": 11, "status": "b", "fee": "2"});
    expect_event(
        &ev[3],
        "insert",
        "permits_full",
        json!({"id": 11}),
        Value::Null,
        r11.clone(),
    )?;
    let r10 = json!({"id": 10, "status": "a", "fee": "1.5"});
    expect_event(
        &ev[4],
        "insert",
        "permits_full",
        json!({"id": 10}),
        Value::Null,
        r10.clone(),
    )?;
    // REPLICA IDENTITY FULL: update and delete carry the whole old row.
    expect_event(
        &ev[5],
        "update",
        "permits_full",
        json!({"id": 10}),
        r10,
        json!({"id": 10, "status": "z", "fee": "1.5"}),
    )?;
    expect_event(
        &ev[6],
        "delete",
        "permits_full",
        json!({"id": 11}),
        r11,
        Value::Null,
    )?;
    // Default identity delete: old holds the key.
    expect_event(
        &ev[7],
        "delete",
        "permits",
        json!({"id": 2}),
        json!({"id": 2}),
        Value::Null,
    )?;
    expect_event(
        &ev[8],
        "truncate",
        "permits",
        Value::Null,
        Value::Null,
        Value::Null,
    )?;

    // Positions: transactions are T1 = 0..3, Tb = 3, Ta = 4, then one each.
    let txns: [std::ops::Range<usize>; 7] = [0..3, 3..4, 4..5, 5..6, 6..7, 7..8, 8..9];
    let mut ids = std::collections::HashSet::new();
    let mut last_lsn = 0u64;
    let mut xids = std::collections::HashSet::new();
    for range in txns {
        let first = &ev[range.start];
        let lsn_text = first["lsn"].as_str().context("lsn is a string")?;
        let lsn = parse_lsn(lsn_text)?;
        ensure!(
            lsn > last_lsn,
            "transactions out of commit order at {first}"
        );
        last_lsn = lsn;
        let xid = first["xid"].as_u64().context("xid is a number")?;
        ensure!(xids.insert(xid), "xid {xid} reused across transactions");
        let mut last_seq: Option<u64> = None;
        for e in &ev[range] {
            ensure!(e["lsn"] == first["lsn"], "one transaction, one lsn: {e}");
            ensure!(e["xid"] == first["xid"], "one transaction, one xid: {e}");
            ensure!(e["commit_time"] == first["commit_time"], "{e}");
            let commit_time = e["commit_time"].as_str().context("commit_time")?;
            ensure!(is_rfc3339_utc(commit_time), "commit_time {commit_time}");
            let id = e["id"].as_str().context("id is a string")?;
            ensure!(is_event_id(id), "id {id} is not <16 hex>-<8 hex>");
            ensure!(ids.insert(id.to_owned()), "duplicate id {id}");
            let (id_lsn, id_seq) = id.split_once('-').context("id")?;
            ensure!(
                u64::from_str_radix(id_lsn, 16)? == lsn,
                "id {id} must carry the commit lsn {lsn_text}"
            );
            let seq = u64::from_str_radix(id_seq, 16)?;
            ensure!(
                last_seq.is_none_or(|s| seq > s),
                "ordinals must increase: {id}"
            );
            last_seq = Some(seq);
            ensure!(
                e["unchanged_toast"].as_array().is_none_or(Vec::is_empty),
                "{e}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toast_column_is_listed_and_absent_from_new() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE docs (id int PRIMARY KEY, status text, notes text)")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &["public.docs"], state.path(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    // ~13 kB of random hex does not compress, so it is stored out of line.
    pg.execute(
        "INSERT INTO docs SELECT 1, 'draft', string_agg(md5(random()::text), '') \
         FROM generate_series(1, 400)",
    )
    .await?;
    pg.execute("UPDATE docs SET status = 'final' WHERE id = 1")
        .await?;
    let notes: String = pg
        .query_scalar("SELECT notes FROM docs WHERE id = 1")
        .await?;
    ensure!(notes.len() == 400 * 32);
    let toasted: bool = pg
        .query_scalar(
            "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE relname = 'docs'",
        )
        .await?;
    ensure!(toasted, "notes must be stored out of line for this test");

    let ev = next_events(&mut p, 2, Duration::from_secs(60)).await?;
    ensure!(ev[0]["op"] == "insert" && ev[0]["new"]["notes"] == json!(notes));
    ensure!(ev[0]["unchanged_toast"]
        .as_array()
        .is_none_or(Vec::is_empty));
    let update = &ev[1];
    ensure!(update["op"] == "update", "{update}");
    ensure!(
        update["unchanged_toast"] == json!(["notes"]),
        "unchanged_toast must list notes: {update}"
    );
    ensure!(
        update["new"] == json!({"id": 1, "status": "final"}),
        "notes must be absent from new: {}",
        update["new"]
    );
    Ok(())
}

/// Writes about `mib` MiB of WAL in `db`, in a table outside the publication.
async fn churn(pg: &PgCluster, db: &str, mib: u32) -> anyhow::Result<()> {
    let client = pg.client_db(db).await?;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS churn (id int, pad text)")
        .await?;
    for _ in 0..mib {
        // ~8k rows of ~100 bytes with overhead is about 1 MiB of WAL.
        client
            .batch_execute(
                "INSERT INTO churn SELECT g, repeat('x', 80) FROM generate_series(1, 8000) g",
            )
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_slot_keeps_confirming_past_unrelated_wal() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    pg.batch("CREATE DATABASE other").await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(
        &pg.url(),
        &["public.permits"],
        state.path(),
        "",
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.execute("INSERT INTO permits VALUES (1, 'new')").await?;
    ensure!(next_events(&mut p, 1, Duration::from_secs(60)).await?.len() == 1);
    let start = slot_confirmed(&pg, "pgcdc").await?;

    // Unrelated traffic: another table of this database, then another database.
    churn(&pg, "postgres", 24).await?;
    churn(&pg, "other", 24).await?;
    let end = current_wal_lsn(&pg).await?;
    let generated = end - start;
    ensure!(
        generated > 32 << 20,
        "only {generated} bytes of WAL generated"
    );

    wait_until_msg(
        Duration::from_secs(60),
        "slot confirmed_flush_lsn reaches the end of the unrelated WAL",
        || async {
            // A checkpoint logs running transactions, which lets restart_lsn move too.
            let _ = pg.batch("CHECKPOINT").await;
            slot_confirmed(&pg, "pgcdc").await.is_ok_and(|c| c >= end)
        },
    )
    .await;
    let now = current_wal_lsn(&pg).await?;
    let confirmed = slot_confirmed(&pg, "pgcdc").await?;
    ensure!(
        now - confirmed < 1 << 20,
        "slot lags {} bytes behind the WAL",
        now - confirmed
    );
    wait_until_msg(
        Duration::from_secs(60),
        "retained WAL shrinks well below what was generated",
        || async {
            let _ = pg.batch("CHECKPOINT").await;
            let retained = status_json(&cfg)
                .await
                .ok()
                .and_then(|s| s["source"]["slot"]["retained_wal_bytes"].as_u64());
            retained.is_some_and(|r| r < generated / 4)
        },
    )
    .await;
    let stray = p.next_line(Duration::from_millis(200)).await;
    ensure!(
        stray.is_none(),
        "no events from unrelated tables: {stray:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_slot_journal_cursor_and_lag() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    let toml = config_toml(&pg.url(), &["public.permits"], state.path(), "");
    let cfg = ConfigFile::new(&toml)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO permits SELECT g, 'new' FROM generate_series(1, 5) g; UPDATE permits SET status = 'x' WHERE id <= 2")
        .await?;
    ensure!(next_events(&mut p, 7, Duration::from_secs(60)).await?.len() == 7);

    // Caught up: the sink's cursor reaches the head.
    wait_until_msg(Duration::from_secs(30), "cursor == head == 7", || async {
        status_json(&cfg).await.is_ok_and(|s| {
            s["journal"]["head"] == 7
                && s["sinks"][0]["cursor"] == 7
                && s["sinks"][0]["lag_events"] == 0
        })
    })
    .await;
    let s = status_json(&cfg).await?;
    ensure!(s["source"]["reachable"] == true, "{s}");
    let slot = &s["source"]["slot"];
    ensure!(slot["name"] == "pgcdc" && slot["active"] == true, "{s}");
    ensure!(slot["retained_wal_bytes"].is_u64(), "{s}");
    let confirmed = parse_lsn(slot["confirmed_flush_lsn"].as_str().context("confirmed")?)?;
    ensure!(confirmed > 0);
    ensure!(s["sinks"][0]["name"] == "out", "{s}");
    parse_lsn(
        s["journal"]["confirmed_lsn"]
            .as_str()
            .context("journal lsn")?,
    )?;

    p.terminate()?;
    let exit = p.wait_exit(Duration::from_secs(20)).await;
    ensure!(exit.is_some_and(|e| e.success()), "exit {exit:?}");

    // A sink added to the config has not delivered anything: cursor 0, lag = head.
    let cfg2 = ConfigFile::new(&format!(
        "{toml}\n[[sink]]\nname = \"later\"\ntype = \"stdout\"\n"
    ))?;
    let s = status_json(&cfg2).await?;
    ensure!(s["source"]["slot"]["active"] == false, "{s}");
    let sinks = s["sinks"].as_array().context("sinks")?;
    ensure!(sinks.len() == 2, "{s}");
    ensure!(
        sinks[0]["cursor"] == 7 && sinks[0]["lag_events"] == 0,
        "{s}"
    );
    ensure!(sinks[1]["name"] == "later", "{s}");
    ensure!(
        sinks[1]["cursor"] == 0 && sinks[1]["lag_events"] == 7,
        "{s}"
    );

    // The text form says the same for people.
    let (code, text, _) = e2e_fixture::pgcdc_output(&["status", "--config", &cfg2.arg()]).await?;
    ensure!(code == 0, "{text}");
    ensure!(text.contains("sink later: cursor 0 lag 7 events"), "{text}");
    Ok(())
}

/// Rows in the single big transaction; `PGCDC_E2E_BIG_ROWS` overrides.
fn big_rows() -> u64 {
    std::env::var("PGCDC_E2E_BIG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_million_row_transaction_streams_in_bounded_memory() -> anyhow::Result<()> {
    let rows = big_rows();
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE big (id int PRIMARY KEY)").await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &["public.big"], state.path(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let started = std::time::Instant::now();
    pg.execute(&format!(
        "INSERT INTO big SELECT generate_series(1, {rows})"
    ))
    .await?;
    let inserted = started.elapsed();

    // Count without keeping the lines: one bit per key.
    let mut seen = vec![false; rows as usize + 1];
    let mut count = 0u64;
    let mut lsn: Option<String> = None;
    while count < rows {
        let Some(line) = p.next_line(Duration::from_secs(120)).await else {
            anyhow::bail!(
                "stalled after {count} of {rows} lines; stderr:\n{}",
                p.stderr_tail(30)
            );
        };
        count += 1;
        // Cheap field extraction; full parsing of a million lines would dominate the test.
        let key = line
            .split_once("\"key\":{\"id\":")
            .and_then(|(_, rest)| rest.split_once('}'))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .with_context(|| format!("no key.id in {line}"))?;
        ensure!(
            key >= 1 && key <= rows as usize && !seen[key],
            "bad or repeated key {key}"
        );
        seen[key] = true;
        if count == 1 || count == rows {
            let v: Value = serde_json::from_str(&line)?;
            let this = v["lsn"].as_str().map(str::to_owned);
            ensure!(lsn.is_none() || lsn == this, "one transaction, one lsn");
            lsn = this;
        }
    }
    let streamed = started.elapsed();
    ensure!(
        p.next_line(Duration::from_millis(300)).await.is_none(),
        "extra lines"
    );
    let hwm_kib = vm_hwm_kib(p.pid())?;
    println!(
        "big transaction: {rows} rows, insert {:.1} s, all on stdout after {:.1} s, pgcdc VmHWM {} MiB",
        inserted.as_secs_f64(),
        streamed.as_secs_f64(),
        hwm_kib / 1024
    );
    ensure!(
        hwm_kib < 300 * 1024,
        "pgcdc peak RSS {} MiB over the 300 MiB bound",
        hwm_kib / 1024
    );
    Ok(())
}
