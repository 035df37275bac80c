//! High availability: one leader, fenced standbys (`[ha] enabled = true`).
//!
//! ```text
//!  pgcdc run ─▶ standby ── every ha.renew: read lease, pg_try_advisory_lock ──┐
//!     ▲          (admin API up, no slot,        lock free, or lease older     │
//!     │           no delivery)                  than ha.lease_timeout: end the │
//!     │                                         old holder's sessions          ▼
//!     │                                   take over: epoch + 1, end the walsender
//!     │                                   on the slot, engine with fence = epoch
//!     │                                                                        │
//!     └── "lost leadership" ◀── renew fails / epoch moved on ◀── leader: renew ─┘
//!         (engine stopped; its store writes already fail as Fenced)
//! ```
//!
//! Safety does not rest on timing: every store write of a leader checks the
//! lease's epoch inside its own transaction (the store's fence), and a takeover
//! bumps the epoch under a row lock, so once a standby has taken over, the old
//! leader's writes fail whatever its clock or its view of the lease says. The
//! timings (`ha.renew`, `ha.lease_timeout`) only decide how fast a takeover is.
//!
//! Errors: everything on the lease session is transient (a standby retries on
//! its next tick; a leader that cannot renew for `ha.lease_timeout`, or whose
//! session ended, steps down). An engine failure while this process still holds
//! the lease is the engine's definite error: pgcdc exits with it, its session
//! ends, and a standby takes over.

pub(crate) mod lease;
pub(crate) mod role;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{Config, Secret};
use crate::journal::{LeaseRow, LeaseSession};
use crate::replication::SourceUrl;
use lease::bounded;
use role::Role;

/// How long a leader that lost the lease waits for its engine to stop before it
/// exits instead (its writes are fenced either way; this bounds a stuck sink).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// A name for this process that is unique among the processes sharing a lease:
/// host, pid and a few random bits (a restarted container may reuse the pid).
/// Only `[a-z0-9-]`, at most 63 bytes: it is also the `application_name` of its
/// state-database sessions, which a new leader ends by that name.
pub(crate) fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let salt = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("pgcdc-{host}-{}-{salt:04x}", std::process::id())
}

/// The state URL with `application_name` set to the holder id (unless the operator
/// set one), so every store session of this process can be ended by name.
fn named_state_url(url: &Secret, holder: &str) -> Secret {
    let raw = url.expose();
    if raw.contains("application_name=") {
        return url.clone();
    }
    let sep = if raw.contains('?') { '&' } else { '?' };
    Secret::new(format!("{raw}{sep}application_name={holder}"))
}

/// The parsed `state.url` (config load has checked that HA has one).
fn state_url(config: &Config) -> anyhow::Result<SourceUrl> {
    config
        .state
        .url()?
        .context("[ha] enabled = true needs [state] url: the lease lives in the state database")
}

