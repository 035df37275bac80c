//! Durations in the config (`"10s"`, `"7d"`): parsed once, while the file is
//! read, into `std::time::Duration`. A bad one fails at its key path with an
//! example of what to write; nothing later parses the text again.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

fn with_example<'de, D: Deserializer<'de>>(d: D, example: &str) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        D::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. {example}"
        ))
    })
}

/// `source.heartbeat`
pub(super) fn heartbeat<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with_example(d, "\"10s\", or \"0s\" to turn it off")
}

/// `source.resync_statement_timeout`: not zero, which would let a query run for ever.
pub(super) fn resync_statement_timeout<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    let timeout = with_example(d, "\"60s\"")?;
    if timeout.is_zero() {
        return Err(D::Error::custom(
            "0 would let a resync's query run for ever; give a duration, e.g. \"60s\"",
        ));
    }
    Ok(timeout)
}

/// `journal.retention`
pub(super) fn journal_retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with_example(d, "\"7d\" or \"12h\"")
}

/// `audit.retention`
pub(super) fn audit_retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with_example(d, "\"30d\" or \"12h\"")
}

/// `admin.ready_max_sink_lag`
pub(super) fn sink_lag<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with_example(d, "\"5m\"")
}

/// `ha.renew`
pub(super) fn ha_renew<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with_example(d, "\"2s\"")
}

/// `ha.lease_timeout`
pub(super) fn ha_lease_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with_example(d, "\"10s\"")
}

/// Days as a `Duration` (for defaults).
pub(super) const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}
