//! Apache Kafka adapter of the [`EventLog`] port, on librdkafka (`rdkafka`).
//!
//! Chosen with `--log kafka://host:port[,host:port]`. Invariants:
//! * appends use an idempotent producer with `acks=all`, so an append that returned is replicated
//!   and per-key order survives producer retries;
//! * keys are partitioned with `murmur2_random`, the Java client's partitioner, so Pulse agrees
//!   with other Kafka clients on where a key lives;
//! * consumers never auto-commit: offsets move only through [`LogConsumer::commit`], synchronously;
//! * every blocking librdkafka call runs on the blocking pool with a timeout, never on a runtime
//!   worker.

mod consumer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulse_core::log::{EventLog, LogConsumer, OutgoingRecord, RecordPosition};
use pulse_core::{PortError, PortResult};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::consumer::KafkaConsumer;

pub(crate) const BACKEND: &str = "kafka";

/// Settings of the Kafka adapter.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Timeout of metadata and admin requests, commits and seeks.
    pub request_timeout: Duration,
    /// How long the producer keeps retrying one record before the append fails.
    pub delivery_timeout: Duration,
    /// Replication factor of topics Pulse creates (`-1` = the broker's default).
    pub replication_factor: i32,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            replication_factor: -1,
        }
    }
}

/// Parses `kafka://host:port[,host:port]` into librdkafka's `bootstrap.servers`.
pub fn bootstrap_servers(url: &str) -> PortResult<String> {
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| PortError::Invalid(format!("{url:?} is not a kafka://host:port URL")))?;
    let servers = rest.trim_end_matches('/');
    let valid = !servers.is_empty()
        && servers.split(',').all(|server| {
            server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
    if !valid {
        return Err(PortError::Invalid(format!(
            "{url:?} must list brokers as kafka://host:port[,host:port]"
        )));
    }
    Ok(servers.to_owned())
}

pub(crate) fn kafka_error(err: KafkaError) -> PortError {
    PortError::unavailable(BACKEND, err)
}

/// Runs a blocking librdkafka call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> PortResult<T> + Send + 'static,
) -> PortResult<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| PortError::unavailable(BACKEND, err))?
}

/// Handle to a Kafka cluster. Cheap to clone.
#[derive(Clone)]
pub struct KafkaLog {
    servers: String,
    options: KafkaOptions,
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// A consumer-type client for metadata and offset queries: unlike a producer, it never
    /// auto-creates the topics it asks about, and unlike a group member it has no fetch in flight
    /// for its queries to wait behind.
    metadata: Arc<BaseConsumer>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("servers", &self.servers)
            .finish()
    }
}

impl KafkaLog {
    /// Connects to the brokers of `url` and checks that the cluster answers.
    pub async fn connect(url: &str, options: KafkaOptions) -> PortResult<Self> {
        let servers = bootstrap_servers(url)?;
        let producer: FutureProducer = base_config(&servers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                options.delivery_timeout.as_millis().to_string(),
            )
            .create()
            .map_err(kafka_error)?;
        let admin: AdminClient<DefaultClientContext> =
            base_config(&servers).create().map_err(kafka_error)?;
        let metadata: BaseConsumer = base_config(&servers)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(kafka_error)?;
        let log = Self {
            servers,
            options,
            producer,
            admin: Arc::new(admin),
            metadata: Arc::new(metadata),
        };
        log.ping().await?;
        Ok(log)
    }

    /// The `bootstrap.servers` in use.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    async fn topic_partitions(&self, topic: &str) -> PortResult<u32> {
        let metadata = self.metadata.clone();
        let timeout = self.options.request_timeout;
        let topic = topic.to_owned();
        blocking(move || {
            let found = metadata
                .fetch_metadata(Some(&topic), timeout)
                .map_err(kafka_error)?;
            let entry = found.topics().iter().find(|t| t.name() == topic);
            match entry {
                Some(entry) if entry.error().is_none() && !entry.partitions().is_empty() => {
                    Ok(entry.partitions().len() as u32)
                }
                _ => Err(PortError::NotFound(format!("topic {topic}"))),
            }
        })
        .await
    }
}

pub(crate) fn base_config(servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("client.id", "pulse")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "2000");
    config
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> PortResult<()> {
        let count = i32::try_from(partitions)
            .ok()
            .filter(|count| *count > 0)
            .ok_or_else(|| PortError::Invalid(format!("invalid partition count {partitions}")))?;
        let new_topic = NewTopic::new(
            topic,
            count,
            TopicReplication::Fixed(self.options.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(self.options.request_timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(kafka_error)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(PortError::unavailable(
                        BACKEND,
                        format!("creating {name}: {code}"),
                    ))
                }
            }
        }
        // Topic metadata reaches every broker shortly after creation; wait so that the next
        // append or subscribe sees it.
        let started = Instant::now();
        loop {
            match self.topic_partitions(topic).await {
                Ok(_) => return Ok(()),
                Err(PortError::NotFound(_)) if started.elapsed() < self.options.request_timeout => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn partition_count(&self, topic: &str) -> PortResult<u32> {
        self.topic_partitions(topic).await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> PortResult<Vec<RecordPosition>> {
        let sends = records.iter().map(|record| {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for header in &record.headers {
                headers = headers.insert(KafkaHeader {
                    key: &header.name,
                    value: Some(header.value.as_ref()),
                });
            }
            let mut message = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(record.payload.as_ref())
                .headers(headers);
            if let Some(key) = &record.key {
                message = message.key(key.as_ref());
            }
            self.producer.send(message, self.options.delivery_timeout)
        });
        // Polled together (in order) so they share produce requests; the idempotent producer keeps
        // their order.
        let outcomes = futures::future::join_all(sends).await;
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(delivery) => Ok(RecordPosition {
                    topic: topic.to_owned(),
                    partition: delivery.partition as u32,
                    offset: delivery.offset,
                }),
                Err((err, _)) => Err(match err {
                    KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition)
                    | KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopic) => {
                        PortError::NotFound(format!("topic {topic}"))
                    }
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                        PortError::Invalid(format!("record too large for topic {topic}"))
                    }
                    other => kafka_error(other),
                }),
            })
            .collect()
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> PortResult<Box<dyn LogConsumer>> {
        if topics.is_empty() {
            return Err(PortError::Invalid(
                "a consumer needs at least one topic".into(),
            ));
        }
        for topic in topics {
            self.topic_partitions(topic).await?;
        }
        let consumer = KafkaConsumer::subscribe(
            &self.servers,
            group,
            topics,
            self.options.clone(),
            self.metadata.clone(),
        )?;
        Ok(Box::new(consumer))
    }

    async fn ping(&self) -> PortResult<()> {
        let metadata = self.metadata.clone();
        let timeout = self.options.request_timeout;
        blocking(move || {
            metadata
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(kafka_error)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_urls_become_bootstrap_servers() {
        assert_eq!(
            bootstrap_servers("kafka://127.0.0.1:9092").unwrap(),
            "127.0.0.1:9092"
        );
        assert_eq!(bootstrap_servers("kafka://a:1,b:2/").unwrap(), "a:1,b:2");
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://host:port",
            "redis://x:1",
            "kafka://:9092",
        ] {
            assert!(bootstrap_servers(bad).is_err(), "{bad}");
        }
    }
}
