//! The Kafka changelog sink: every table is a keyed, compactable topic.
//!
//! ```text
//!  write_epoch(e, changes sorted by key)
//!    └─ per change i: key = primary-key JSON, value = row JSON or none (tombstone),
//!       headers cap.epoch = e, cap.seq = i  ──idempotent producer──▶ <prefix><table>
//!    └─ flush: wait until the broker acknowledged every message of the epoch
//! ```
//!
//! Guarantees: an epoch's changes are produced in key order and `write_epoch` returns only
//! when every one of them is acknowledged (`acks=all`, idempotent producer, so librdkafka's
//! retries neither lose nor duplicate nor reorder within a partition). While the brokers
//! are unreachable the writer waits, logging every `delivery_warn_ms`, and resumes when they
//! are back: nothing is dropped. A message the broker rejects for good (too large, no such
//! topic, not authorized) fails the epoch with the table, the key and the broker's reason.
//! Partitioning is by key with Java's murmur2 partitioner, so other Kafka clients that
//! partition by the same key agree; once begun, the writer computes each key's partition
//! itself ([`partition_of`]) and sets it on the message.
//!
//! Resume (a restored run): the writer reads the last message of every partition of its
//! topic, whose `cap.epoch`/`cap.seq` headers say how far it got, and skips change `seq` of
//! epoch `e` bound for partition `p` when `(e, seq)` is not after that partition's last: a
//! replayed epoch comes out exactly as before, and messages of one partition arrive in
//! order without gaps (idempotent producer), so nothing is published twice or lost. No
//! Kafka transactions are needed (tansu and Azure Event Hubs have none).
//!
//! Non-guarantees: no Kafka transactions (so readers with `read_committed` see the same as
//! others); a crash between produce and flush may leave part of an epoch published, which
//! the replay skips by its headers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_engine::config::KafkaSinkConfig;
use cap_engine::metrics::{Counter, Registry};
use cap_engine::sink::{Change, SinkError, TableWriter};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::diagnose;

/// Header naming the epoch of a change.
pub const EPOCH_HEADER: &str = "cap.epoch";
/// Header numbering a change within its epoch's key order (from 0).
pub const SEQ_HEADER: &str = "cap.seq";

/// The client configuration shared by the sink's producer and admin client: the brokers,
/// then the passed-through properties (`bootstrap.servers` among them replaces `brokers`).
pub fn client_config(cfg: &KafkaSinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Whether a librdkafka property holds a secret whose value must never be logged.
fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "jaas",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// A client error as text for logs and error messages. librdkafka's configuration errors
/// end with the rejected value, which for `sasl.password` or `ssl.key.password` would put
/// the secret in the log: those values are replaced by `<redacted>`.
pub fn client_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, _) if is_secret_property(key) => {
            format!("Client config error: {desc} {key} <redacted>")
        }
        KafkaError::ClientConfig(_, desc, key, value) => {
            format!("Client config error: {desc} {key} {value}")
        }
        other => other.to_string(),
    }
}

/// Delivery reports of one producer: the permanent failures, and counters.
#[derive(Default)]
struct Deliveries {
    failures: Mutex<Vec<String>>,
    metrics: SinkDeliveryMetrics,
}

/// Per-table counters of the Kafka sink (`table` label).
#[derive(Clone, Default)]
pub struct SinkDeliveryMetrics {
    /// Messages the brokers acknowledged.
    pub delivered: Counter,
    /// Messages the brokers rejected for good (after librdkafka's own retries).
    pub failed: Counter,
    /// Times an epoch's delivery waited longer than `delivery_warn_ms` (an outage or a
    /// slow broker; the writer keeps waiting).
    pub stalls: Counter,
    /// Times the producer's local queue was full and the writer waited for room.
    pub queue_full: Counter,
}

