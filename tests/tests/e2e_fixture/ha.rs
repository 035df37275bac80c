//! HA helpers shared by the e2e_ha* tests: who leads, per the lease.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use pgcdc_tests::{ConfigFile, Pgcdc};

/// The current leader per the lease: (holder id, epoch).
pub async fn leader(cfg: &ConfigFile) -> anyhow::Result<Option<(String, i64)>> {
    // `pgcdc status` reads the lease (a CLI command has no role of its own); it
    // fails until the first process has created the state store: no leader yet.
    let (code, out, _) = super::pgcdc_output(&["status", "--config", &cfg.arg(), "--json"]).await?;
    if code != 0 {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let l = &v["ha"]["leader"];
    Ok(l["holder_id"]
        .as_str()
        .map(|h| (h.to_string(), l["epoch"].as_i64().unwrap_or(-1))))
}

/// The pid in a holder id (`pgcdc-<host>-<pid>-<salt>`).
pub fn holder_pid(holder: &str) -> Option<u32> {
    holder.rsplit('-').nth(1)?.parse().ok()
}

/// Waits until a leader with an epoch above `after` is among `procs`; its index.
pub async fn wait_leader(
    cfg: &ConfigFile,
    procs: &mut [Pgcdc],
    after: i64,
    timeout: Duration,
) -> anyhow::Result<(usize, i64)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((holder, epoch)) = leader(cfg).await? {
            if epoch > after {
                if let Some(i) = procs
                    .iter()
                    .position(|p| Some(p.pid()) == holder_pid(&holder))
                {
                    return Ok((i, epoch));
                }
            }
        }
        for p in procs.iter_mut() {
            ensure!(
                !p.has_exited(),
                "a pgcdc exited; stderr:\n{}",
                p.stderr_tail(30)
            );
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = procs.iter().map(|p| p.stderr_tail(15)).collect();
            bail!(
                "no new leader (epoch > {after}) after {timeout:?}; logs:\n{}",
                tails.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
