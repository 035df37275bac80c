//! Physical standbys without `pg_basebackup` (the fetched server packages have none):
//! a non-exclusive base backup made by hand, as `pg_basebackup -R` would.
//!
//! ```text
//!  primary: pg_create_physical_replication_slot(slot, reserve WAL now)
//!           pg_backup_start (pg_start_backup on 14) ── same session ──┐
//!  copy data/ (cp -a, as the server's OS user), minus pid, WAL, slots │
//!           pg_backup_stop (pg_stop_backup on 14) ◀───────────────────┘ → backup_label
//!  standby: backup_label + standby.signal + primary_conninfo/primary_slot_name, own socket
//! ```
//!
//! WAL from the backup's start on reaches the standby by streaming, held for it
//! by the physical slot created before the backup.

use std::time::Duration;

use crate::cluster::quote_literal;
use crate::error::{io_err, HarnessError, Result};
use crate::PgCluster;

/// How long a standby may take to start streaming from its primary.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);

impl PgCluster {
    /// The server's major version (`server_version_num / 10000`).
    pub async fn server_major(&self) -> Result<u32> {
        let num: String = self.query_scalar("SHOW server_version_num").await?;
        num.parse::<u32>()
            .map(|n| n / 10_000)
            .map_err(|_| HarnessError::Environment(format!("server_version_num `{num}`")))
    }

    /// A running physical standby of this (running) cluster, streaming through the
    /// physical slot `slot`; `settings` go into the standby's postgresql.conf
    /// (e.g. `sync_replication_slots = on` on 17+).
    pub async fn start_standby(&self, slot: &str, settings: &[(&str, &str)]) -> Result<PgCluster> {
        let major = self.server_major().await?;
        let client = self.client().await?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await?;
        // Non-exclusive: the backup lasts as long as this session.
        let start = if major >= 15 {
            "SELECT pg_backup_start('pgcdc standby', true)::text"
        } else {
            "SELECT pg_start_backup('pgcdc standby', true, false)::text"
        };
        client.query_one(start, &[]).await?;

        let mut standby = PgCluster::layout(self.bin_dir.clone())?;
        let out = standby
            .command_as_server("cp")
            .arg("-a")
            .arg(&self.data_dir)
            .arg(&standby.data_dir)
            .output()
            .map_err(|source| HarnessError::Spawn {
                program: "cp".to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                program: "cp -a".to_owned(),
                status: out.status,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let stop = if major >= 15 {
            "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let row = client.query_one(stop, &[]).await?;
        let label: String = row.try_get(0)?;
        let spcmap: Option<String> = row.try_get(1)?;

        let data = standby.data_dir.clone();
        // What a base backup leaves out: the primary's runtime files, WAL and slots.
        for file in ["postmaster.pid", "postmaster.opts", "backup_label.old"] {
            let _ = std::fs::remove_file(data.join(file));
        }
        for dir in ["pg_wal", "pg_replslot"] {
            let path = data.join(dir);
            for entry in std::fs::read_dir(&path).map_err(io_err("read dir", &path))? {
                let entry = entry.map_err(io_err("read dir", &path))?;
                let p = entry.path();
                if p.is_dir() && dir == "pg_replslot" {
                    std::fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
                } else if p.is_file() {
                    std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
                }
            }
        }
        let mut files = vec![("backup_label", label), ("standby.signal", String::new())];
        if let Some(map) = spcmap.filter(|m| !m.is_empty()) {
            files.push(("tablespace_map", map));
        }
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres application_name={slot}",
            self.socket_dir.display(),
            self.port()
        );
        let mut conf = String::from("\n# --- pgcdc test harness: standby ---\n");
        let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} = {}\n", quote_literal(v)));
        set(
            "unix_socket_directories",
            &standby.socket_dir.to_string_lossy(),
        );
        set("primary_conninfo", &conninfo);
        set("primary_slot_name", slot);
        set("hot_standby", "on");
        for (k, v) in settings {
            set(k, v);
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing =
            std::fs::read_to_string(&conf_path).map_err(io_err("read", &conf_path))?;
        existing.push_str(&conf);
        files.push(("postgresql.conf", existing));
        for (name, text) in files {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(io_err("write", &path))?;
            if let Some(user) = standby.run_as {
                user.chown(&path)?;
            }
        }
        standby.start().await?;
        self.wait_standby_streaming(slot).await?;
        Ok(standby)
    }

    /// Waits until the standby using physical slot `slot` streams from this primary.
    pub async fn wait_standby_streaming(&self, slot: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + STREAMING_TIMEOUT;
        loop {
            let streaming: bool = self
                .client()
                .await?
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1 \
                     AND state = 'streaming')",
                    &[&slot],
                )
                .await?
                .try_get(0)?;
            if streaming {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(HarnessError::Environment(format!(
                    "standby on slot {slot} not streaming within {STREAMING_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Promotes this standby and waits until it accepts writes.
    pub async fn promote(&self) -> Result<()> {
        let done: bool = self
            .client()
            .await?
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await?
            .try_get(0)?;
        if !done {
            return Err(HarnessError::Environment(
                "pg_promote did not finish within 60 s".to_owned(),
            ));
        }
        Ok(())
    }
}