impl SinkDeliveryMetrics {
    /// Registers the series of `table`.
    pub fn new(registry: &Registry, table: &str) -> SinkDeliveryMetrics {
        let labels = || vec![("table", table.to_owned())];
        SinkDeliveryMetrics {
            delivered: registry.counter(
                "cap_kafka_sink_delivered_total",
                "Changelog messages acknowledged by the brokers.",
                labels(),
            ),
            failed: registry.counter(
                "cap_kafka_sink_failed_total",
                "Changelog messages the brokers rejected for good.",
                labels(),
            ),
            stalls: registry.counter(
                "cap_kafka_sink_stalls_total",
                "Epoch deliveries that waited longer than delivery_warn_ms for the brokers.",
                labels(),
            ),
            queue_full: registry.counter(
                "cap_kafka_sink_queue_full_total",
                "Times the producer's local queue was full and the writer waited.",
                labels(),
            ),
        }
    }
}

struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => self.0.metrics.delivered.add(1),
            Err(_) => self.0.metrics.failed.add(1),
        }
        if let Err((e, msg)) = result {
            let key = msg
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let mut failures = self.0.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.push(format!("key {key}: {e}"));
        }
    }
}

/// Writes one table's changes to its changelog topic (see the module docs).
pub struct KafkaChangelogSink {
    table: String,
    topic: String,
    producer: BaseProducer<DeliveryContext>,
    deliveries: Arc<Deliveries>,
    warn_after: Duration,
    config: KafkaSinkConfig,
    /// The topic's partition count, once begun.
    partitions: Option<i32>,
    /// Per partition, the last `(epoch, seq)` an earlier run published (resume only).
    published: Vec<Option<(u64, u64)>>,
}

/// Java's (and librdkafka's `murmur2`) 32-bit murmur2 hash of a key.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in chunks.by_ref() {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner (and librdkafka's `murmur2_random`) gives
/// `key` among `partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

impl KafkaChangelogSink {
    /// Connects the producer for `table`, creating its topic when it is missing and
    /// `create_partitions > 0`.
    pub fn open(table: &str, cfg: &KafkaSinkConfig) -> Result<Self, SinkError> {
        Self::open_with_metrics(table, cfg, SinkDeliveryMetrics::default())
    }

    /// As [`open`](Self::open), counting deliveries, failures and stalls in `metrics`.
    pub fn open_with_metrics(
        table: &str,
        cfg: &KafkaSinkConfig,
        metrics: SinkDeliveryMetrics,
    ) -> Result<Self, SinkError> {
        let err = |what: String| SinkError {
            table: table.to_owned(),
            what,
            cause: None,
        };
        if cfg.brokers.trim().is_empty() {
            return Err(err("sinks.kafka.brokers is empty".into()));
        }
        let topic = format!("{}{}", cfg.topic_prefix, table);
        if cfg.create_partitions > 0 {
            Self::create_topic(&topic, cfg, Cleanup::Compact).map_err(|e| {
                err(format!(
                    "cannot create topic `{topic}` on {}: {e}",
                    cfg.brokers
                ))
            })?;
        }
        let deliveries = Arc::new(Deliveries {
            failures: Mutex::default(),
            metrics,
        });
        let mut c = client_config(cfg);
        // Exactly once per partition and in order: idempotence implies acks=all and
        // bounded in-flight requests; retries go on until flush gives up, which it never does.
        c.set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5");
        let producer = c
            .create_with_context(DeliveryContext(Arc::clone(&deliveries)))
            .map_err(|e| {
                err(format!(
                    "cannot create the producer for `{topic}`: {}",
                    client_error(&e)
                ))
            })?;
        info!(table, topic, brokers = %cfg.brokers, "kafka sink ready");
        Ok(KafkaChangelogSink {
            table: table.to_owned(),
            topic,
            producer,
            deliveries,
            warn_after: Duration::from_millis(cfg.delivery_warn_ms.max(1)),
            config: cfg.clone(),
            partitions: None,
            published: Vec::new(),
        })
    }

    /// How long resume waits for the brokers.
    const RESUME_TIMEOUT: Duration = Duration::from_secs(30);

