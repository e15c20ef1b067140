//! Kafka connectors (librdkafka through `rdkafka`): the changelog sink; the source follows.

mod sink;

pub use sink::{client_config, KafkaChangelogSink, EPOCH_HEADER, SEQ_HEADER};
