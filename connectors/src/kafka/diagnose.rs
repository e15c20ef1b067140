//! Why a Kafka client cannot reach its brokers.
//!
//! librdkafka reports an authentication failure, a TLS handshake failure or a refused
//! connection only as an error event on the client's main queue, served when the client is
//! polled; the request that then times out (metadata, an admin call) says only
//! `BrokerTransportFailure` or `OperationTimedOut`. [`Problems`] keeps those events so that
//! the timeout can say why, and [`probe`] finds the reason for a client whose main queue
//! cannot be polled (the admin client).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The client errors librdkafka reported, most telling first.
#[derive(Default)]
pub(crate) struct Problems {
    /// The last error other than "all brokers down": an authentication or TLS failure, a
    /// refused connection.
    specific: Mutex<Option<String>>,
    /// The last "all brokers down" error, which says only that nothing answers.
    generic: Mutex<Option<String>>,
}

impl Problems {
    /// Records an error event of the client.
    pub(crate) fn record(&self, error: &KafkaError, reason: &str) {
        let slot = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => &self.generic,
            _ => &self.specific,
        };
        let text = if reason.is_empty() {
            error.to_string()
        } else {
            reason.to_owned()
        };
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    /// The most telling error recorded, if any.
    pub(crate) fn reason(&self) -> Option<String> {
        let specific = self.specific.lock().unwrap_or_else(|p| p.into_inner());
        match &*specific {
            Some(text) => Some(text.clone()),
            None => self
                .generic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Whether an error other than "all brokers down" was recorded.
    fn has_specific(&self) -> bool {
        self.specific
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// `what`, followed by `reason` when there is one.
pub(crate) fn explain(what: String, reason: Option<String>) -> String {
    match reason {
        Some(reason) => format!("{what}; librdkafka reported: {reason}"),
        None => what,
    }
}

/// A metadata-only consumer's context that keeps the client's errors.
#[derive(Default)]
struct ProbeContext {
    problems: Problems,
}

impl ClientContext for ProbeContext {
    /// Silent: the failing client's producer properties make a consumer log that it ignores
    /// them, and its own logs already went out.
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        self.problems.record(&error, reason);
    }
}

impl ConsumerContext for ProbeContext {}

/// Connects a consumer with `config` (the failing client's settings) and waits up to `wait`
/// for the reason the brokers cannot be used: the first error other than "all brokers down",
/// else the last one. `None` when the brokers answer (the failure lies elsewhere) or say
/// nothing in time.
pub(crate) fn probe(config: &ClientConfig, wait: Duration) -> Option<String> {
    let consumer: BaseConsumer<ProbeContext> =
        match config.create_with_context(ProbeContext::default()) {
            Ok(consumer) => consumer,
            Err(e) => return Some(super::client_error(&e)),
        };
    let deadline = Instant::now() + wait;
    loop {
        let answered = consumer
            .fetch_metadata(None, Duration::from_millis(300))
            .is_ok();
        // Serves the main queue: error events reach the context only here.
        while consumer.poll(Duration::ZERO).is_some() {}
        let problems = &consumer.context().problems;
        if answered {
            return None;
        }
        if problems.has_specific() || Instant::now() >= deadline {
            return problems.reason();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_error_outranks_all_brokers_down() {
        let problems = Problems::default();
        assert_eq!(problems.reason(), None);
        problems.record(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(problems.reason().as_deref(), Some("1/1 brokers are down"));
        problems.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: bad credentials",
        );
        problems.record(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(
            problems.reason().as_deref(),
            Some("SASL authentication error: bad credentials")
        );
        assert_eq!(
            explain("timed out".into(), problems.reason()),
            "timed out; librdkafka reported: SASL authentication error: bad credentials"
        );
    }

    #[test]
    fn an_unreachable_broker_is_explained_by_the_refused_connection() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let reason = probe(&config, Duration::from_secs(5)).expect("a reason");
        assert!(reason.contains("127.0.0.1:1"), "{reason}");
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
    }
}
