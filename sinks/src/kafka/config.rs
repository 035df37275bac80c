//! `[[sink]] type = "kafka"`: the Kafka-specific keys, their defaults and `validate()`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConfigError;

/// The keys [`KafkaSinkConfig`] accepts, for the engine's unknown-key check.
pub const KAFKA_KEYS: &[&str] = &[
    "brokers",
    "topic",
    "format",
    "key",
    "tombstones",
    "truncates",
    "before",
    "create_topics",
    "partitions",
    "replication_factor",
    "progress_topic",
    "server_name",
    "librdkafka",
];

/// librdkafka properties pgcdc sets itself: changing them would break exactly-once
/// delivery, per-key order or partition agreement with Java clients. Each comes
/// with the pgcdc key to use instead, if there is one.
const MANAGED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `brokers`"),
    ("metadata.broker.list", "set `brokers`"),
    (
        "enable.idempotence",
        "pgcdc always uses the idempotent producer",
    ),
    ("acks", "pgcdc always uses acks=all"),
    ("request.required.acks", "pgcdc always uses acks=all"),
    (
        "partitioner",
        "pgcdc always uses murmur2_random, as Java clients do",
    ),
    (
        "transactional.id",
        "pgcdc sets it itself under [ha] (pgcdc.<progress_topic>.<sink>) and uses no transactions otherwise (see README, Kafka guarantees)",
    ),
    (
        "enable.gapless.guarantee",
        "pgcdc recovers gaps itself from the progress topic",
    ),
    (
        "max.in.flight.requests.per.connection",
        "bounded by the idempotent producer",
    ),
    ("max.in.flight", "bounded by the idempotent producer"),
    ("retries", "pgcdc retries for ever, with backoff"),
    (
        "message.send.max.retries",
        "pgcdc retries for ever, with backoff",
    ),
    ("group.id", "pgcdc does not consume in a group"),
    (
        "enable.auto.commit",
        "pgcdc does not commit consumer offsets",
    ),
    ("enable.partition.eof", "the read-back needs it"),
    ("isolation.level", "the read-back must see every record"),
    ("auto.offset.reset", "the read-back decides where to read"),
    ("allow.auto.create.topics", "set `create_topics`"),
];

/// Record value format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Debezium's PostgreSQL envelope, `schemas.enable=false` (the default).
    #[default]
    Debezium,
    /// Debezium's envelope with its Kafka Connect schemas, `schemas.enable=true`.
    #[serde(rename = "debezium-schema")]
    DebeziumSchema,
    /// pgcdc's native event.
    Native,
}

impl Format {
    /// One of the Debezium envelopes.
    pub fn is_debezium(self) -> bool {
        matches!(self, Format::Debezium | Format::DebeziumSchema)
    }
}

/// `before` of the Debezium formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Before {
    /// What Postgres sent, as Debezium (the default).
    #[default]
    Postgres,
    /// What pgcdc knows of the old row (the native event's `old`).
    Known,
}

/// `[[sink]] type = "kafka"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic template: `{schema}`, `{table}` and `{trigger}` are replaced per event.
    #[serde(default = "KafkaSinkConfig::default_topic")]
    pub topic: String,
    /// Record value format when there is no `transform`.
    #[serde(default)]
    pub format: Format,
    /// jq program over the native event giving the record key (default: the primary key).
    #[serde(default)]
    pub key: Option<String>,
    /// After a delete, also write a record with the same key and a null value
    /// (default: on for the Debezium formats without a `transform`, as Debezium's
    /// `tombstones.on.delete`; off otherwise).
    #[serde(default)]
    pub tombstones: Option<bool>,
    /// Debezium formats: write truncates (`op: "t"`); Debezium's default
    /// `skipped.operations = t` leaves them out.
    #[serde(default)]
    pub truncates: bool,
    /// Debezium formats: what `before` holds.
    #[serde(default)]
    pub before: Before,
    /// Create missing topics (with `partitions` and `replication_factor`).
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of topics pgcdc creates.
    #[serde(default = "KafkaSinkConfig::default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics pgcdc creates (-1: the broker's default).
    #[serde(default = "KafkaSinkConfig::default_replication_factor")]
    pub replication_factor: i32,
    /// Compacted topic holding this sink's progress records (key = sink name).
    #[serde(default = "KafkaSinkConfig::default_progress_topic")]
    pub progress_topic: String,
    /// Debezium `source.name` (its `topic.prefix`).
    #[serde(default = "KafkaSinkConfig::default_server_name")]
    pub server_name: String,
    /// librdkafka properties passed through (SASL, SSL, compression, linger, ...).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, toml_like::Scalar>,
}

/// Scalars a `[sink.librdkafka]` table may hold; librdkafka takes them as text.
pub mod toml_like {
    use serde::Deserialize;

