//! Topic administration for the Kafka sink: existence and partition counts,
//! creation, registration in the progress record, and `pgcdc check`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;

use super::retry::Failure;
use super::{KafkaSink, STALL};
use crate::kafka::context::SinkContext;
use crate::kafka::progress::TopicProgress;

impl KafkaSink {
    /// For `pgcdc check`: the brokers answer, and a fixed topic exists (or may be created).
    pub async fn healthcheck(mut self) -> Result<String, String> {
        let producer = self.producer().map_err(|f| f.to_string())?;
        let brokers = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|md| md.brokers().len())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the Kafka brokers do not answer: {e}"))?;
        let mut detail = format!("Kafka reachable ({brokers} broker(s))");
        if let Some(topic) = self.topic.literal() {
            match self.partition_count(&topic).await {
                Ok(Some(n)) => detail.push_str(&format!(", topic {topic} has {n} partition(s)")),
                Ok(None) if self.config.create_topics => {
                    detail.push_str(&format!(", topic {topic} will be created"))
                }
                Ok(None) => {
                    return Err(format!(
                        "topic {topic} does not exist; create it or set create_topics = true"
                    ))
                }
                Err(f) => return Err(f.to_string()),
            }
        }
        Ok(detail)
    }

    /// Metadata of `topic`: its partition count, or `None` when it does not exist.
    pub(super) async fn partition_count(&mut self, topic: &str) -> Result<Option<i32>, Failure> {
        let producer = self.producer()?;
        let t = topic.to_string();
        let md = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&t), STALL).map(|md| {
                md.topics()
                    .first()
                    .map(|mt| (mt.error(), mt.partitions().len() as i32))
            })
        })
        .await
        .map_err(|e| Failure::Broker(e.to_string()))?
        .map_err(|e| Failure::Broker(format!("metadata of topic {topic}: {e}")))?;
        match md {
            Some((None, n)) if n > 0 => Ok(Some(n)),
            Some((Some(err), _))
                if RDKafkaErrorCode::from(err) == RDKafkaErrorCode::UnknownTopicOrPartition =>
            {
                Ok(None)
            }
            Some((None, _)) | None => Ok(None),
            Some((Some(err), _)) => Err(Failure::Broker(format!(
                "metadata of topic {topic}: {}",
                RDKafkaErrorCode::from(err)
            ))),
        }
    }

    pub(super) async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        compact: bool,
    ) -> Result<(), Failure> {
        let admin: AdminClient<SinkContext> =
            self.base.create_with_context(self.context()).map_err(|e| {
                Failure::Broker(format!(
                    "Kafka admin client: {}",
                    self.config.redact_kafka_error(&e)
                ))
            })?;
        let mut new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        if compact {
            new = new.set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(STALL));
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| Failure::Broker(format!("creating topic {topic}: {e}")))?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(sink = %self.name, topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Failure::Topics(format!(
                        "cannot create topic {topic}: {code}; create it yourself \
                         ({partitions} partition(s){})",
                        if compact {
                            ", cleanup.policy=compact"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
        Ok(())
    }

    /// Makes sure every topic of `topics` exists and is in the progress record before
    /// anything is written to it, so a read-back after a crash covers it.
    pub(super) async fn register_topics(
        &mut self,
        topics: BTreeSet<String>,
    ) -> Result<(), Failure> {
        let mut added = false;
        for topic in topics {
            if self.progress.topics.contains_key(&topic) {
                continue;
            }
            let partitions = match self.partition_count(&topic).await? {
                Some(n) => n,
                None if self.config.create_topics => {
                    self.create_topic(&topic, self.config.partitions, false)
                        .await?;
                    self.partition_count(&topic).await?.ok_or_else(|| {
                        Failure::Broker(format!("topic {topic} not visible after creation"))
                    })?
                }
                None => {
                    return Err(Failure::Topics(format!(
                        "topic {topic} does not exist; create it, or set create_topics = true \
                         on the sink to let pgcdc create it with `partitions` partitions"
                    )))
                }
            };
            // Records already there are not pgcdc's business: read-backs start at the end.
            let producer = self.producer()?;
            let t = topic.clone();
            let next = tokio::task::spawn_blocking(move || {
                (0..partitions)
                    .map(|p| {
                        producer
                            .client()
                            .fetch_watermarks(&t, p, STALL)
                            .map(|(_, high)| (p, high))
                    })
                    .collect::<Result<BTreeMap<i32, i64>, _>>()
            })
            .await
            .map_err(|e| Failure::Broker(e.to_string()))?
            .map_err(|e| Failure::Broker(format!("offsets of topic {topic}: {e}")))?;
            self.progress
                .topics
                .insert(topic, TopicProgress { partitions, next });
            added = true;
        }
        if added {
            let record = self.progress.clone();
            self.write_progress(&record).await?;
        }
        Ok(())
    }
}
