//! Source management: preflight checks, the publication and the slot.
//!
//! Every check either passes or reports the problem and the fix an operator
//! can apply. `pgcdc check` prints them all; `pgcdc run` refuses to start
//! while any fails. Failures here are definite, except an unreachable
//! database, which `run` retries.

pub(crate) mod ddl_capture;
pub(crate) mod failover;
pub(crate) mod identity;
pub(crate) mod publication;
mod role;
mod state_schema;
mod streaming;

use std::collections::HashMap;
use std::time::Duration;

use pgcdc_schema::{quote_ident, TableName};
use tokio_postgres::Client;

use crate::config::Config;
use crate::replication::{ReplicationConnection, ReplicationError};

/// One preflight check's outcome.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// What was checked, e.g. `wal_level`.
    pub(crate) name: String,
    /// `Ok(detail)` or `Err(problem and fix)`.
    pub(crate) outcome: Result<String, Problem>,
    /// An `Ok` that the operator should still read (pgcdc runs, but sees less).
    pub(crate) warning: bool,
}

/// A failed check: what is wrong and how to fix it.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    /// What is wrong.
    pub(crate) problem: String,
    /// What the operator should do.
    pub(crate) fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} — fix: {}", self.problem, self.fix)
    }
}

fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        outcome: Ok(detail.into()),
        warning: false,
    }
}

/// Passes, with something the operator should know (`check` prints `warn`, `run` logs it).
fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
    Check {
        warning: true,
        ..ok(name, detail)
    }
}

fn fail(name: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        outcome: Err(Problem {
            problem: problem.into(),
            fix: fix.into(),
        }),
        warning: false,
    }
}

/// The message of a query error, without tokio-postgres' "db error:" wrapper.
pub(crate) fn sql_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// State of the replication slot as the catalog reports it.
#[derive(Debug, Clone)]
pub(crate) struct SlotInfo {
    /// Output plugin.
    pub(crate) plugin: String,
    /// Database the slot belongs to.
    pub(crate) database: String,
    /// PID of the walsender using it, if any.
    pub(crate) active_pid: Option<i32>,
    /// `confirmed_flush_lsn` as text.
    pub(crate) confirmed_flush_lsn: Option<String>,
    /// `wal_status` (reserved, extended, unreserved, lost).
    pub(crate) wal_status: Option<String>,
    /// Bytes of WAL the slot retains (`pg_current_wal_lsn() - restart_lsn`).
    pub(crate) retained_bytes: Option<i64>,
    /// Bytes that can still be written before the slot would lose WAL (null: unlimited).
    pub(crate) safe_wal_size: Option<i64>,
}

/// Reads the slot's row in `pg_replication_slots`.
pub(crate) async fn slot_info(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, wal_status, \
             (pg_current_wal_lsn() - restart_lsn)::int8, safe_wal_size \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get::<_, Option<String>>(0).unwrap_or_default(),
        database: r.get::<_, Option<String>>(1).unwrap_or_default(),
        active_pid: r.get(2),
        confirmed_flush_lsn: r.get(3),
        wal_status: r.get(4),
        retained_bytes: r.get(5),
        safe_wal_size: r.get(6),
    }))
}

