//! A journal written by the release before the compact record format (record
//! v1: each event's JSON) is still read, and reads as the events that release
//! delivered.
//!
//! `tests/fixtures/journal_v1/` holds a small `journal.db` written by that
//! release's binary (commit 993132f), the stdout lines it delivered from it
//! (`native.jsonl`) and each record as stored (`journaled.jsonl`: a v1 record
//! is the JSON of `Journaled`, origin included, from which Debezium renders).
//! `record_fixture` (ignored) made them: run it with `PGCDC_BIN` set to a
//! binary built from before the change, and `PGCDC_RECORD_FIXTURE=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pgcdc::journal::{Access, JournalEntry, Store, StoredEvent};
use pgcdc_schema::event::Journaled;
use pgcdc_schema::{EventId, Lsn};
use pgcdc_tests::fixture::spawn_run;
use pgcdc_tests::{state_dir, wait_streaming, ConfigFile, PgCluster};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/journal_v1")
}

/// A copy of the fixture journal in a temporary state dir (opening it migrates it).
fn copy_fixture() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        fixture_dir().join("journal.db"),
        dir.path().join("journal.db"),
    )
    .context("copy tests/fixtures/journal_v1/journal.db")?;
    Ok(dir)
}

fn read_all(store: &Store) -> anyhow::Result<Vec<StoredEvent>> {
    let session = store.open(Access::Existing)?;
    let mut out: Vec<StoredEvent> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.pos);
        let page = session.read_after(after, 7)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

fn lines(path: &Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("read {}", path.display()))?
        .lines()
        .map(str::to_string)
        .collect())
}

/// Every v1 record reads as the event the old release delivered (its stdout line)
/// and as the event its store read back (with the origin, which Debezium renders
/// from), byte for byte.
#[test]
fn a_v1_journal_reads_as_the_old_release_delivered_it() -> anyhow::Result<()> {
    let dir = copy_fixture()?;
    let events = read_all(&Store::sqlite(dir.path()))?;
    let native = lines(&fixture_dir().join("native.jsonl"))?;
    let journaled = lines(&fixture_dir().join("journaled.jsonl"))?;
    ensure!(
        events.len() == journaled.len() && events.len() >= native.len() && native.len() > 10,
        "{} events read, fixture has {} journaled and {} delivered",
        events.len(),
        journaled.len(),
        native.len()
    );
    for (i, (e, want)) in events.iter().zip(&journaled).enumerate() {
        let got = serde_json::to_string(&Journaled::of(&e.event))?;
        ensure!(&got == want, "event {i}\n got: {got}\nwant: {want}");
    }
    // The stdout sink got every event but the schema events (not asked for).
    let delivered: Vec<String> = events
        .iter()
        .filter(|e| e.event.op != pgcdc_schema::Op::Schema)
        .map(|e| serde_json::to_string(&e.event))
        .collect::<Result<_, _>>()?;
    ensure!(
        delivered == native,
        "delivered lines differ:\n got: {delivered:#?}\nwant: {native:#?}"
    );
    Ok(())
}

/// New events appended after the v1 records (in the new format) read back as they
/// were appended, and the v1 records still read beside them.
#[test]
fn new_records_follow_v1_records_in_one_journal() -> anyhow::Result<()> {
    let dir = copy_fixture()?;
    let store = Store::sqlite(dir.path());
    let before = read_all(&store)?;
    follow_with_new_records(&store, &before)
}

/// A Postgres store as the previous release left it (schema version 2, no
/// `relations`, v1 records) is migrated at the first start; its records read as
/// they are and new ones follow them.
#[tokio::test]
async fn a_postgres_store_of_the_previous_release_is_migrated_and_read() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let store = Store::postgres(pg.url().parse()?, "pgcdc");
    drop(store.writer()?);
    let client = pg.client().await?;
    client
        .batch_execute(
            "DROP TABLE pgcdc.relations, pgcdc.stream_staging, pgcdc.audit_batch; \
             UPDATE pgcdc.schema_version SET version = 2",
        )
        .await?;
    let journaled = lines(&fixture_dir().join("journaled.jsonl"))?;
    for (i, line) in journaled.iter().enumerate() {
        let pos = i as i64 + 1;
        client
            .execute(
                "INSERT INTO pgcdc.events(pos, commit_lsn, seq, tbl, payload) \
                 VALUES ($1, $1, 0, 'public.v1', convert_to($2, 'UTF8'))",
                &[&pos, line],
            )
            .await?;
    }
    let before = read_all(&store)?;
    let version: i32 = pg
        .query_scalar("SELECT version FROM pgcdc.schema_version")
        .await?;
    ensure!(version == 5, "schema at version {version}");
    ensure!(before.len() == journaled.len(), "{} events", before.len());
    for (e, want) in before.iter().zip(&journaled) {
        let got = serde_json::to_string(&Journaled::of(&e.event))?;
        ensure!(&got == want, "\n got: {got}\nwant: {want}");
    }
    follow_with_new_records(&store, &before)
}

