//! Waiting until a pgcdc process streams from its slot.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::{PgCluster, Pgcdc};

/// The walsender pid holding `slot`, if any.
pub async fn slot_active_pid(pg: &PgCluster, slot: &str) -> Option<i32> {
    let client = pg.client().await.ok()?;
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()??;
    row.try_get::<_, Option<i32>>(0).ok()?
}

/// Waits until pgcdc holds slot `pgcdc` (changes committed from now on are
/// captured); fails early with pgcdc's stderr if it exits.
pub async fn wait_streaming(pg: &PgCluster, p: &mut Pgcdc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The slot is also active while pgcdc creates it, on a short-lived connection:
        // streaming is when the reader says so and holds the slot.
        if p.stderr().contains("replication started")
            && slot_active_pid(pg, "pgcdc").await.is_some()
        {
            return Ok(());
        }
        if p.has_exited() {
            bail!(
                "pgcdc exited before streaming; stderr:\n{}",
                p.stderr_tail(30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "pgcdc not streaming after 60 s; stderr:\n{}",
                p.stderr_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