/// Runs every source check. Never fails early: each check is reported.
pub(crate) async fn preflight(config: &Config, client: &Client) -> Vec<Check> {
    let mut checks = Vec::new();
    let src = &config.source;

    let major = match failover::server_version(client).await {
        Ok((num, text)) => {
            let check = failover::version_check(num, &text);
            let too_old = check.outcome.is_err();
            checks.push(check);
            if too_old {
                if src.streaming {
                    checks.push(streaming::too_old(failover::major_of(num)));
                }
                // Later checks would fail on catalog columns an old server lacks.
                return checks;
            }
            failover::major_of(num)
        }
        Err(e) => {
            checks.push(fail(
                "server version",
                sql_message(&e),
                "check the source connection",
            ));
            return checks;
        }
    };

    match client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
    {
        Ok(row) => {
            let level: String = row.get(0);
            checks.push(if level == "logical" {
                ok("wal_level", "logical")
            } else {
                fail(
                    "wal_level",
                    format!("wal_level is '{level}', logical replication needs 'logical'"),
                    "run ALTER SYSTEM SET wal_level = logical; then restart Postgres",
                )
            });
        }
        Err(e) => checks.push(fail(
            "wal_level",
            sql_message(&e),
            "check the source connection",
        )),
    }

    if src.streaming {
        checks.push(streaming::check(client, major).await);
    }

    let (role, superuser) = role::check_role(client).await;
    checks.push(role);
    if src.ddl_capture {
        checks.push(if superuser {
            ok(
                "source.ddl_capture",
                "the role is a superuser: pgcdc installs its event trigger",
            )
        } else {
            fail(
                "source.ddl_capture",
                "an event trigger needs a superuser, and this role is not one",
                "connect as a superuser, or set source.ddl_capture = false (schema changes are \
                 then seen at each table's next write)",
            )
        });
    }

    // Tables are matched by identity: a captured table renamed since the journal
    // remembered its OID is still the configured one.
    let remembered = identity::remembered_in(&crate::journal::Store::from_config(&config.state));
    let published = identity::publication_tables(client, &src.publication)
        .await
        .map_err(|e| sql_message(&e));
    let mut all_owned = true;
    let mut resolved: Vec<(TableName, Option<u32>)> = Vec::new();
    for table in config.tables() {
        let remembered = remembered.get(table).copied();
        let in_publication = published.as_ref().ok().and_then(Option::as_ref);
        let (check, owned, oid) =
            match identity::resolve(client, table, remembered, in_publication).await {
                Ok(found) => {
                    let (check, owned) = check_table(client, table, found.as_ref()).await;
                    (check, owned, found.map(|f| f.oid))
                }
                Err(e) => (
                    fail(
                        format!("table {table}"),
                        sql_message(&e),
                        "check the source connection",
                    ),
                    false,
                    None,
                ),
            };
        all_owned &= owned;
        checks.push(check);
        resolved.push((table.clone(), oid));
    }

    checks.push(
        check_publication(
            config,
            client,
            all_owned || superuser,
            published.as_ref().map(Option::as_ref),
            &resolved,
        )
        .await,
    );
    checks.extend(
        publication::checks(config, client, major, all_owned || superuser, &resolved).await,
    );
    checks.extend(check_slot(client, &src.slot, src.on_slot_lost).await);
    checks.extend(failover::checks(config, client, major).await);
    checks.extend(state_schema::check(config, client).await);
    checks
}

/// Checks a configured table, found (by identity, see `identity`) or not.
async fn check_table(
    client: &Client,
    table: &TableName,
    found: Option<&identity::ResolvedTable>,
) -> (Check, bool) {
    let name = format!("table {table}");
    let Some(found) = found else {
        return (
            fail(
                name,
                format!("table {table} does not exist (or is not a table)"),
                "create it, or remove it from source.tables (if it was renamed, write its new name)",
            ),
            false,
        );
    };
    let row = client
        .query_opt(
            "SELECT c.relreplident::text, has_table_privilege(c.oid, 'SELECT'), \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
             pg_has_role(current_user, c.relowner, 'USAGE') \
             FROM pg_class c WHERE c.oid = $1",
            &[&found.oid],
        )
        .await;
    // The checks below speak of the table by the name it has now.
    // (`run` logs the rename as a warning when it resolves the tables again.)
    let renamed = found.renamed().then(|| {
        format!(
            "; renamed to {} (OID {}), still captured — update source.tables to the new name",
            found.current, found.oid
        )
    });
    let table = &found.current;
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => {
            return (
                fail(
                    name,
                    format!("table {table} does not exist (or is not a table)"),
                    "create it, or remove it from source.tables",
                ),
                false,
            )
        }
        Err(e) => {
            return (
                fail(name, sql_message(&e), "check the source connection"),
                false,
            )
        }
    };
    let identity: String = row.get(0);
    let select: bool = row.get(1);
    let has_pk: bool = row.get(2);
    let owned: bool = row.get(3);
    if !select {
        return (
            fail(
                name,
                format!("the role cannot SELECT from {table}"),
                format!("GRANT SELECT ON {} TO <pgcdc role>;", table.quoted()),
            ),
            owned,
        );
    }
    let check = match identity.as_str() {
        "d" if has_pk => ok(
            name,
            format!(
                "primary key, replica identity default{}",
                renamed.as_deref().unwrap_or_default()
            ),
        ),
        "d" => fail(
            name,
            format!("{table} has no primary key, so updates and deletes cannot be identified"),
            format!(
                "add a primary key, or ALTER TABLE {} REPLICA IDENTITY FULL (or USING INDEX <unique index>)",
                table.quoted()
            ),
        ),
        "n" => fail(
            name,
            format!("{table} has REPLICA IDENTITY NOTHING: updates and deletes carry no key"),
            format!("ALTER TABLE {} REPLICA IDENTITY DEFAULT (with a primary key) or FULL", table.quoted()),
        ),
        "f" => ok(
            name,
            format!("replica identity full{}", renamed.as_deref().unwrap_or_default()),
        ),
        _ => ok(
            name,
            format!("replica identity index{}", renamed.as_deref().unwrap_or_default()),
        ),
    };
    (check, owned)
}

