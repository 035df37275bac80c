//! Which OS user runs the Postgres binaries: `initdb` and `postgres` refuse to
//! run as root, so under root the harness drops to the `postgres` user.

use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::error::{io_err, HarnessError, Result};

/// The unprivileged account the server runs as when the tests run as root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` when not root (run binaries directly), else the `postgres` user.
    pub(crate) fn detect() -> Result<Option<RunAs>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name("postgres")
            .map_err(|e| HarnessError::Environment(format!("looking up user postgres: {e}")))?
            .ok_or_else(|| {
                HarnessError::Environment(
                    "running as root but there is no `postgres` OS user to run the server as"
                        .to_owned(),
                )
            })?;
        Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Gives `path` to the server's user.
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(io_err("chown", path))
    }

    /// Makes `cmd` run as this user (std drops supplementary groups for us).
    pub(crate) fn apply(&self, cmd: &mut std::process::Command) {
        cmd.uid(self.uid).gid(self.gid);
        // runuser would reset HOME too; psql-like tools look there for rc files.
        cmd.env_remove("HOME");
    }
}
