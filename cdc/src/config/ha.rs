//! `[ha]`: one leader, fenced standbys (see `crate::ha`).

use std::time::Duration;

use serde::Deserialize;

use super::{duration, key_err, ConfigError};

/// `[ha]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HaConfig {
    /// Run as one of several processes sharing a Postgres state store: one leads,
    /// the others stand by.
    #[serde(default)]
    pub(crate) enabled: bool,
    /// How often the leader renews its lease (and a standby looks at it).
    #[serde(
        default = "HaConfig::default_renew",
        deserialize_with = "duration::ha_renew"
    )]
    pub(crate) renew: Duration,
    /// A lease not renewed for this long is taken over (the leader hung or lost
    /// the network).
    #[serde(
        default = "HaConfig::default_lease_timeout",
        deserialize_with = "duration::ha_lease_timeout"
    )]
    pub(crate) lease_timeout: Duration,
}

/// `[ha]` durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HaTimings {
    /// `ha.renew`.
    pub(crate) renew: Duration,
    /// `ha.lease_timeout`.
    pub(crate) lease_timeout: Duration,
}

impl HaConfig {
    /// `ha.renew` unless configured.
    pub(crate) const DEFAULT_RENEW: Duration = Duration::from_secs(2);
    /// `ha.lease_timeout` unless configured.
    pub(crate) const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(10);

    fn default_renew() -> Duration {
        Self::DEFAULT_RENEW
    }

    fn default_lease_timeout() -> Duration {
        Self::DEFAULT_LEASE_TIMEOUT
    }

    /// The durations.
    pub(crate) fn timings(&self) -> HaTimings {
        HaTimings {
            renew: self.renew,
            lease_timeout: self.lease_timeout,
        }
    }

    /// `has_state_url`: whether `[state] url` is set (the lease lives there).
    pub(super) fn validate(&self, has_state_url: bool) -> Result<(), ConfigError> {
        let text = |d: Duration| humantime::format_duration(d).to_string();
        if self.renew < Duration::from_millis(100) {
            return Err(key_err(
                "ha.renew",
                format!(
                    "{:?} is too short; use at least \"100ms\" (default \"2s\")",
                    text(self.renew)
                ),
            ));
        }
        if self.lease_timeout < self.renew * 2 {
            return Err(key_err(
                "ha.lease_timeout",
                format!(
                    "{:?} must be at least twice ha.renew ({:?}), or one late renewal hands the \
                     lease over; default \"10s\" with renew \"2s\"",
                    text(self.lease_timeout),
                    text(self.renew)
                ),
            ));
        }
        if self.enabled && !has_state_url {
            return Err(key_err(
                "ha.enabled",
                "high availability needs the state in Postgres, shared by every pgcdc process: \
                 set [state] url = \"postgres://...\" (the same for all of them), or remove [ha]",
            ));
        }
        Ok(())
    }
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            enabled: false,
            renew: Self::DEFAULT_RENEW,
            lease_timeout: Self::DEFAULT_LEASE_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!(
            "[source]\nurl = \"postgres://u@h/db\"\ntables = [\"public.t\"]\n{extra}\n\
             [[sink]]\nname = \"out\"\ntype = \"stdout\"\n"
        );
        Config::parse(&text, Path::new("test.toml"), &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn ha_needs_a_state_url_and_says_so() {
        let e = parse("[ha]\nenabled = true\n").err().unwrap_or_default();
        assert!(e.contains("ha.enabled") && e.contains("[state] url"), "{e}");
        let c = parse("[state]\nurl = \"postgres://u@h/state\"\n[ha]\nenabled = true\n");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        let t = c.ha.timings();
        assert_eq!(
            (t.renew, t.lease_timeout),
            (
                super::HaConfig::DEFAULT_RENEW,
                super::HaConfig::DEFAULT_LEASE_TIMEOUT
            )
        );
    }

    #[test]
    fn bad_timings_are_named() {
        let e = parse("[ha]\nrenew = \"soon\"\n").err().unwrap_or_default();
        assert!(e.contains("ha.renew"), "{e}");
        let e = parse("[ha]\nrenew = \"5s\"\nlease_timeout = \"6s\"\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("ha.lease_timeout") && e.contains("twice"), "{e}");
    }
}