/// `published`: the publication's tables by OID (None: no publication; Err: the query
/// failed); `resolved`: each configured table's OID, when it was found.
async fn check_publication(
    config: &Config,
    client: &Client,
    can_create: bool,
    published: Result<Option<&HashMap<u32, TableName>>, &String>,
    resolved: &[(TableName, Option<u32>)],
) -> Check {
    let publication = &config.source.publication;
    let name = format!("publication {publication}");
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await;
    match row {
        Err(e) => fail(name, sql_message(&e), "check the source connection"),
        Ok(None) if can_create => ok(name, "missing; pgcdc will create it"),
        Ok(None) => fail(
            name,
            format!("publication {publication} is missing and this role does not own every table, so it cannot create it"),
            format!("as the tables' owner run: {};", publication::create_sql(config)),
        ),
        Ok(Some(row)) => {
            let ops: Vec<bool> = (1..5).map(|i| row.get(i)).collect();
            let wanted = config.source.published_operations();
            let unpublished: Vec<&str> = crate::config::SourceConfig::ALL_OPERATIONS
                .iter()
                .zip(&ops)
                .filter(|(op, published)| !**published && wanted.contains(op))
                .map(|(op, _)| *op)
                .collect();
            let set_publish = format!(
                "ALTER PUBLICATION {} SET (publish = {});",
                quote_ident(publication),
                pgcdc_schema::quote_literal(&config.source.publish)
            );
            // A missing truncate is a warning below; missing row changes fail.
            let truncate = !unpublished.contains(&"truncate");
            let rows: Vec<&str> = unpublished.into_iter().filter(|o| *o != "truncate").collect();
            if !rows.is_empty() {
                return fail(
                    name,
                    format!(
                        "publication {publication} does not publish {} (source.publish = {:?})",
                        rows.join(", "),
                        config.source.publish
                    ),
                    set_publish,
                );
            }
            let covered = match published {
                Ok(Some(covered)) => covered,
                Ok(None) => return fail(name, format!("publication {publication} vanished during the checks"), "run the check again"),
                Err(e) => return fail(name, e.clone(), "check the source connection"),
            };
            // By identity: a renamed table whose OID is still published is covered.
            let missing: Vec<TableName> = resolved
                .iter()
                .filter(|(_, oid)| !oid.is_some_and(|oid| covered.contains_key(&oid)))
                .map(|(t, _)| t.clone())
                .collect();
            if missing.is_empty() && !truncate {
                // A truncate is not a row change a sink must have: pgcdc runs, but says
                // what will be missing (it drops nothing it receives).
                warn(
                    name,
                    format!(
                        "covers every table, but does not publish truncate: a TRUNCATE of a \
                         captured table will not be seen (no truncate event reaches any sink) — \
                         to see them: {set_publish}"
                    ),
                )
            } else if missing.is_empty() {
                ok(name, "covers every table")
            } else {
                fail(
                    name,
                    format!(
                        "publication {publication} exists but does not include {}",
                        missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    format!(
                        "ALTER PUBLICATION {} ADD TABLE {};",
                        quote_ident(publication),
                        missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ")
                    ),
                )
            }
        }
    }
}

async fn check_slot(
    client: &Client,
    slot: &str,
    on_slot_lost: crate::config::OnSlotLost,
) -> Vec<Check> {
    let name = format!("slot {slot}");
    let mut checks = Vec::new();
    let db: String = match client
        .query_one("SELECT current_database()::text", &[])
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => return vec![fail(name, sql_message(&e), "check the source connection")],
    };
    match slot_info(client, slot).await {
        Err(e) => checks.push(fail(&name, sql_message(&e), "check the source connection")),
        Ok(Some(info)) => {
            if info.plugin != "pgoutput" {
                checks.push(fail(
                    &name,
                    format!(
                        "slot {slot} uses plugin {:?}, pgcdc needs pgoutput",
                        info.plugin
                    ),
                    "set source.slot to another name, or drop that slot if it is unused",
                ));
            } else if info.database != db {
                checks.push(fail(
                    &name,
                    format!(
                        "slot {slot} belongs to database {:?}, not {db:?}",
                        info.database
                    ),
                    "set source.slot to a name unique to this database",
                ));
            } else if info.wal_status.as_deref() == Some("lost")
                && on_slot_lost == crate::config::OnSlotLost::Resync
            {
                checks.push(ok(
                    &name,
                    format!("slot {slot} has lost WAL it needed (wal_status = lost); source.on_slot_lost = \"resync\": pgcdc drops and recreates it, then resyncs every table"),
                ));
            } else if info.wal_status.as_deref() == Some("lost") {
                checks.push(fail(
                    &name,
                    format!("slot {slot} has lost WAL it needed (wal_status = lost)"),
                    "changes were lost at the source; set source.on_slot_lost = \"resync\" (pgcdc recreates the slot and resyncs every table), or drop the slot (pgcdc teardown or pg_drop_replication_slot) and resync",
                ));
            } else if let Some(pid) = info.active_pid {
                checks.push(fail(
                    &name,
                    format!("slot {slot} is in use by another process (walsender PID {pid})"),
                    format!("stop the other pgcdc using it, or if it is stale: SELECT pg_terminate_backend({pid});"),
                ));
            } else {
                checks.push(ok(
                    &name,
                    format!(
                        "exists, confirmed up to {}",
                        info.confirmed_flush_lsn.unwrap_or_else(|| "-".into())
                    ),
                ));
            }
        }
        Ok(None) => {
            let free = client
                .query_one(
                    "SELECT current_setting('max_replication_slots')::int - (SELECT count(*)::int FROM pg_replication_slots)",
                    &[],
                )
                .await;
            checks.push(match free {
                Ok(r) if r.get::<_, i32>(0) > 0 => ok(&name, "missing; pgcdc will create it"),
                Ok(_) => fail(
                    &name,
                    "no free replication slot (max_replication_slots reached)",
                    "drop an unused slot (SELECT * FROM pg_replication_slots) or raise max_replication_slots and restart Postgres",
                ),
                Err(e) => fail(&name, sql_message(&e), "check the source connection"),
            });
        }
    }
    let senders = client
        .query_one(
            "SELECT current_setting('max_wal_senders')::int - (SELECT count(*)::int FROM pg_stat_replication)",
            &[],
        )
        .await;
    checks.push(match senders {
        Ok(r) if r.get::<_, i32>(0) > 0 => {
            ok("wal senders", format!("{} free", r.get::<_, i32>(0)))
        }
        Ok(_) => fail(
            "wal senders",
            "no free WAL sender (max_wal_senders reached)",
            "raise max_wal_senders and restart Postgres, or stop another replication client",
        ),
        Err(e) => fail(
            "wal senders",
            sql_message(&e),
            "check the source connection",
        ),
    });
    checks
}

