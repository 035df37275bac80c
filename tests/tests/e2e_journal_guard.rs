//! The journal and the slot agree, or pgcdc refuses: a journal removed while
//! pgcdc runs stops it before anything more is confirmed to the slot; a new or
//! emptied journal facing a slot that moved on refuses to start, naming the way
//! out; a relative `state.dir` is taken from the config file's directory.

mod e2e_fixture;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{current_wal_lsn, slot_confirmed, spawn_run, start_streaming, stderr_with};
use pgcdc::journal::MetaKey;
use pgcdc_tests::http_receiver::{Mode, Receiver};
use pgcdc_tests::{state_dir, wait_until_msg, ConfigFile, PgCluster, Pgcdc};

/// One HTTP sink: while the receiver answers 503, rows wait in the journal.
fn config(url: &str, state: &str, receiver: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"
tables = ["public.permits"]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:0"

[[sink]]
name = "registry"
type = "http"
url = "{receiver}/api/permits"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#
    )
}

async fn insert(pg: &PgCluster, from: i32, to: i32) -> anyhow::Result<()> {
    pg.execute(&format!(
        "INSERT INTO permits SELECT g, 'new' FROM generate_series({from}, {to}) g"
    ))
    .await?;
    Ok(())
}

/// Waits until the slot has confirmed everything written so far (the journal holds it).
async fn wait_slot_caught_up(pg: &PgCluster) -> anyhow::Result<u64> {
    let target = current_wal_lsn(pg).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let confirmed = slot_confirmed(pg, "pgcdc").await?;
        if confirmed >= target {
            return Ok(confirmed);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "slot at {confirmed:X}, not at {target:X} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_refusal(p: &mut Pgcdc, words: &[&str]) -> anyhow::Result<String> {
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .context("pgcdc must refuse to start")?;
    ensure!(!status.success(), "pgcdc exited 0");
    let log = stderr_with(p, words).await;
    let lower = log.to_lowercase();
    for w in words {
        ensure!(
            lower.contains(&w.to_lowercase()),
            "missing {w:?} in:\n{log}"
        );
    }
    ensure!(
        !log.contains("replication started"),
        "it must refuse before streaming:\n{log}"
    );
    Ok(log)
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_removed_while_running_stops_before_confirming_more() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(503));
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        &state.path().display().to_string(),
        &rx.url(),
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    insert(&pg, 1, 10).await?;
    wait_slot_caught_up(&pg).await?;

    for name in ["journal.db", "journal.db-wal", "journal.db-shm"] {
        let _ = std::fs::remove_file(state.path().join(name));
    }
    let cut = current_wal_lsn(&pg).await?;
    insert(&pg, 11, 210).await?;

    let status = p
        .wait_exit(Duration::from_secs(30))
        .await
        .context("pgcdc must stop when its journal is removed")?;
    ensure!(!status.success());
    let log = stderr_with(&p, &["journal", "removed"]).await;
    ensure!(
        log.contains("removed") && log.contains("journal.db"),
        "the error must say what happened: {log}"
    );
    let confirmed = slot_confirmed(&pg, "pgcdc").await?;
    ensure!(
        confirmed <= cut,
        "the slot was confirmed to {confirmed:X}, past {cut:X} where the journal was removed"
    );

    // The next start finds an empty journal facing that slot: it refuses.
    let mut p = spawn_run(&cfg)?;
    wait_refusal(&mut p, &["new or empty", "pg_drop_replication_slot"]).await?;
    ensure!(
        slot_confirmed(&pg, "pgcdc").await? == confirmed,
        "the refusing start moved the slot"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn emptied_journal_facing_a_moved_slot_refuses_until_the_slot_is_dropped(
) -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(503));
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        &state.path().display().to_string(),
        &rx.url(),
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    insert(&pg, 1, 200).await?;
    let confirmed = wait_slot_caught_up(&pg).await?;
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());

    let journal = state.path().join("journal.db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)?
        .set_len(0)?;
    let mut p = spawn_run(&cfg)?;
    let log = wait_refusal(&mut p, &["new or empty", "pg_drop_replication_slot"]).await?;
    ensure!(log.contains("resync"), "the fix must name resync: {log}");
    ensure!(slot_confirmed(&pg, "pgcdc").await? == confirmed);

    // The way out the message names, taken on purpose: a new slot, and pgcdc streams.
    pg.execute("SELECT pg_drop_replication_slot('pgcdc')")
        .await?;
    rx.set_mode(Mode::Ok);
    let mut p = start_streaming(&pg, &cfg).await?;
    insert(&pg, 201, 201).await?;
    wait_until_msg(Duration::from_secs(30), "the new row delivered", || {
        let n = rx
            .requests()
            .iter()
            .filter(|r| r.json()["new"]["id"] == 201)
            .count();
        async move { n == 1 }
    })
    .await;
    ensure!(!p.has_exited());
    Ok(())
}

