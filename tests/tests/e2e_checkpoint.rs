//! End to end: `pgcdc checkpoint reset` (CLI and admin API) moves one sink's
//! cursor while pgcdc runs or is stopped; the other sink is untouched.

mod e2e_fixture;

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use e2e_fixture::{pgcdc_output, start_streaming};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{free_port, state_dir, wait_until_msg, ConfigFile, PgCluster};
use serde_json::Value;

fn config(url: &str, state: &Path, a: &str, b: &str, admin_port: u16) -> String {
    let text = format!(
        r#"
[source]
url = "{url}"
tables = ["public.items"]
[state]
dir = "{state}"
[admin]
listen = "127.0.0.1:{admin_port}"
[[sink]]
name = "a"
type = "http"
url = "{a}"
[[sink]]
name = "b"
type = "http"
url = "{b}"
"#,
        state = state.display()
    );
    e2e_fixture::test_state(&text, url, state)
}

fn ids(rx: &Receiver) -> Vec<i64> {
    rx.requests()
        .iter()
        .filter_map(|r| r.json()["new"]["id"].as_i64())
        .collect()
}

/// Ids from request `from` on, sorted (rows are delivered concurrently).
fn sorted_from(rx: &Receiver, from: usize) -> Vec<i64> {
    let mut v = ids(rx).split_off(from.min(ids(rx).len()));
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_one_sink_back_and_forth_running_and_stopped() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE items (id int PRIMARY KEY)").await?;
    let (rx_a, rx_b) = (Receiver::start().await?, Receiver::start().await?);
    let state = state_dir()?;
    let port = free_port()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        &rx_a.url(),
        &rx_b.url(),
        port,
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;
    pg.batch("INSERT INTO items VALUES (1), (2), (3)").await?;
    pg.batch("INSERT INTO items VALUES (4), (5)").await?;
    wait_until_msg(Duration::from_secs(30), "5 events at each sink", || async {
        ids(&rx_a).len() == 5 && ids(&rx_b).len() == 5
    })
    .await;
    // The second transaction's commit LSN, from its events.
    let second_lsn = rx_a
        .requests()
        .iter()
        .map(|r| r.json())
        .find(|e| e["new"]["id"] == 4)
        .and_then(|e| e["lsn"].as_str().map(str::to_string))
        .unwrap_or_default();

    // While running, via the CLI: sink a gets the second transaction again.
    let (code, out, err) = pgcdc_output(&[
        "checkpoint",
        "reset",
        "--config",
        &cfg.arg(),
        "--sink",
        "a",
        "--lsn",
        &second_lsn,
    ])
    .await?;
    ensure!(code == 0, "reset: {out}{err}");
    wait_until_msg(
        Duration::from_secs(30),
        "sink a re-delivers ids 4 and 5",
        || async { ids(&rx_a).len() == 7 },
    )
    .await;
    ensure!(
        sorted_from(&rx_a, 5) == [4, 5],
        "re-delivered: {:?}",
        ids(&rx_a)
    );
    ensure!(
        ids(&rx_b).len() == 5,
        "sink b was touched: {:?}",
        ids(&rx_b)
    );

    // Via the admin API, back to before everything: all 5 again.
    // Mutations need the token: the one pgcdc generated, as the CLI prints it.
    let token = e2e_fixture::admin_token(&cfg).await?;
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/sinks/a/checkpoint"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"time": "2000-01-01T00:00:00Z"}"#)
        .send()
        .await?
        .text()
        .await?;
    let reply: Value = serde_json::from_str(&reply)?;
    ensure!(reply["cursor"] == 0, "API reset: {reply}");
    wait_until_msg(
        Duration::from_secs(30),
        "sink a re-delivers all 5",
        || async { ids(&rx_a).len() == 12 },
    )
    .await;
    ensure!(sorted_from(&rx_a, 7) == [1, 2, 3, 4, 5], "{:?}", ids(&rx_a));

    // While stopped: sink b goes back to the second transaction; a skips to the head.
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
        "b",
        "--lsn",
        &second_lsn,
    ])
    .await?;
    ensure!(
        code == 0 && out.contains("2 event(s)"),
        "reset while stopped: {out}{err}"
    );
    let (code, _, err) = pgcdc_output(&[
        "checkpoint",
        "reset",
        "--config",
        &cfg.arg(),
        "--sink",
        "a",
        "--latest",
    ])
    .await?;
    ensure!(code == 0, "{err}");
    let (code, _, err) = pgcdc_output(&[
        "checkpoint",
        "reset",
        "--config",
        &cfg.arg(),
        "--sink",
        "nope",
        "--latest",
    ])
    .await?;
    ensure!(code != 0 && err.contains("no sink named"), "{err}");
    let mut p = start_streaming(&pg, &cfg).await?;
    wait_until_msg(
        Duration::from_secs(30),
        "sink b re-delivers ids 4 and 5",
        || async { ids(&rx_b).len() == 7 },
    )
    .await;
    ensure!(sorted_from(&rx_b, 5) == [4, 5], "{:?}", ids(&rx_b));
    pg.batch("INSERT INTO items VALUES (6)").await?;
    wait_until_msg(Duration::from_secs(30), "both get id 6", || async {
        ids(&rx_a).last() == Some(&6) && ids(&rx_b).last() == Some(&6)
    })
    .await;
    ensure!(
        ids(&rx_a).len() == 13,
        "sink a after --latest: {:?}",
        ids(&rx_a)
    );
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;
    Ok(())
}