/// Waits (up to `max_wait`) for a slot held by a vanished process to be released: after a
/// crash the old walsender may linger until it notices the dead socket.
pub(crate) async fn wait_slot_released(
    client: &Client,
    slot: &str,
    max_wait: Duration,
) -> Result<(), Problem> {
    let deadline = tokio::time::Instant::now() + max_wait;
    loop {
        match slot_info(client, slot).await {
            Ok(Some(SlotInfo {
                active_pid: Some(pid),
                ..
            })) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Problem {
                        problem: format!("slot {slot} is in use by another process (walsender PID {pid})"),
                        fix: format!(
                            "stop the other pgcdc using it, or if it is stale: SELECT pg_terminate_backend({pid});"
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => return Ok(()),
        }
    }
}

/// Creates the publication when missing. Returns whether pgcdc created it.
pub(crate) async fn ensure_publication(
    config: &Config,
    client: &Client,
) -> Result<bool, tokio_postgres::Error> {
    publication::ensure(config, client).await
}

/// Creates the slot when missing. Returns whether pgcdc created it.
pub(crate) async fn ensure_slot(
    config: &Config,
    client: &Client,
    conn: &mut ReplicationConnection,
    export_snapshot: bool,
) -> Result<Option<crate::replication::CreatedSlot>, ReplicationError> {
    let major = conn.server_major().unwrap_or(0);
    let failover = failover::wants_failover(config, major);
    if slot_info(client, &config.source.slot).await?.is_some() {
        if failover {
            failover::ensure_failover(client, conn, &config.source.slot).await?;
        }
        return Ok(None);
    }
    let created = conn
        .create_slot(&config.source.slot, export_snapshot, failover)
        .await?;
    tracing::info!(slot = %config.source.slot, failover, consistent_point = %pgcdc_schema::Lsn(created.consistent_point), "created replication slot");
    Ok(Some(created))
}
