//! `[[schedule]]`: resyncs run on a cron schedule, in a time zone.
//!
//! ```toml
//! [[schedule]]
//! cron = "0 2 * * *"            # 5 fields, or 6 with seconds first
//! time_zone = "Europe/Berlin"   # IANA name; default UTC
//! resync = { table = "public.permits", sink = "registry", where = "status = 'approved'" }
//! ```

use chrono::{DateTime, Utc};
use pgcdc_schema::TableName;
use serde::Deserialize;

use super::{key_err, Config, ConfigError};

/// One `[[schedule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron expression: `min hour dom month dow`, or with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in (default `UTC`).
    #[serde(default = "ScheduleConfig::default_time_zone")]
    pub time_zone: String,
    /// What to resync.
    pub resync: ScheduledResync,
}

/// `resync = { table, sink, where }` of a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledResync {
    /// `schema.table`, one of `source.tables` (parsed at load).
    pub table: TableName,
    /// Only this sink (default: every sink).
    pub sink: Option<String>,
    /// Only rows matching this SQL condition.
    #[serde(rename = "where")]
    pub where_sql: Option<String>,
}

impl ScheduleConfig {
    fn default_time_zone() -> String {
        "UTC".to_string()
    }

    fn parsed(&self) -> Result<(croner::Cron, chrono_tz::Tz), String> {
        let cron = croner::Cron::new(&self.cron)
            .with_seconds_optional()
            .parse()
            .map_err(|e| {
                format!(
                    "{:?} is not a cron expression ({e}); write e.g. \"0 2 * * *\" (02:00 daily)",
                    self.cron
                )
            })?;
        let tz: chrono_tz::Tz = self.time_zone.parse().map_err(|_| {
            format!(
                "{:?} is not an IANA time zone; write e.g. \"UTC\" or \"Europe/Berlin\"",
                self.time_zone
            )
        })?;
        Ok((cron, tz))
    }

    /// The first run strictly after `after` (None when the expression never fires).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = self.parsed().ok()?;
        cron.find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Checks every `[[schedule]]` (called from `Config::validate`).
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let tables = config.tables();
    for (i, s) in config.schedule.iter().enumerate() {
        s.parsed().map_err(|m| {
            let key = if m.contains("time zone") {
                "time_zone"
            } else {
                "cron"
            };
            key_err(format!("schedule[{i}].{key}"), m)
        })?;
        let table = &s.resync.table;
        if !tables.contains(table) {
            return Err(key_err(
                format!("schedule[{i}].resync.table"),
                format!("table {table} is not in source.tables; add it there first"),
            ));
        }
        if let Some(sink) = &s.resync.sink {
            if !config.sink.iter().any(|k| k.name() == sink) {
                return Err(key_err(
                    format!("schedule[{i}].resync.sink"),
                    format!("no sink named {sink:?}; use one of the [[sink]] names"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str) -> ScheduleConfig {
        ScheduleConfig {
            cron: cron.into(),
            time_zone: tz.into(),
            resync: ScheduledResync {
                table: TableName::parse("public.t").unwrap_or_else(|e| panic!("{e}")),
                sink: None,
                where_sql: None,
            },
        }
    }

    #[test]
    fn next_run_is_in_the_configured_time_zone() {
        let after = DateTime::parse_from_rfc3339("2026-07-01T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let berlin = schedule("0 2 * * *", "Europe/Berlin").next_after(after);
        // 02:00 in Berlin (CEST, UTC+2) is 00:00 UTC.
        assert_eq!(
            berlin.map(|t| t.to_rfc3339()),
            Some("2026-07-02T00:00:00+00:00".into())
        );
        let seconds = schedule("*/5 * * * * *", "UTC").next_after(after);
        assert_eq!(
            seconds.map(|t| t.to_rfc3339()),
            Some("2026-07-01T10:00:05+00:00".into())
        );
        assert!(schedule("not cron", "UTC").parsed().is_err());
        assert!(schedule("* * * * *", "Mars/Olympus").parsed().is_err());
    }
}