    /// The topic's partition count.
    fn partition_count(&self) -> Result<i32, SinkError> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), Self::RESUME_TIMEOUT)
            .map_err(|e| {
                self.error(format!("cannot read the metadata of `{}`: {e}", self.topic))
            })?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(self.error(format!(
                "topic `{}` does not exist on {} (create it, or set sinks.kafka.create_partitions)",
                self.topic, self.config.brokers
            )));
        }
        Ok(n as i32)
    }

    /// The `(epoch, seq)` of the last message of every partition (`None`: empty, or not
    /// written by CAP).
    fn read_published(&self, partitions: i32) -> Result<Vec<Option<(u64, u64)>>, SinkError> {
        // A group id only because librdkafka's assign wants one; nothing is committed.
        let consumer: BaseConsumer = client_config(&self.config)
            .set("group.id", "cap-sink-resume")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| {
                self.error(format!(
                    "cannot create a consumer to resume: {}",
                    client_error(&e)
                ))
            })?;
        let mut published = vec![None; partitions as usize];
        let mut tpl = TopicPartitionList::new();
        let mut waiting = 0usize;
        for p in 0..partitions {
            let (lo, hi) = consumer
                .fetch_watermarks(&self.topic, p, Self::RESUME_TIMEOUT)
                .map_err(|e| {
                    self.error(format!(
                        "cannot read the offsets of {}/{p}: {e}",
                        self.topic
                    ))
                })?;
            if hi > lo {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(hi - 1))
                    .map_err(|e| self.error(e.to_string()))?;
                waiting += 1;
            }
        }
        if waiting == 0 {
            return Ok(published);
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.error(format!("cannot assign {}: {e}", self.topic)))?;
        let deadline = Instant::now() + Self::RESUME_TIMEOUT;
        let mut seen = vec![false; partitions as usize];
        while waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.error(format!(
                    "cannot read the last message of {waiting} partition(s) of `{}` within {} s",
                    self.topic,
                    Self::RESUME_TIMEOUT.as_secs()
                )));
            }
            let Some(msg) = consumer.poll(left.min(Duration::from_millis(200))) else {
                continue;
            };
            let msg =
                msg.map_err(|e| self.error(format!("resume read of `{}`: {e}", self.topic)))?;
            let p = msg.partition() as usize;
            if p >= seen.len() || seen[p] {
                continue;
            }
            seen[p] = true;
            waiting -= 1;
            let header = |name: &str| -> Option<u64> {
                let headers = msg.headers()?;
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
            };
            match (header(EPOCH_HEADER), header(SEQ_HEADER)) {
                (Some(e), Some(s)) => published[p] = Some((e, s)),
                _ => {
                    warn!(table = %self.table, topic = %self.topic, partition = p, offset = msg.offset(), "kafka sink: the last message has no cap.epoch/cap.seq headers (not written by CAP); nothing is skipped in this partition")
                }
            }
        }
        Ok(published)
    }

    fn error(&self, what: String) -> SinkError {
        SinkError {
            table: self.table.clone(),
            what,
            cause: None,
        }
    }

    /// Waits until every produced message is acknowledged, however long the brokers take.
    fn flush(&self, epoch: u64) -> Result<(), SinkError> {
        let started = Instant::now();
        loop {
            match self.producer.flush(self.warn_after) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    self.deliveries.metrics.stalls.add(1);
                    warn!(
                    table = %self.table,
                    topic = %self.topic,
                    epoch,
                    waiting_s = started.elapsed().as_secs(),
                    in_flight = self.producer.in_flight_count(),
                    "kafka sink: brokers have not acknowledged the epoch yet; waiting"
                    )
                }
                Err(e) => return Err(self.error(format!("flush of epoch {epoch}: {e}"))),
            }
        }
        let failures = std::mem::take(
            &mut *self
                .deliveries
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if let Some(first) = failures.first() {
            return Err(self.error(format!(
                "epoch {epoch}: {} change(s) rejected by the broker on topic `{}`, first: {first}",
                failures.len(),
                self.topic
            )));
        }
        Ok(())
    }
}

