//! `[state]`, `[journal]` and `[audit]`: where durable state lives and how long
//! it is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{duration, key_err, ConfigError, Secret};
use crate::replication::SourceUrl;

/// `[journal]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JournalConfig {
    /// Entries every sink has passed are removed once older than this, e.g. "7d".
    #[serde(
        default = "JournalConfig::default_retention",
        deserialize_with = "duration::journal_retention"
    )]
    pub(crate) retention: Duration,
    /// Past this many bytes of live journal data the reader pauses (Postgres keeps
    /// the WAL) until pruning makes room. None: no limit.
    #[serde(default)]
    pub(crate) max_bytes: Option<u64>,
}

impl JournalConfig {
    const DEFAULT_RETENTION: Duration = duration::days(7);

    fn default_retention() -> Duration {
        Self::DEFAULT_RETENTION
    }

    /// The retention.
    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            retention: Self::DEFAULT_RETENTION,
            max_bytes: None,
        }
    }
}

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditConfig {
    /// How long delivery attempts are kept, e.g. "30d", "12h".
    #[serde(
        default = "AuditConfig::default_retention",
        deserialize_with = "duration::audit_retention"
    )]
    pub(crate) retention: Duration,
}

impl AuditConfig {
    const DEFAULT_RETENTION: Duration = duration::days(30);

    fn default_retention() -> Duration {
        Self::DEFAULT_RETENTION
    }

    /// The retention.
    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Self::DEFAULT_RETENTION,
        }
    }
}

/// `[state]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateConfig {
    /// Directory of the journal, cursors, DLQ and audit log (the SQLite store).
    #[serde(default = "StateConfig::default_dir")]
    pub(crate) dir: PathBuf,
    /// `postgres://...`: keep the state in this database instead of `dir`.
    #[serde(default)]
    pub(crate) url: Option<Secret>,
    /// Schema of the state tables in `url`'s database.
    #[serde(default = "StateConfig::default_schema")]
    pub(crate) schema: String,
}

impl StateConfig {
    fn default_dir() -> PathBuf {
        PathBuf::from("./pgcdc-data")
    }

    fn default_schema() -> String {
        "pgcdc".to_string()
    }

    /// The state database's URL, parsed (validated at load; None: the SQLite store).
    pub(crate) fn url(&self) -> Result<Option<SourceUrl>, ConfigError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        url.expose()
            .parse::<SourceUrl>()
            // The parser's messages name the source URL; this one is the state's.
            .map_err(|e| key_err("state.url", e.to_string().replace("source URL", "URL")))
            .map(Some)
    }

    /// `state.url` parses and `state.schema` is a plain identifier.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.url()?;
        let schema = &self.schema;
        if !schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            || schema.len() > 63
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(key_err(
                "state.schema",
                format!(
                    "{schema:?}: use 1-63 lower-case letters, digits and '_', starting with a letter (default \"pgcdc\")"
                ),
            ));
        }
        Ok(())
    }

    /// Takes a relative `dir` from the directory of the config file `config_path`, not
    /// from wherever pgcdc is started: a journal that depends on the working directory
    /// is a different (new, empty) journal when started from elsewhere.
    pub(super) fn resolve_dir(&mut self, config_path: &Path) {
        if self.dir.is_absolute() {
            return;
        }
        let base = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let joined = base.join(&self.dir);
        self.dir = std::path::absolute(&joined).unwrap_or(joined);
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: Self::default_dir(),
            url: None,
            schema: Self::default_schema(),
        }
    }
}
