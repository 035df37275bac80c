//! librdkafka's logs and client errors, routed to `tracing` at levels an
//! operator can live with, and named by sink.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The client context of every librdkafka handle a Kafka sink opens.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Sink name, for log fields.
    pub sink: String,
    /// Values of secret pass-through properties, masked in every message.
    pub masks: std::sync::Arc<Vec<String>>,
}

impl SinkContext {
    /// `text` with every secret value masked.
    pub(crate) fn mask(&self, text: &str) -> String {
        mask(text.to_owned(), &self.masks)
    }
}

/// `text` with every one of `secrets` replaced by `***`.
pub(crate) fn mask(mut text: String, secrets: &[String]) -> String {
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let message = &self.mask(message);
        // The read-back consumer shares the sink's pass-through options, many of them
        // producer-only: librdkafka's warning about each is noise.
        let config_noise = message.contains("is a producer property")
            || message.contains("is a consumer property");
        match level {
            _ if config_noise => tracing::debug!(sink = %self.sink, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(sink = %self.sink, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::info!(sink = %self.sink, fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(sink = %self.sink, fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = &self.mask(reason);
        // The read-back asks for these: they mark the end of a partition.
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::warn!(sink = %self.sink, "Kafka client: {reason}");
        }
    }
}

impl ConsumerContext for SinkContext {}