impl TableWriter for KafkaChangelogSink {
    fn begin(&mut self, resume: bool) -> Result<(), SinkError> {
        let partitions = self.partition_count()?;
        self.partitions = Some(partitions);
        if resume {
            self.published = self.read_published(partitions)?;
            let last = self.published.iter().flatten().max();
            info!(table = %self.table, topic = %self.topic, last_published = ?last, "kafka sink resumed");
        }
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError> {
        let epoch_text = epoch.to_string();
        let skipping = self.published.iter().flatten().any(|&(e, _)| e >= epoch);
        if !skipping {
            self.published.clear();
        }
        let mut skipped = 0u64;
        for (seq, change) in changes.iter().enumerate() {
            let partition = self
                .partitions
                .map(|n| partition_of(change.key.as_bytes(), n));
            if skipping {
                let done = partition
                    .and_then(|p| self.published.get(p as usize).copied().flatten())
                    .is_some_and(|last| (epoch, seq as u64) <= last);
                if done {
                    skipped += 1;
                    continue;
                }
            }
            let seq_text = seq.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: EPOCH_HEADER,
                    value: Some(epoch_text.as_bytes()),
                })
                .insert(Header {
                    key: SEQ_HEADER,
                    value: Some(seq_text.as_bytes()),
                });
            let mut record = BaseRecord::to(&self.topic)
                .key(change.key.as_bytes())
                .headers(headers);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(row) = &change.row {
                record = record.payload(row.as_bytes());
            }
            // A full local queue is backpressure: serve delivery reports and try again.
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        self.deliveries.metrics.queue_full.add(1);
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        return Err(self.error(format!(
                            "epoch {epoch}: cannot produce key {} to `{}`: {e}",
                            change.key, self.topic
                        )))
                    }
                }
            }
        }
        if skipped > 0 {
            info!(table = %self.table, epoch, skipped, "kafka sink: skipped changes an earlier run published");
        }
        self.flush(epoch)
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.flush(u64::MAX)
    }
}

/// What a created topic keeps: `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// `compact`: the latest message per key (changelog topics, whose compacted form is the
    /// table).
    Compact,
    /// The broker's default (`delete` after the retention time): event topics.
    BrokerDefault,
}

impl KafkaChangelogSink {
    /// Creates `topic` with `cfg.create_partitions` partitions of `cfg.create_replication`
    /// replicas and the cleanup policy `cleanup` unless it exists (an existing topic is left
    /// as it is): for the sink's topics, the `replay` command's and tools'.
    pub fn create_topic(
        topic: &str,
        cfg: &KafkaSinkConfig,
        cleanup: Cleanup,
    ) -> Result<(), String> {
        let config = client_config(cfg);
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(|e| client_error(&e))?;
        // librdkafka reports why the brokers refuse the admin client (TLS, authentication)
        // only on a queue it cannot serve: a probe with the same settings finds out.
        let explain = |what: String| {
            diagnose::explain(what, diagnose::probe(&config, Duration::from_secs(10)))
        };
        let mut new = NewTopic::new(
            topic,
            cfg.create_partitions,
            TopicReplication::Fixed(cfg.create_replication),
        );
        if cleanup == Cleanup::Compact {
            new = new.set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let results = runtime
            .block_on(admin.create_topics([&new], &opts))
            .map_err(|e| explain(e.to_string()))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(explain(format!("{t}: {code}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaConfRes;

    use super::*;

    fn config_error(key: &str, value: &str) -> KafkaError {
        KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value".into(),
            key.into(),
            value.into(),
        )
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own test vectors (clients/.../UtilsTest.java).
        for (key, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        assert_eq!(partition_of(b"21", 7), (-973_932_308i32 & 0x7fff_ffff) % 7);
    }

    #[test]
    fn config_errors_name_the_property_but_not_a_secret_value() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "SASL.JAAS.CONFIG",
            "sasl.oauthbearer.client.secret",
        ] {
            let text = client_error(&config_error(key, "hunter2"));
            assert!(text.contains(key) && text.contains("<redacted>"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let text = client_error(&config_error("compression.type", "zip"));
        assert!(text.ends_with("compression.type zip"), "{text}");
    }
}
