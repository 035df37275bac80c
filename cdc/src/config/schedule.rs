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

use super::{deserialize_at, key_err, Config, ConfigError};

/// One `[[schedule]]`, its expression and time zone parsed at load.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleConfig {
    /// Cron expression: `min hour dom month dow`, or with seconds first.
    pub(crate) cron: String,
    /// IANA time zone the expression is read in (default `UTC`).
    pub(crate) time_zone: String,
    /// What to resync.
    pub(crate) resync: ScheduledResync,
    /// `cron`, parsed.
    parsed: croner::Cron,
    /// `time_zone`, parsed.
    tz: chrono_tz::Tz,
}

/// The keys of a `[[schedule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleToml {
    cron: String,
    #[serde(default = "ScheduleConfig::default_time_zone")]
    time_zone: String,
    resync: ScheduledResync,
}

/// `resync = { table, sink, where }` of a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduledResync {
    /// `schema.table`, one of `source.tables` (parsed at load).
    pub(crate) table: TableName,
    /// Only this sink (default: every sink).
    pub(crate) sink: Option<String>,
    /// Only rows matching this SQL condition.
    #[serde(rename = "where")]
    pub(crate) where_sql: Option<String>,
}

impl ScheduleConfig {
    fn default_time_zone() -> String {
        "UTC".to_string()
    }

    pub(super) fn from_toml(i: usize, value: toml::Value) -> Result<ScheduleConfig, ConfigError> {
        let s: ScheduleToml = deserialize_at(&format!("schedule[{i}]"), value)?;
        let (parsed, tz) = Self::parse(&s.cron, &s.time_zone).map_err(|m| {
            let key = if m.contains("time zone") {
                "time_zone"
            } else {
                "cron"
            };
            key_err(format!("schedule[{i}].{key}"), m)
        })?;
        Ok(ScheduleConfig {
            cron: s.cron,
            time_zone: s.time_zone,
            resync: s.resync,
            parsed,
            tz,
        })
    }

    fn parse(cron: &str, time_zone: &str) -> Result<(croner::Cron, chrono_tz::Tz), String> {
        let parsed = croner::Cron::new(cron)
            .with_seconds_optional()
            .parse()
            .map_err(|e| {
                format!(
                    "{cron:?} is not a cron expression ({e}); write e.g. \"0 2 * * *\" (02:00 daily)"
                )
            })?;
        let tz: chrono_tz::Tz = time_zone.parse().map_err(|_| {
            format!(
                "{time_zone:?} is not an IANA time zone; write e.g. \"UTC\" or \"Europe/Berlin\""
            )
        })?;
        Ok((parsed, tz))
    }

    /// The first run strictly after `after` (None when the expression never fires).
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.parsed
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Checks every `[[schedule]]` (called from `Config::validate`).
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let tables = config.tables();
    for (i, s) in config.schedule.iter().enumerate() {
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

    /// A schedule as parsed from the config; a bad expression or zone fails the test.
    fn schedule(cron: &str, tz: &str) -> ScheduleConfig {
        let (parsed, tz_parsed) = ScheduleConfig::parse(cron, tz).unwrap_or_else(|e| panic!("{e}"));
        ScheduleConfig {
            cron: cron.into(),
            time_zone: tz.into(),
            resync: ScheduledResync {
                table: TableName::parse("public.t").unwrap_or_else(|e| panic!("{e}")),
                sink: None,
                where_sql: None,
            },
            parsed,
            tz: tz_parsed,
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
        assert!(ScheduleConfig::parse("not cron", "UTC").is_err());
        assert!(ScheduleConfig::parse("* * * * *", "Mars/Olympus").is_err());
    }
}
