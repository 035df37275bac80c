//! `[source]`: the database captured, its publication and slot, the tables.

use std::time::Duration;

use pgcdc_schema::Secret;
use serde::Deserialize;

use super::source_tables::SourceTables;
use super::{duration, key_err, ConfigError};
use crate::replication::SourceUrl;

/// `[source]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceConfig {
    /// `postgres://user@host:port/db?sslmode=...`
    pub(crate) url: Secret,
    /// Publication name; created for `tables` if missing.
    #[serde(default = "SourceConfig::default_publication")]
    pub(crate) publication: String,
    /// Logical replication slot name; created if missing.
    #[serde(default = "SourceConfig::default_slot")]
    pub(crate) slot: String,
    /// Tables to capture, `schema.table` or with a row filter / column list (parsed at load).
    pub(crate) tables: SourceTables,
    /// Operations the publication publishes when pgcdc creates it (and must publish
    /// when it exists): "insert, update, delete, truncate" by default.
    #[serde(default = "SourceConfig::default_publish")]
    pub(crate) publish: String,
    /// Publish generated columns (PostgreSQL 18+ `publish_generated_columns = stored`).
    #[serde(default)]
    pub(crate) publish_generated_columns: bool,
    /// Initial snapshot mode.
    #[serde(default)]
    pub(crate) snapshot: SnapshotMode,
    /// How often a heartbeat message is written into the WAL ("10s"; "0s" turns it off).
    #[serde(
        default = "SourceConfig::default_heartbeat",
        deserialize_with = "duration::heartbeat"
    )]
    pub(crate) heartbeat: Duration,
    /// Longest a resync's chunk query (with its operator-given `where`) may run ("60s").
    #[serde(
        default = "SourceConfig::default_resync_statement_timeout",
        deserialize_with = "duration::resync_statement_timeout"
    )]
    pub(crate) resync_statement_timeout: Duration,
    /// Create the slot as a failover slot, synchronised to standbys (PostgreSQL 17+);
    /// unset: yes on 17+, no before.
    #[serde(default)]
    pub(crate) failover_slot: Option<bool>,
    /// What to do when the slot is lost (missing, or `wal_status = lost`).
    #[serde(default)]
    pub(crate) on_slot_lost: OnSlotLost,
    /// Tables whose unchanged TOAST values are filled in from the rows pgcdc remembers
    /// (each row's every column kept in the state store: opt-in for its cost).
    #[serde(default)]
    pub(crate) fill_toast: Vec<pgcdc_schema::TableName>,
    /// Install an event trigger that reports each `ALTER TABLE` when it commits
    /// (superuser only); otherwise a schema change is seen at the table's next write.
    #[serde(default)]
    pub(crate) ddl_capture: bool,
    /// Ask for large in-progress transactions in blocks (protocol v2, PostgreSQL 14+),
    /// staged in the state store until they commit, instead of having the server
    /// spill them to its disk and send them whole at commit.
    #[serde(default)]
    pub(crate) streaming: bool,
}

impl SourceConfig {
    const DEFAULT_NAME: &'static str = "pgcdc";
    const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

    fn default_publication() -> String {
        Self::DEFAULT_NAME.to_string()
    }

    fn default_slot() -> String {
        Self::DEFAULT_NAME.to_string()
    }

    fn default_publish() -> String {
        Self::ALL_OPERATIONS.join(", ")
    }

    /// What a publication can publish.
    pub(crate) const ALL_OPERATIONS: [&'static str; 4] = ["insert", "update", "delete", "truncate"];

    /// `publish`, as a list of operations (validated at load).
    pub(crate) fn published_operations(&self) -> Vec<&str> {
        self.publish
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn default_heartbeat() -> Duration {
        Self::DEFAULT_HEARTBEAT
    }

    fn default_resync_statement_timeout() -> Duration {
        Duration::from_secs(60)
    }

    /// Longest a resync's chunk query may run (never zero: checked at load).
    pub(crate) fn resync_statement_timeout(&self) -> Duration {
        self.resync_statement_timeout
    }

    /// The heartbeat interval (None when off).
    pub(crate) fn heartbeat(&self) -> Option<Duration> {
        Some(self.heartbeat).filter(|d| !d.is_zero())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.url
            .expose()
            .parse::<SourceUrl>()
            .map_err(|e| key_err("source.url", e.to_string()))?;
        check_identifier("source.publication", &self.publication)?;
        check_identifier("source.slot", &self.slot)?;
        if self
            .slot
            .bytes()
            .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            return Err(key_err(
                "source.slot",
                "a replication slot name may contain only lower-case letters, digits and '_'",
            ));
        }
        if self.tables.is_empty() {
            return Err(key_err(
                "source.tables",
                "list at least one table to capture, e.g. tables = [\"public.permits\"]",
            ));
        }
        if self.ddl_capture {
            // The trigger describes every column; the stream describes only the
            // published ones, and the two would disagree on every change.
            if self.tables.entries().iter().any(|e| e.columns.is_some()) {
                return Err(key_err(
                    "source.ddl_capture",
                    "cannot be used with a column list in source.tables; remove one of them",
                ));
            }
            if self.publish_generated_columns {
                return Err(key_err(
                    "source.ddl_capture",
                    "cannot be used with source.publish_generated_columns; remove one of them",
                ));
            }
        }
        for (i, t) in self.fill_toast.iter().enumerate() {
            if !self.tables.names().contains(t) {
                return Err(key_err(
                    format!("source.fill_toast[{i}]"),
                    format!("table {t} is not in source.tables; add it there first"),
                ));
            }
        }
        self.tables.validate()?;
        let ops = self.published_operations();
        if ops.is_empty()
            || ops.iter().any(|o| !Self::ALL_OPERATIONS.contains(o))
            || ops.iter().enumerate().any(|(i, o)| ops[..i].contains(o))
        {
            return Err(key_err(
                "source.publish",
                format!(
                    "{:?} is not a list of operations: write some of \"insert, update, delete, truncate\" (the default, all of them)",
                    self.publish
                ),
            ));
        }
        Ok(())
    }
}

/// `source.snapshot`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SnapshotMode {
    /// Copy existing rows (as `read` events) when the slot is created, then stream.
    Initial,
    /// Stream changes from the slot's creation on.
    #[default]
    Never,
}

fn check_identifier(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 63 || v.contains('"') || v.contains('\0') {
        return Err(key_err(
            key,
            format!("{v:?} is not a valid Postgres identifier (1-63 characters, no '\"')"),
        ));
    }
    Ok(())
}

/// `source.on_slot_lost`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSlotLost {
    /// Stop, saying what happened and what to do.
    #[default]
    Fail,
    /// Recreate the slot and resync every table to every sink, deleting keys gone meanwhile.
    Resync,
}
