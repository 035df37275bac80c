//! Operator actions shared by `cli/` and `admin/`: both adapters parse their
//! input, call these, and render the answer. Nothing here knows about clap or
//! HTTP.

use pgcdc_schema::{Lsn, TableName};

use crate::config::Config;
use crate::journal::ResetTarget;

/// Parses the operator's target (shared by the CLI and the admin API).
pub(crate) fn reset_target(
    lsn: Option<&str>,
    time: Option<&str>,
    latest: bool,
) -> anyhow::Result<ResetTarget> {
    match (lsn, time, latest) {
        (Some(l), None, false) => Ok(ResetTarget::Lsn(l.parse::<Lsn>()?)),
        (None, Some(t), false) => {
            let t = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                anyhow::anyhow!("{t:?} is not an RFC 3339 time ({e}), e.g. 2026-11-26T10:00:00Z")
            })?;
            Ok(ResetTarget::Time(t.timestamp_micros()))
        }
        (None, None, true) => Ok(ResetTarget::Latest),
        _ => anyhow::bail!("give exactly one target: an LSN, a time, or latest"),
    }
}

/// Why a cursor cannot be dropped, in words for the operator (shared with the admin API).
pub(crate) fn drop_refusal(config: &Config, sink: &str) -> Option<String> {
    config.sink.iter().any(|s| s.name() == sink).then(|| {
        format!(
            "sink {sink} is configured: its cursor is in use. To forget it, remove the sink from \
             the config first; to re-deliver or skip, use `pgcdc checkpoint reset`"
        )
    })
}

/// Checks a request against the config: the table must be captured (its changes
/// must flow through the stream for the watermarks to work) and the sink must exist.
/// Returns the table as `schema.table`.
pub(crate) fn validate_resync(
    config: &Config,
    table: &str,
    sink: Option<&str>,
) -> Result<String, String> {
    let name = TableName::parse(table)?;
    if !config.tables().contains(&name) {
        return Err(format!(
            "table {name} is not in source.tables; add it there (resync works on captured tables)"
        ));
    }
    if let Some(sink) = sink {
        config.check_sink(sink)?;
    }
    Ok(name.to_string())
}