/// Appends a copy of `before` (after it, in the new format) and checks that the
/// journal reads back as `before` followed by the copies, each equal to what was
/// appended.
fn follow_with_new_records(store: &Store, before: &[StoredEvent]) -> anyhow::Result<()> {
    let last = before.last().context("fixture journal is empty")?;
    let base = last.event.lsn.0.max(last.pos as u64) + 0x1000;
    let entries: Vec<JournalEntry> = before
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut event = e.event.clone();
            event.lsn = Lsn(base);
            if event.id.as_str().len() == 25 {
                event.id = EventId::from_position(Lsn(base), i as u32);
            }
            JournalEntry {
                table: e.table.clone(),
                seq: i as u32,
                commit_time_unix_us: Some(1_700_000_000_000_000),
                event,
            }
        })
        .collect();
    let mut writer = store.writer()?;
    let refs: Vec<(&JournalEntry, Option<&str>)> = entries.iter().map(|e| (e, None)).collect();
    let outcome = writer.append(&refs, None, &[])?;
    ensure!(outcome.appended == entries.len(), "{outcome:?}");
    drop(writer);
    let after = read_all(store)?;
    ensure!(after.len() == 2 * before.len(), "{} events", after.len());
    for (old, again) in before.iter().zip(&after) {
        ensure!(old.event == again.event && old.table == again.table);
    }
    for (entry, got) in entries.iter().zip(&after[before.len()..]) {
        ensure!(
            entry.event == got.event,
            "appended {:?}\nread back {:?}",
            entry.event,
            got.event
        );
        ensure!(entry.seq == got.seq && entry.table == got.table);
    }
    Ok(())
}

/// Records the fixture with the binary at `PGCDC_BIN` (one built from before the
/// compact format).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "records tests/fixtures/journal_v1 with an old release (see the module doc)"]
async fn record_fixture() -> anyhow::Result<()> {
    ensure!(
        std::env::var("PGCDC_RECORD_FIXTURE").is_ok_and(|v| v == "1"),
        "set PGCDC_RECORD_FIXTURE=1 (and PGCDC_BIN to the old release) to record"
    );
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE v1_default (id int PRIMARY KEY, n numeric, i8 int8, f8 float8,
             tstz timestamptz, ia int[], jb jsonb, by bytea, m mood, t text, big text);
         CREATE TABLE v1_full (LIKE v1_default INCLUDING ALL);
         ALTER TABLE v1_full REPLICA IDENTITY FULL;
         CREATE TABLE v1_nokey (a int NOT NULL, b text);
         CREATE UNIQUE INDEX v1_nokey_a ON v1_nokey(a);
         ALTER TABLE v1_nokey REPLICA IDENTITY USING INDEX v1_nokey_a;
         ALTER TABLE v1_default ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE v1_full ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO v1_default VALUES (1, 'NaN', -9223372036854775808, 'Infinity',
             '2024-02-29 23:59:59.123456+05:30', ARRAY[1, NULL, 3], '{\"a\": [1, null, 1.50]}',
             '\\x00ff', 'happy', E'quote \" tab\\t é', NULL);
         INSERT INTO v1_full SELECT * FROM v1_default;",
    )
    .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&format!(
        "[source]\nurl = \"{}\"\ntables = [\"public.v1_default\", \"public.v1_full\", \"public.v1_nokey\"]\n\
         snapshot = \"initial\"\n\n[state]\ndir = \"{}\"\n\n[[sink]]\nname = \"out\"\ntype = \"stdout\"\n",
        pg.url(),
        state.path().display()
    ))?;
    let mut p = spawn_run(&cfg)?;
    wait_streaming(&pg, &mut p).await?;
    let big = "0123456789abcdef".repeat(1024);
    for table in ["v1_default", "v1_full"] {
        pg.batch(&format!(
            "INSERT INTO {table} VALUES (2, 123456789012345678901234567890.0123456789, 42, -0.5,
                 '2000-01-01 00:00:00+00', '{{}}', 'null', '', 'sad', '', '{big}');
             UPDATE {table} SET i8 = 43, t = 'x' WHERE id = 2;
             UPDATE {table} SET id = 3 WHERE id = 1;
             DELETE FROM {table} WHERE id = 2;"
        ))
        .await?;
    }
    pg.batch(
        "INSERT INTO v1_nokey VALUES (1, 'a'), (2, NULL);
         UPDATE v1_nokey SET b = 'c' WHERE a = 1;
         DELETE FROM v1_nokey WHERE a = 2;
         TRUNCATE v1_full;
         ALTER TABLE v1_default ADD COLUMN extra text;
         INSERT INTO v1_default(id, extra) VALUES (99, 'last');",
    )
    .await?;
    let mut native = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !native
        .last()
        .is_some_and(|l: &String| l.contains("\"last\""))
    {
        ensure!(
            Instant::now() < deadline,
            "no last event: {native:#?}\n{}",
            p.stderr_tail(30)
        );
        if let Some(line) = p.next_line(Duration::from_secs(5)).await {
            native.push(line);
        }
    }
    p.terminate()?;
    p.wait_exit(Duration::from_secs(30))
        .await
        .context("pgcdc did not stop")?;
    // Checkpoint the WAL into the file (what SQLite does when the last connection
    // closes), copy it, and dump each record as stored: the v1 JSON, which is the
    // `Journaled` form of its event.
    let out = fixture_dir();
    std::fs::create_dir_all(&out)?;
    let dump = std::process::Command::new("python3")
        .args([
            "-c",
            "import shutil, sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchall()\n\
             for (p,) in c.execute('SELECT payload FROM events ORDER BY pos'): print(p)\n\
             c.close()\n\
             shutil.copy(sys.argv[1], sys.argv[2])",
        ])
        .arg(state.path().join("journal.db"))
        .arg(out.join("journal.db"))
        .output()?;
    ensure!(
        dump.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    std::fs::write(out.join("journaled.jsonl"), &dump.stdout)?;
    std::fs::write(out.join("native.jsonl"), native.join("\n") + "\n")?;
    Ok(())
}
