//! The lease in the state database: who leads, since when, with which epoch.
//!
//! One row in `<state.schema>.lease` (created by the store's migrations) and a
//! session advisory lock. The lock says "the leader's session is alive"; the
//! row says who it is (`holder`, `holder_pid`), when it last renewed
//! (`renewed_at`, compared with the database's clock only, so the hosts'
//! clocks never matter) and the epoch that fences its store writes.
//!
//! Errors here are all transient from the caller's point of view: a standby
//! retries on its next tick, a leader that cannot renew steps down. (It lives
//! with the store's Postgres backend, so that only journal/ names its tables;
//! `crate::ha` runs the election over it.)

use tokio_postgres::Client;

use crate::replication::{connect_sql, SourceUrl};

/// The two keys of the session advisory lock (`pg_try_advisory_lock(int4, int4)`):
/// a constant, and the state schema, so two deployments sharing a database do
/// not share a leader.
const LOCK_KEY_SQL: &str = "hashtext('pgcdc-ha'), hashtext($1::text)";

/// How long a takeover waits for a lock on the lease row before it ends the
/// sessions holding it (a paused leader inside a write transaction).
const LEASE_LOCK_WAIT: &str = "2s";

/// The lease as last read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseRow {
    /// The fencing token: bumped by each takeover.
    pub(crate) epoch: i64,
    /// Who holds it (a process's holder id), empty before the first leader.
    pub(crate) holder: String,
    /// Backend pid of the holder's lock session.
    pub(crate) holder_pid: Option<i32>,
    /// When the holder took over (RFC 3339).
    pub(crate) since: Option<String>,
    /// When it last renewed (RFC 3339).
    pub(crate) renewed_at: Option<String>,
    /// Seconds since the last renewal, by the database's clock.
    pub(crate) age_seconds: f64,
}

/// A session on the state database that holds (or tries for) the leader lock.
pub(crate) struct LeaseSession {
    client: Client,
    schema: String,
}

impl LeaseSession {
    /// Connects to the state database.
    pub(crate) async fn connect(url: &SourceUrl, schema: &str) -> anyhow::Result<LeaseSession> {
        let client = connect_sql(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the state database at {url}: {e}"))?;
        Ok(LeaseSession {
            client,
            schema: schema.to_string(),
        })
    }

    fn table(&self) -> String {
        format!("\"{}\".lease", self.schema)
    }

    /// Reads the lease (None: no row yet, the store has not been created).
    pub(crate) async fn read(&self) -> anyhow::Result<Option<LeaseRow>> {
        read_lease(&self.client, &self.schema).await
    }

    /// Takes the leader lock if it is free. A lock this session already holds is
    /// taken again (the count does not matter: the session's end frees it).
    pub(crate) async fn try_lock(&self) -> anyhow::Result<bool> {
        let row = self
            .client
            .query_one(
                &format!("SELECT pg_try_advisory_lock({LOCK_KEY_SQL})"),
                &[&self.schema],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Ends the sessions of a holder that stopped renewing: its lock session (the
    /// recorded pid) and every session it named itself with (`application_name`).
    /// Frees the lock of a hung or partitioned leader; returns how many ended.
    pub(crate) async fn end_sessions_of(&self, old: &LeaseRow) -> anyhow::Result<i64> {
        if old.holder.is_empty() {
            return Ok(0);
        }
        let row = self
            .client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND (pid = $1 OR application_name = $2)",
                &[&old.holder_pid.unwrap_or(0), &old.holder],
            )
            .await?;
        Ok(row.get(0))
    }

    /// With the lock held: makes this process the holder with a new epoch. A session
    /// that keeps the lease row locked (a paused leader inside a write transaction)
    /// is ended after [`LEASE_LOCK_WAIT`]. Returns the new lease.
    pub(crate) async fn take_over(&self, holder: &str) -> anyhow::Result<LeaseRow> {
        let table = self.table();
        self.client
            .batch_execute(&format!("SET lock_timeout = '{LEASE_LOCK_WAIT}'"))
            .await?;
        for _ in 0..5 {
            let bumped = self
                .client
                .execute(
                    &format!(
                        "UPDATE {table} SET epoch = epoch + 1, holder = $1, \
                         holder_pid = pg_backend_pid(), since = now(), renewed_at = now() WHERE id = 1"
                    ),
                    &[&holder],
                )
                .await;
            match bumped {
                Ok(0) => anyhow::bail!(
                    "the lease table {table} has no row; the state store's migrations create it"
                ),
                Ok(_) => {
                    self.client.batch_execute("RESET lock_timeout").await?;
                    return self
                        .read()
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("the lease row of {table} vanished"));
                }
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    let ended: i64 = self
                        .client
                        .query_one(
                            &format!(
                                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                                 WHERE relation = '{table}'::regclass AND granted \
                                 AND pid <> pg_backend_pid()"
                            ),
                            &[],
                        )
                        .await?
                        .get(0);
                    tracing::warn!(
                        ended,
                        "ended the sessions that held the lease row (a paused leader's transaction)"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the lease row of {table} stayed locked by other sessions")
    }

    /// Renews the lease while this process holds `epoch`. False: another process
    /// took over (the epoch moved on).
    pub(crate) async fn renew(&self, holder: &str, epoch: i64) -> anyhow::Result<bool> {
        let n = self
            .client
            .execute(
                &format!(
                    "UPDATE {} SET renewed_at = now() WHERE id = 1 AND epoch = $1 AND holder = $2",
                    self.table()
                ),
                &[&epoch, &holder],
            )
            .await?;
        Ok(n == 1)
    }

    /// Whether the connection is gone (its lock, if any, with it).
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Reads the lease row over any connection to the state database.
pub(crate) async fn read_lease(client: &Client, schema: &str) -> anyhow::Result<Option<LeaseRow>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT epoch, coalesce(holder, ''), holder_pid, \
                 to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                 to_char(renewed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                 coalesce(extract(epoch FROM now() - renewed_at)::float8, 1e9) \
                 FROM \"{schema}\".lease WHERE id = 1"
            ),
            &[],
        )
        .await?;
    Ok(row.map(|r| LeaseRow {
        epoch: r.get(0),
        holder: r.get(1),
        holder_pid: r.get(2),
        since: r.get(3),
        renewed_at: r.get(4),
        age_seconds: r.get(5),
    }))
}
