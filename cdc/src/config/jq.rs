//! `[jq]`: the bounds on every jq evaluation (triggers, filters, transforms,
//! Kafka keys, URL and header placeholders), enforced by the sandbox
//! (`pgcdc_schema::mapping::sandbox`).

use pgcdc_schema::mapping::Limits;
use serde::Deserialize;

use super::{key_err, ConfigError};

/// `[jq]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JqConfig {
    /// Longest one program may run on one event, in milliseconds.
    #[serde(default = "JqConfig::default_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Most outputs one program may yield for one event.
    #[serde(default = "JqConfig::default_max_outputs")]
    pub(crate) max_outputs: usize,
    /// Most bytes (as JSON) one program's outputs for one event may add up to.
    #[serde(default = "JqConfig::default_max_output_bytes")]
    pub(crate) max_output_bytes: usize,
    /// Memory (address space) of one jq worker process, in MiB.
    #[serde(default = "JqConfig::default_max_memory_mb")]
    pub(crate) max_memory_mb: u64,
}

impl JqConfig {
    /// Highest `timeout_ms`: a program that needs longer per event is a mistake.
    const MAX_TIMEOUT_MS: u64 = 600_000;
    /// Lowest `max_memory_mb`: the worker's binary, threads (a 64 MiB
    /// evaluation stack) and heap need room.
    const MIN_MEMORY_MB: u64 = 384;

    fn default_timeout_ms() -> u64 {
        Limits::DEFAULT.timeout_ms
    }

    fn default_max_outputs() -> usize {
        Limits::DEFAULT.max_outputs
    }

    fn default_max_output_bytes() -> usize {
        Limits::DEFAULT.max_output_bytes
    }

    fn default_max_memory_mb() -> u64 {
        Limits::DEFAULT.max_memory_mb
    }

    /// The limits the sandbox applies.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms,
            max_outputs: self.max_outputs,
            max_output_bytes: self.max_output_bytes,
            max_memory_mb: self.max_memory_mb,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=Self::MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(key_err(
                "jq.timeout_ms",
                format!(
                    "{} is out of range; give 1 to {} milliseconds (default {})",
                    self.timeout_ms,
                    Self::MAX_TIMEOUT_MS,
                    Limits::DEFAULT.timeout_ms
                ),
            ));
        }
        if self.max_outputs == 0 {
            return Err(key_err(
                "jq.max_outputs",
                format!(
                    "0 would fail every transform; give at least 1 (default {})",
                    Limits::DEFAULT.max_outputs
                ),
            ));
        }
        if self.max_output_bytes < 1024 {
            return Err(key_err(
                "jq.max_output_bytes",
                format!(
                    "{} is too small for an event; give at least 1024 (default {})",
                    self.max_output_bytes,
                    Limits::DEFAULT.max_output_bytes
                ),
            ));
        }
        if !(Self::MIN_MEMORY_MB..=1 << 20).contains(&self.max_memory_mb) {
            return Err(key_err(
                "jq.max_memory_mb",
                format!(
                    "{} is out of range; give {} to 1048576 MiB (default {})",
                    self.max_memory_mb,
                    Self::MIN_MEMORY_MB,
                    Limits::DEFAULT.max_memory_mb
                ),
            ));
        }
        Ok(())
    }
}

impl Default for JqConfig {
    fn default() -> Self {
        let d = Limits::DEFAULT;
        JqConfig {
            timeout_ms: d.timeout_ms,
            max_outputs: d.max_outputs,
            max_output_bytes: d.max_output_bytes,
            max_memory_mb: d.max_memory_mb,
        }
    }
}
