//! This process's role as the admin API shows it: `/api/status`, the status
//! page, `/readyz` and the `pgcdc_leader` metric read it; the election loop
//! writes it.

use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Value};

use crate::journal::LeaseRow;

/// What this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Waits for the lease; admin API up, no slot, no delivery.
    Standby,
    /// Holds the lease: streams and delivers.
    Leader,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Leader => "leader",
        }
    }
}

#[derive(Debug)]
struct View {
    holder_id: String,
    role: Role,
    /// The lease as last read, and when.
    lease: Option<(LeaseRow, Instant)>,
    /// Why the last look at the state database failed (None: it answered).
    state_db_error: Option<String>,
    /// The longest a standby may go without reading the lease and still be ready.
    stale_after: std::time::Duration,
}

static VIEW: LazyLock<Mutex<Option<View>>> = LazyLock::new(|| Mutex::new(None));

fn view() -> MutexGuard<'static, Option<View>> {
    // A panic elsewhere while holding the lock leaves plain data: still usable.
    VIEW.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the view: HA is on, this process stands by.
pub(crate) fn init(holder_id: &str, stale_after: std::time::Duration) {
    *view() = Some(View {
        holder_id: holder_id.to_string(),
        role: Role::Standby,
        lease: None,
        state_db_error: None,
        stale_after,
    });
    crate::metrics::metrics().leader.set(0);
}

/// Records this process's role.
pub(crate) fn set_role(role: Role) {
    if let Some(v) = view().as_mut() {
        v.role = role;
    }
    crate::metrics::metrics()
        .leader
        .set(i64::from(role == Role::Leader));
}

/// Records a successful read of the lease.
pub(crate) fn observed(lease: Option<LeaseRow>) {
    if let Some(v) = view().as_mut() {
        v.lease = lease.map(|l| (l, Instant::now()));
        v.state_db_error = None;
    }
}

/// Records a failed look at the state database.
pub(crate) fn state_db_failed(why: &str) {
    if let Some(v) = view().as_mut() {
        v.state_db_error = Some(why.to_string());
    }
}

/// Why a standby is not ready (empty: it is: state database reachable, lease
/// observed lately). None when HA is off or this process leads: readiness is then
/// the engine's.
pub(crate) fn standby_not_ready_reasons() -> Option<Vec<String>> {
    let guard = view();
    let v = guard.as_ref().filter(|v| v.role == Role::Standby)?;
    let mut reasons = Vec::new();
    if let Some(e) = &v.state_db_error {
        reasons.push(format!(
            "standby: the state database does not answer ({e}); check [state] url and that the database is up"
        ));
    }
    match &v.lease {
        None => reasons.push(
            "standby: the lease has not been read yet (the state store may not exist: the first \
             leader creates it)"
                .to_string(),
        ),
        Some((_, at)) if at.elapsed() > v.stale_after => reasons.push(format!(
            "standby: the lease was last read {:.0} s ago",
            at.elapsed().as_secs_f64()
        )),
        Some(_) => {}
    }
    Some(reasons)
}

/// `ha` of `/api/status`: this process's role and the current leader. None when HA
/// is off.
pub(crate) fn status_json() -> Option<Value> {
    let guard = view();
    let v = guard.as_ref()?;
    Some(json!({
        "enabled": true,
        "role": v.role.as_str(),
        "holder_id": v.holder_id,
        "state_db_error": v.state_db_error,
        "leader": v.lease.as_ref().map(|(l, _)| lease_json(l)),
    }))
}

/// The current leader as the lease row says.
pub(crate) fn lease_json(l: &LeaseRow) -> Value {
    json!({
        "holder_id": (!l.holder.is_empty()).then_some(&l.holder),
        "epoch": l.epoch,
        "since": l.since,
        "renewed_at": l.renewed_at,
        "renewed_seconds_ago": (l.age_seconds * 10.0).round() / 10.0,
    })
}
