//! The event log suite against the real Apache Kafka started by `scripts/services`.

use pulse_conformance::{services, Fixture};
use pulse_kafka::{KafkaLog, KafkaOptions};

async fn kafka() -> Fixture<KafkaLog> {
    let url = services::kafka_url();
    match KafkaLog::connect(&url, KafkaOptions::default()).await {
        Ok(log) => Fixture::new(log),
        Err(err) => services::missing("Kafka", &url, err),
    }
}

pulse_conformance::event_log_suite!(kafka());