/// Runs this process as a leader or a standby until `shutdown`. `serve` starts the
/// admin API (up all along, on standbys too; the engine passes it in, so that this
/// module needs nothing above it) and what it returns is held until the end;
/// `lead` runs the engine with the given epoch as its fence until its stop signal.
pub(crate) async fn run<S, SFut, G, F, Fut>(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    serve: S,
    mut lead: F,
) -> anyhow::Result<()>
where
    S: FnOnce(Arc<Config>) -> SFut,
    SFut: Future<Output = anyhow::Result<G>>,
    F: FnMut(Arc<Config>, i64, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let holder = holder_id();
    let mut config = config;
    if let Some(url) = &config.state.url {
        config.state.url = Some(named_state_url(url, &holder));
    }
    let config = Arc::new(config);
    let state = state_url(&config)?;
    let source = config.source_url()?;
    let ha = config.ha.timings();
    role::init(&holder, ha.lease_timeout);
    tracing::info!(holder = %holder, renew = ?ha.renew, lease_timeout = ?ha.lease_timeout, "HA: standing by");
    let _admin = serve(config.clone()).await?;

    loop {
        role::set_role(Role::Standby);
        let Some((session, lease)) =
            standby(&state, &source, &config, &holder, &ha, &mut shutdown).await
        else {
            return Ok(());
        };
        role::set_role(Role::Leader);
        role::observed(Some(lease.clone()));
        let epoch = lease.epoch;
        let (stop_tx, stop_rx) = watch::channel(false);
        let engine = lead(config.clone(), epoch, stop_rx);
        tokio::pin!(engine);
        let mut tick = tokio::time::interval(ha.renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed = Instant::now();
        let lost: String = loop {
            tokio::select! {
                r = &mut engine => {
                    // The engine stopping on its own may be the fence at work: a
                    // write refused, or the walsender ended by the new leader.
                    match renew(&session, &holder, epoch, &ha).await {
                        Ok(true) => {
                            return Err(r.err().unwrap_or_else(|| anyhow::anyhow!("the engine stopped unexpectedly")));
                        }
                        Ok(false) => break "another process took over the lease".to_string(),
                        Err(e) => break format!("the lease cannot be renewed ({e:#})"),
                    }
                }
                _ = shutdown.changed() => {
                    let _ = stop_tx.send(true);
                    return engine.await;
                }
                _ = tick.tick() => match renew(&session, &holder, epoch, &ha).await {
                    Ok(true) => last_renewed = Instant::now(),
                    Ok(false) => break "another process took over the lease".to_string(),
                    Err(_) if session.is_closed() => break "the lease session ended".to_string(),
                    Err(e) if last_renewed.elapsed() >= ha.lease_timeout => {
                        break format!("the lease was not renewed for {:?} ({e:#})", ha.lease_timeout)
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), epoch, "cannot renew the lease; retrying"),
                },
            }
        };
        tracing::warn!(epoch, reason = %lost, "lost leadership: stopping the engine and standing by");
        role::set_role(Role::Standby);
        drop(session);
        let _ = stop_tx.send(true);
        match tokio::time::timeout(STOP_WAIT, &mut engine).await {
            Ok(r) => {
                if let Err(e) = r {
                    tracing::info!(error = %format!("{e:#}"), "the engine stopped after losing leadership");
                }
                // The fence is the process's (the admin API's sessions share it): with
                // the engine gone, a standby's operator actions write unfenced again.
                crate::journal::Store::from_config(&config.state).set_fence(None)?;
            }
            Err(_) => anyhow::bail!(
                "lost leadership and the engine did not stop within {STOP_WAIT:?}; exiting \
                 (nothing it does now reaches the store: its writes are fenced)"
            ),
        }
    }
}

/// systemd readiness under HA: streaming as the leader, or a healthy standby
/// (state database reachable, lease observed lately: what `/readyz` checks).
pub(crate) fn sd_ready() -> Option<&'static str> {
    if let Some(status) = crate::sd_notify::streaming() {
        return Some(status);
    }
    role::standby_not_ready_reasons()
        .is_some_and(|reasons| reasons.is_empty())
        .then_some("standing by (HA): ready to take over")
}

/// `ha` of `pgcdc status`: the current leader as the lease says (a CLI command
/// has no role of its own).
pub(crate) async fn leader_json(config: &Config) -> serde_json::Value {
    let read = async {
        let url = state_url(config)?;
        let session = LeaseSession::connect(&url, &config.state.schema).await?;
        session.read().await
    };
    match bounded(Duration::from_secs(10), "reading the lease", read).await {
        Ok(lease) => serde_json::json!({
            "enabled": true,
            "leader": lease.as_ref().map(role::lease_json),
        }),
        Err(e) => serde_json::json!({
            "enabled": true,
            "leader": null,
            "error": format!("{e:#}"),
        }),
    }
}

/// Renews the lease and refreshes the view; one bounded round trip or two.
async fn renew(
    session: &LeaseSession,
    holder: &str,
    epoch: i64,
    ha: &crate::config::HaTimings,
) -> anyhow::Result<bool> {
    let held = bounded(ha.renew, "renewing the lease", session.renew(holder, epoch)).await?;
    if held {
        if let Ok(Ok(l)) = tokio::time::timeout(ha.renew, session.read()).await {
            role::observed(l);
        }
    }
    Ok(held)
}