    /// A string, integer, float or boolean property value.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(untagged)]
    pub enum Scalar {
        /// Text.
        Text(String),
        /// Integer.
        Int(i64),
        /// Float.
        Float(f64),
        /// Boolean.
        Bool(bool),
    }

    impl std::fmt::Display for Scalar {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Scalar::Text(s) => f.write_str(s),
                Scalar::Int(i) => write!(f, "{i}"),
                Scalar::Float(x) => write!(f, "{x}"),
                Scalar::Bool(b) => write!(f, "{b}"),
            }
        }
    }
}

impl KafkaSinkConfig {
    fn default_topic() -> String {
        "pgcdc.{schema}.{table}".into()
    }
    fn default_partitions() -> i32 {
        1
    }
    fn default_replication_factor() -> i32 {
        -1
    }
    fn default_progress_topic() -> String {
        "pgcdc.progress".into()
    }
    fn default_server_name() -> String {
        "pgcdc".into()
    }

    /// Checks values the types cannot; `uses_trigger_only` is true when the sink
    /// selects by `events` alone (so every event carries a trigger name).
    pub fn validate(&self, key_prefix: &str, uses_trigger_only: bool) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            key: format!("{key_prefix}.{key}"),
            message,
        };
        if self.brokers.trim().is_empty() {
            return Err(err(
                "brokers",
                "list at least one broker, e.g. brokers = \"127.0.0.1:9092\"".into(),
            ));
        }
        let template = TopicTemplate::parse(&self.topic).map_err(|m| err("topic", m))?;
        if template.uses_trigger && !uses_trigger_only {
            return Err(err(
                "topic",
                "{trigger} needs every event to come from a trigger: select with `events` only, \
                 not `tables`"
                    .into(),
            ));
        }
        if let Some(fixed) = template.literal() {
            check_topic_name(&fixed).map_err(|m| err("topic", m))?;
        }
        check_topic_name(&self.progress_topic).map_err(|m| err("progress_topic", m))?;
        if !self.format.is_debezium() && (self.truncates || self.before != Before::Postgres) {
            return Err(err(
                if self.truncates { "truncates" } else { "before" },
                "applies to the Debezium formats only (format = \"debezium\" or \"debezium-schema\"); \
                 the native event always carries truncates and pgcdc's `old`"
                    .into(),
            ));
        }
        if self.partitions < 1 {
            return Err(err("partitions", "must be at least 1".into()));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(err(
                "replication_factor",
                "must be at least 1, or -1 for the broker's default".into(),
            ));
        }
        for key in self.librdkafka.keys() {
            if let Some((_, instead)) = MANAGED.iter().find(|(k, _)| k == key) {
                return Err(err(
                    &format!("librdkafka.\"{key}\""),
                    format!("is managed by pgcdc and cannot be set: {instead}"),
                ));
            }
        }
        // librdkafka checks names and values without connecting; its message quotes
        // the value, which may be a password, so only the key is named.
        let mut probe = rdkafka::ClientConfig::new();
        for (k, v) in &self.librdkafka {
            probe.set(k, v.to_string());
        }
        if let Err(e) = probe.create_native_config() {
            let key = match &e {
                rdkafka::error::KafkaError::ClientConfig(_, _, key, _) => key.clone(),
                _ => String::new(),
            };
            return Err(err(
                &format!("librdkafka.\"{key}\""),
                format!(
                    "librdkafka refuses it: {} (the value is not shown); see librdkafka's \
                     CONFIGURATION.md for the property names and values it takes",
                    self.redact_kafka_error(&e)
                ),
            ));
        }
        Ok(())
    }

    /// A librdkafka error as text safe to log: a configuration error names the
    /// property but never its value, and the values of pass-through properties
    /// whose names say they are secret are masked in any other message.
    pub(crate) fn redact_kafka_error(&self, e: &rdkafka::error::KafkaError) -> String {
        let text = match e {
            rdkafka::error::KafkaError::ClientConfig(_, desc, key, value) => {
                let desc = if value.is_empty() {
                    desc.clone()
                } else {
                    desc.replace(value.as_str(), "***")
                };
                format!("property \"{key}\": {desc}")
            }
            other => other.to_string(),
        };
        self.redact(text)
    }

    /// Masks the values of secret pass-through properties in `text`.
    pub(crate) fn redact(&self, text: String) -> String {
        super::context::mask(text, &self.secret_values())
    }

    /// The values of pass-through properties whose names say they are secret.
    pub(crate) fn secret_values(&self) -> Vec<String> {
        self.librdkafka
            .iter()
            .filter(|(key, _)| is_secret_property(key))
            .map(|(_, value)| value.to_string())
            .filter(|value| !value.is_empty())
            .collect()
    }
}

