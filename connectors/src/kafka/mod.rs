//! Kafka connectors (librdkafka through `rdkafka`): the clickstream and profile source and the
//! changelog sink.

mod diagnose;
#[cfg(test)]
mod examples_test;
mod sink;
mod source;

pub use sink::{
    client_config, client_error, Cleanup, KafkaChangelogSink, SinkDeliveryMetrics, EPOCH_HEADER,
    SEQ_HEADER,
};
pub use source::{
    EventDecoder, KafkaSource, KafkaSourceConfig, MessageDecoder, ProfileDecoder, StartAt, StopAt,
    TopicConfig,
};