/// Stands by until this process takes over (Some) or shuts down (None).
async fn standby(
    state: &SourceUrl,
    source: &SourceUrl,
    config: &Config,
    holder: &str,
    ha: &crate::config::HaTimings,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(LeaseSession, LeaseRow)> {
    let mut session: Option<LeaseSession> = None;
    let mut tick = tokio::time::interval(ha.renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged_error = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tick.tick() => {}
        }
        if session.as_ref().is_none_or(LeaseSession::is_closed) {
            match bounded(
                ha.lease_timeout,
                "connecting to the state database",
                LeaseSession::connect(state, &config.state.schema),
            )
            .await
            {
                Ok(s) => session = Some(s),
                Err(e) => {
                    note_failure(&e, &mut logged_error);
                    continue;
                }
            }
        }
        let Some(s) = session.as_ref() else { continue };
        match bounded(
            ha.lease_timeout,
            "the lease check",
            attempt(s, source, config, holder, ha),
        )
        .await
        {
            Ok(Some(lease)) => return session.map(|s| (s, lease)),
            Ok(None) => logged_error = false,
            Err(e) => {
                note_failure(&e, &mut logged_error);
                // It may hold the lock by now: a new session starts clean.
                session = None;
            }
        }
    }
}

fn note_failure(e: &anyhow::Error, logged: &mut bool) {
    let why = format!("{e:#}");
    role::state_db_failed(&why);
    if !*logged {
        tracing::warn!(error = %why, "standby: cannot check the lease; retrying every ha.renew");
        *logged = true;
    }
}

/// One look at the lease: takes over when the lock is free, ends the sessions of a
/// holder that stopped renewing.
async fn attempt(
    session: &LeaseSession,
    source: &SourceUrl,
    config: &Config,
    holder: &str,
    ha: &crate::config::HaTimings,
) -> anyhow::Result<Option<LeaseRow>> {
    let lease = session.read().await?;
    role::observed(lease.clone());
    let Some(lease) = lease else {
        return Ok(None);
    };
    let mut locked = session.try_lock().await?;
    if !locked && lease.holder != holder && lease.age_seconds > ha.lease_timeout.as_secs_f64() {
        let ended = session.end_sessions_of(&lease).await?;
        tracing::warn!(
            holder = %lease.holder,
            epoch = lease.epoch,
            renewed_seconds_ago = lease.age_seconds,
            ended,
            "the leader stopped renewing the lease: ended its state-database sessions"
        );
        // An ended backend frees its lock as it exits, a moment later.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            locked = session.try_lock().await?;
            if locked {
                break;
            }
        }
    }
    if !locked {
        return Ok(None);
    }
    if lease.holder != holder {
        // Its lock is gone, but a paused leader keeps its other sessions.
        session.end_sessions_of(&lease).await?;
    }
    let new = session.take_over(holder).await?;
    match lease::end_slot_holder(source, &config.source.slot).await {
        Ok(true) => {
            tracing::info!(slot = %config.source.slot, "ended the old leader's walsender on the slot")
        }
        Ok(false) => {}
        // The engine's preflight waits for the slot to be released anyway.
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot check the slot's walsender"),
    }
    tracing::info!(
        epoch = new.epoch,
        previous = %lease.holder,
        previous_epoch = lease.epoch,
        "took over leadership"
    );
    Ok(Some(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_ids_are_application_names() {
        let id = holder_id();
        assert!(id.len() <= 63, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{id}"
        );
        assert!(id.contains(&format!("-{}-", std::process::id())), "{id}");
    }

    #[test]
    fn the_state_url_gets_the_holder_as_application_name_unless_set() {
        let named = named_state_url(&Secret::new("postgres://u:pw@h/db"), "pgcdc-x-1-ab");
        assert_eq!(
            named.expose(),
            "postgres://u:pw@h/db?application_name=pgcdc-x-1-ab"
        );
        let named = named_state_url(&Secret::new("postgres://u@h/db?sslmode=disable"), "p");
        assert_eq!(
            named.expose(),
            "postgres://u@h/db?sslmode=disable&application_name=p"
        );
        let own = Secret::new("postgres://u@h/db?application_name=mine");
        assert_eq!(named_state_url(&own, "p").expose(), own.expose());
    }
}