/// Whether a librdkafka property's value must never be printed.
fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "key",
        "credential",
        "oauthbearer.config",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// A parsed `topic` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
    uses_trigger: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Schema,
    Table,
    Trigger,
}

impl TopicTemplate {
    /// Parses `{schema}`, `{table}` and `{trigger}` placeholders.
    pub fn parse(s: &str) -> Result<TopicTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut uses_trigger = false;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{s:?}: unterminated '{{'"))?;
            parts.push(match &after[..close] {
                "schema" => Part::Schema,
                "table" => Part::Table,
                "trigger" => {
                    uses_trigger = true;
                    Part::Trigger
                }
                other => {
                    return Err(format!(
                        "{s:?}: unknown placeholder {{{other}}}; use {{schema}}, {{table}} or {{trigger}}"
                    ))
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("the topic must not be empty".into());
        }
        Ok(TopicTemplate {
            parts,
            uses_trigger,
        })
    }

    /// The topic when the template has no placeholder.
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }

    /// Appends the topic of one event to `out`.
    pub fn render_into(&self, schema: &str, table: &str, trigger: Option<&str>, out: &mut String) {
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Schema => out.push_str(schema),
                Part::Table => out.push_str(table),
                Part::Trigger => out.push_str(trigger.unwrap_or_default()),
            }
        }
    }
}

/// Kafka's rule for topic names.
pub fn check_topic_name(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 249 || t == "." || t == ".." {
        return Err(format!(
            "{t:?} is not a valid Kafka topic name (1-249 characters)"
        ));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{t:?} is not a valid Kafka topic name: {c:?} is not allowed (use letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> KafkaSinkConfig {
        let v: toml::Value = toml::from_str(toml_text).unwrap_or(toml::Value::Boolean(false));
        KafkaSinkConfig::deserialize(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn topic_template_renders_placeholders() {
        let t = TopicTemplate::parse("portal.{schema}.{table}").unwrap_or_else(|e| panic!("{e}"));
        let mut topic = "kept:".to_string();
        t.render_into("public", "permits", None, &mut topic);
        assert_eq!(
            topic, "kept:portal.public.permits",
            "appended to what is there"
        );
        assert!(TopicTemplate::parse("x.{nope}").is_err());
        assert!(TopicTemplate::parse("x.{table").is_err());
        assert_eq!(
            TopicTemplate::parse("fixed")
                .map(|t| t.literal())
                .unwrap_or_default(),
            Some("fixed".to_string())
        );
    }

    #[test]
    fn managed_librdkafka_options_are_refused_with_the_key() {
        let c = parse(
            "brokers = \"b:9092\"\n[librdkafka]\n\"enable.idempotence\" = false\n\"linger.ms\" = 5\n",
        );
        let e = c.validate("sink[0]", false).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("sink[0].librdkafka.\"enable.idempotence\": is managed by pgcdc and cannot be set: pgcdc always uses the idempotent producer")
        );
        let ok = parse("brokers = \"b:9092\"\n[librdkafka]\n\"linger.ms\" = 5\n\"compression.type\" = \"lz4\"\n");
        assert!(ok.validate("sink[0]", false).is_ok());
        assert_eq!(ok.librdkafka["linger.ms"].to_string(), "5");
    }

    #[test]
    fn trigger_placeholder_needs_events_only() {
        let c = parse("brokers = \"b:9092\"\ntopic = \"permits.{trigger}\"\n");
        assert!(c.validate("sink[0]", false).is_err());
        assert!(c.validate("sink[0]", true).is_ok());
        let bad = parse("brokers = \"b:9092\"\ntopic = \"a topic\"\n");
        assert!(bad.validate("sink[0]", false).is_err());
    }

    #[test]
    fn refused_librdkafka_values_are_never_printed() {
        for (key, value) in [
            ("sasl.pasword", "hunter2-typo"),
            ("sasl.jaas.config", "org.apache.kafka.common.security.plain.PlainLoginModule required username=\\\"u\\\" password=\\\"hunter2-jaas\\\";"),
            ("linger.ms", "hunter2-not-a-number"),
        ] {
            let c = parse(&format!(
                "brokers = \"b:9092\"\n[librdkafka]\n\"{key}\" = \"{value}\"\n"
            ));
            let e = c
                .validate("sink[0]", false)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with(&format!("sink[0].librdkafka.\"{key}\": librdkafka refuses it")), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secret_values_are_masked_in_messages() {
        let c = parse(
            "brokers = \"b:9092\"\n[librdkafka]\n\"sasl.password\" = \"s3cr3t-pw\"\n\"sasl.username\" = \"alice\"\n",
        );
        assert!(c.validate("sink[0]", false).is_ok());
        let masked = c.redact("auth failed for alice with s3cr3t-pw".into());
        assert_eq!(masked, "auth failed for alice with ***");
    }
}
