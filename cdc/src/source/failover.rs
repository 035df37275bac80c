//! The source's server version, and what a failover needs from it.
//!
//! pgcdc supports PostgreSQL 14 to 18 (14: logical decoding messages in
//! pgoutput, which carry the resync watermarks). On 17+ the slot is a failover
//! slot (`source.failover_slot`, default on there): standbys that synchronise it
//! carry it across a promotion. What a standby must be set up with cannot be seen
//! from the primary; `pgcdc check` lists it and checks what the primary shows.

use tokio_postgres::Client;

use super::{fail, ok, sql_message, Check};
use crate::config::Config;

/// The oldest supported major version.
pub(crate) const MIN_MAJOR: u32 = 14;
/// The first version with failover slots.
pub(crate) const FAILOVER_MAJOR: u32 = 17;

/// `server_version_num` and `server_version` of the source.
pub(crate) async fn server_version(
    client: &Client,
) -> Result<(u32, String), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version')",
            &[],
        )
        .await?;
    let num: i32 = row.get(0);
    Ok((u32::try_from(num).unwrap_or(0), row.get(1)))
}

/// The major version of a `server_version_num` (170002 → 17).
pub(crate) fn major_of(num: u32) -> u32 {
    num / 10_000
}

/// Whether the slot is (to be) a failover slot on a server of `major`.
pub(crate) fn wants_failover(config: &Config, major: u32) -> bool {
    config
        .source
        .failover_slot
        .unwrap_or(major >= FAILOVER_MAJOR)
}

/// The version check: a server older than 14 is refused.
pub(crate) fn version_check(num: u32, text: &str) -> Check {
    let major = major_of(num);
    if major < MIN_MAJOR {
        fail(
            "server version",
            format!("the source runs PostgreSQL {text}; pgcdc supports PostgreSQL {MIN_MAJOR} to 18"),
            format!("upgrade the source database to PostgreSQL {MIN_MAJOR} or later (pgcdc needs logical decoding messages in pgoutput, new in 14)"),
        )
    } else {
        ok("server version", format!("PostgreSQL {text}"))
    }
}

/// What a failover needs, checked as far as the primary shows it.
pub(crate) async fn checks(config: &Config, client: &Client, major: u32) -> Vec<Check> {
    let name = "failover";
    let slot = &config.source.slot;
    if major < FAILOVER_MAJOR {
        if config.source.failover_slot == Some(true) {
            return vec![fail(
                name,
                format!("source.failover_slot = true needs PostgreSQL {FAILOVER_MAJOR} or later; the source is {major}"),
                "remove source.failover_slot (before 17 a slot does not survive a failover; source.on_slot_lost decides what pgcdc does then)",
            )];
        }
        return vec![ok(
            name,
            format!(
                "PostgreSQL {major} has no failover slots: after a failover the slot is gone on the new primary, and source.on_slot_lost = \"{}\" applies",
                on_slot_lost_name(config)
            ),
        )];
    }
    if !wants_failover(config, major) {
        return vec![ok(
            name,
            "source.failover_slot = false: the slot is not synchronised to standbys; after a failover source.on_slot_lost applies",
        )];
    }
    let mut checks = Vec::new();
    match client
        .query_opt(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
    {
        Ok(Some(row)) if !row.get::<_, bool>(0) => checks.push(ok(
            format!("failover slot {slot}"),
            "exists without failover; pgcdc makes it a failover slot at start (ALTER_REPLICATION_SLOT)",
        )),
        Ok(Some(_)) => checks.push(ok(format!("failover slot {slot}"), "failover = true")),
        Ok(None) => checks.push(ok(
            format!("failover slot {slot}"),
            "missing; pgcdc creates it with FAILOVER",
        )),
        Err(e) => checks.push(fail(name, sql_message(&e), "check the source connection")),
    }
    // Physical slots the standbys stream through, and whether the primary holds
    // logical changes back until they have them.
    let row = client
        .query_one(
            "SELECT current_setting('synchronized_standby_slots'), \
             coalesce(string_agg(slot_name::text || CASE WHEN active THEN '' ELSE ' (inactive)' END, ', '), '') \
             FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await;
    let standby_needs =
        "each standby needs sync_replication_slots = on, hot_standby_feedback = on, \
         primary_slot_name = '<its physical slot>' and dbname=<database> in primary_conninfo";
    match row {
        Err(e) => checks.push(fail(name, sql_message(&e), "check the source connection")),
        Ok(row) => {
            let synchronized: String = row.get(0);
            let physical: String = row.get(1);
            let detail = if physical.is_empty() {
                format!("no standby streams through a physical slot here yet; {standby_needs}")
            } else if synchronized.trim().is_empty() {
                format!(
                    "physical slots: {physical}; warning: synchronized_standby_slots is empty, so pgcdc may \
                     receive changes a standby does not have yet and the synchronised slot could be behind \
                     after a failover: set synchronized_standby_slots = '<the standbys' physical slots>' \
                     on the primary; {standby_needs}"
                )
            } else {
                format!("physical slots: {physical}; synchronized_standby_slots = '{synchronized}'; {standby_needs}")
            };
            checks.push(ok(name, detail));
        }
    }
    checks
}

fn on_slot_lost_name(config: &Config) -> &'static str {
    match config.source.on_slot_lost {
        crate::config::OnSlotLost::Fail => "fail",
        crate::config::OnSlotLost::Resync => "resync",
    }
}

/// Makes an existing slot a failover slot (17+), e.g. one created before the upgrade.
pub(crate) async fn ensure_failover(
    client: &Client,
    conn: &mut crate::replication::ReplicationConnection,
    slot: &str,
) -> Result<(), crate::replication::ReplicationError> {
    let row = client
        .query_opt(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if row.is_some_and(|r| !r.get::<_, bool>(0)) {
        conn.alter_slot_failover(slot).await?;
        tracing::info!(slot, "the slot is now a failover slot (synchronised to standbys with sync_replication_slots = on)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_14_are_refused_with_the_fix() {
        let old = version_check(130_015, "13.15");
        let problem = old.outcome.err().map(|p| p.to_string()).unwrap_or_default();
        assert!(
            problem.contains("PostgreSQL 13.15")
                && problem.contains("14 to 18")
                && problem.contains("upgrade"),
            "{problem}"
        );
        for num in [140_000, 150_007, 180_004] {
            assert!(version_check(num, "x").outcome.is_ok(), "{num}");
        }
        assert_eq!(major_of(170_002), 17);
    }
}
