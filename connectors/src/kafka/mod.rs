//! Kafka connectors (librdkafka through `rdkafka`): the clickstream source and the
//! changelog sink.

mod sink;
mod source;

pub use sink::{client_config, KafkaChangelogSink, SinkDeliveryMetrics, EPOCH_HEADER, SEQ_HEADER};
pub use source::{KafkaSource, KafkaSourceConfig, StartAt, StopAt, TopicConfig};
