//! pgcdc-tests: the end-to-end test harness.
//!
//! ```text
//!  test ──▶ PgCluster (throwaway Postgres 14-18, 15 by default: initdb, wal_level=logical,
//!  │                   own port, own socket dir, optional scram/md5 hba and TLS;
//!  │                   physical standbys by a hand-made base backup, promote)
//!  ├──▶ ConfigFile / state_dir (temp TOML + state dir)
//!  ├──▶ Pgcdc (the real binary: stdout lines via a channel, stderr to a log file,
//!  │           SIGTERM / SIGKILL)
//!  └──▶ wait_until (poll a condition with a deadline; never a bare sleep)
//! ```
//!
//! Every test gets its own cluster, port and directories, so tests run in
//! parallel (one process per test under nextest). Binaries come from
//! `/usr/lib/postgresql/15/bin` or `$PG_BIN`, other versions from the cache
//! `scripts/fetch-postgres` fills (see `pg_versions`); under root the server runs as
//! the `postgres` OS user. Set `PGCDC_TEST_ECHO=1` to echo pgcdc's stderr and
//! `PGCDC_TEST_KEEP=1` to keep a cluster's directory after the test.

mod cluster;
mod error;
mod metrics;
mod os_user;
pub mod pg_versions;
mod pgcdc_process;
mod standby;
mod streaming;
mod tls_certs;
mod tls_client;
mod wait;

pub mod fixture;
pub mod http_receiver;
pub mod kafka;

pub use cluster::{free_port, quote_ident, quote_literal, PgCluster, PgClusterBuilder};
pub use error::{HarnessError, Result};
pub use metrics::metric;
pub use pgcdc_process::{pgcdc_bin, state_dir, ConfigFile, Pgcdc};
pub use streaming::{slot_active_pid, wait_streaming};
pub use tls_certs::{generate_pki, TestPki};
pub use wait::{wait_until, wait_until_msg};