async fn exists(pg: &PgCluster, sql: &str) -> anyhow::Result<bool> {
    Ok(pg.client().await?.query_opt(sql, &[]).await?.is_some())
}

/// `pgcdc teardown` drops only what pgcdc created, only with `--yes`, and never
/// while the slot is in use.
#[tokio::test(flavor = "multi_thread")]
async fn teardown_drops_only_what_pgcdc_created() -> anyhow::Result<()> {
    let slot_q = "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgcdc'";
    let pub_q = "SELECT 1 FROM pg_publication WHERE pubname = 'pgcdc'";
    let pg = PgCluster::new().await?;
    // The publication exists before pgcdc: it is found, not created.
    pg.batch("CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION pgcdc FOR TABLE items")
        .await?;
    let rx = Receiver::start().await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config(
        &pg.url(),
        state.path(),
        &rx.url(),
        &rx.url(),
        free_port()?,
    ))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let (code, _, err) = pgcdc_output(&["teardown", "--config", &cfg.arg(), "--yes"]).await?;
    ensure!(
        code != 0 && err.contains("in use"),
        "teardown while running: {err}"
    );
    ensure!(
        exists(&pg, slot_q).await?,
        "the slot was dropped while in use"
    );
    p.terminate()?;
    p.wait_exit(Duration::from_secs(20)).await;

    let (code, out, _) = pgcdc_output(&["teardown", "--config", &cfg.arg()]).await?;
    ensure!(
        code == 1 && out.contains("would drop replication slot pgcdc") && out.contains("--yes"),
        "{out}"
    );
    ensure!(out.contains("keep  publication pgcdc"), "{out}");
    ensure!(exists(&pg, slot_q).await?, "dropped without --yes");

    let (code, out, err) = pgcdc_output(&["teardown", "--config", &cfg.arg(), "--yes"]).await?;
    ensure!(
        code == 0 && out.contains("dropped replication slot pgcdc"),
        "{out}{err}"
    );
    ensure!(
        !exists(&pg, slot_q).await?,
        "the slot pgcdc created is still there"
    );
    ensure!(
        exists(&pg, pub_q).await?,
        "the publication pgcdc found was dropped"
    );

    // A second source where pgcdc created the publication too: both go.
    let pg2 = PgCluster::new().await?;
    pg2.batch("CREATE TABLE items (id int PRIMARY KEY)").await?;
    let state2 = state_dir()?;
    let cfg2 = ConfigFile::new(&config(
        &pg2.url(),
        state2.path(),
        &rx.url(),
        &rx.url(),
        free_port()?,
    ))?;
    let mut p2 = start_streaming(&pg2, &cfg2).await?;
    p2.terminate()?;
    p2.wait_exit(Duration::from_secs(20)).await;
    let (code, out, err) = pgcdc_output(&["teardown", "--config", &cfg2.arg(), "--yes"]).await?;
    ensure!(
        code == 0 && out.contains("dropped publication pgcdc"),
        "{out}{err}"
    );
    ensure!(
        !exists(&pg2, slot_q).await? && !exists(&pg2, pub_q).await?,
        "left behind: {out}"
    );
    Ok(())
}