/// A journal of a fresh setup is fine, and so is a restart with the same state.
/// With a relative `state.dir`, the journal lands next to the config file, whatever
/// the working directory.
#[tokio::test(flavor = "multi_thread")]
async fn relative_state_dir_is_taken_from_the_config_files_directory() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    let relative = format!(
        "rel-state-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let cfg = ConfigFile::new(&config(&pg.url(), &relative, &rx.url()))?;
    let beside_config = cfg.path().parent().context("config dir")?.join(&relative);
    let in_cwd = std::env::current_dir()?.join(&relative);
    let outcome = async {
        let mut p = start_streaming(&pg, &cfg).await?;
        insert(&pg, 1, 1).await?;
        wait_slot_caught_up(&pg).await?;
        p.terminate()?;
        ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());
        ensure!(
            beside_config.join("journal.db").exists(),
            "no journal in {}",
            beside_config.display()
        );
        ensure!(
            !in_cwd.exists(),
            "the journal was put in the working directory: {}",
            in_cwd.display()
        );
        // Same state, same slot: starts and streams.
        let mut p = start_streaming(&pg, &cfg).await?;
        insert(&pg, 2, 2).await?;
        wait_until_msg(Duration::from_secs(30), "both rows delivered", || {
            let n = rx.requests().len();
            async move { n >= 2 }
        })
        .await;
        ensure!(!p.has_exited());
        Ok(())
    }
    .await;
    if in_cwd.exists() {
        let _ = std::fs::remove_dir_all(&in_cwd);
    }
    outcome
}

/// Meta value of the journal in `state`.
fn meta(state: &Path, key: MetaKey) -> anyhow::Result<Option<String>> {
    Ok(e2e_fixture::journal(state)?.meta(&key)?)
}

/// A journal written before the slot was recorded in it (the previous release:
/// `system_id` and `created_slot`, no `slot`) is adopted, not refused.
#[tokio::test(flavor = "multi_thread")]
async fn journal_of_the_previous_release_is_adopted() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text NOT NULL)")
        .await?;
    let rx = Receiver::start().await?;
    rx.set_mode(Mode::Status(503));
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        &state.path().display().to_string(),
        &rx.url(),
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    insert(&pg, 1, 5).await?;
    wait_slot_caught_up(&pg).await?;
    p.terminate()?;
    ensure!(p.wait_exit(Duration::from_secs(20)).await.is_some());
    ensure!(meta(state.path(), MetaKey::Slot)?.as_deref() == Some("pgcdc"));
    {
        let mut journal = e2e_fixture::journal(state.path())?;
        journal.delete_meta(&MetaKey::Slot)?;
        journal.delete_meta(&MetaKey::SlotCreatedLsn)?;
        for (table, _) in journal.table_oids()? {
            journal.delete_meta(&MetaKey::TableOid(table))?;
        }
    }
    ensure!(
        meta(state.path(), MetaKey::SystemId)?.is_some()
            && meta(state.path(), MetaKey::Slot)?.is_none()
    );

    rx.set_mode(Mode::Ok);
    let mut p = start_streaming(&pg, &cfg).await?;
    insert(&pg, 6, 6).await?;
    wait_until_msg(Duration::from_secs(30), "all six rows delivered", || {
        let mut ids: Vec<i64> = rx
            .requests()
            .iter()
            .filter_map(|r| r.json()["new"]["id"].as_i64())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        async move { ids == [1, 2, 3, 4, 5, 6] }
    })
    .await;
    ensure!(!p.has_exited());
    ensure!(
        meta(state.path(), MetaKey::Slot)?.as_deref() == Some("pgcdc")
            && meta(state.path(), MetaKey::SlotCreatedLsn)?.is_some(),
        "the adopted journal records its slot"
    );
    Ok(())
}
