//! The Kafka source: several topics of clickstream events (or of CRM profile upserts, see
//! [`KafkaSource::profiles`] and [`crate::crm`]), their partitions spread over every worker
//! of every process, each read by offset.
//!
//! ```text
//!  [sources.clickstream]  kind = "kafka", topics = [clickstream, app-logs, social]
//!    partitions(): metadata of every topic -> ["clickstream/0", "clickstream/1", ...,
//!                  "app-logs/0", ...]  (config order, then partition number)
//!    partition i -> worker i % workers      (the engine's deterministic assignment)
//!
//!  one consumer per worker (manual assignment, no group rebalancing)
//!    ├─ partition queue clickstream/0 ─ poll ─ decode(json|csv, channel) ─▶ Event | DeadLetter
//!    ├─ partition queue app-logs/1    ─ ...
//!    └─ main queue: errors, statistics (high watermarks -> lag), commit results
//! ```
//!
//! Positions are Kafka offsets: a partition's position is the offset of the next record
//! it will yield, so the engine's epoch log records, per epoch, exactly which offsets
//! the epoch covers, and [`seek`](SourcePartition::seek) re-reads from any of them.
//!
//! Where reading starts (`start`): `earliest`, `latest`, `timestamp` (the first offset at
//! or after `start_timestamp`) or `group` (the offsets committed by `group_id`, earliest
//! where none is committed). Each is resolved to a concrete offset when the partition is
//! opened, so positions are always real offsets. `stop = "end"` ends each partition at the
//! high watermark it had when opened (a bounded replay); `stop = "never"` reads forever.
//!
//! Guarantees:
//! - every message of an assigned partition yields exactly one record, in offset order: an
//!   event, or a dead letter naming the topic, partition, offset and reason (bad JSON/CSV,
//!   a null value) - nothing is dropped silently and bad data never stops the job;
//! - when the brokers are unreachable the partitions yield nothing and librdkafka
//!   reconnects by itself; the source logs the outage (WARN) and the recovery (INFO) and
//!   resumes at the offset where it stopped, losing nothing;
//! - while the engine holds the source back (backpressure) its partitions are paused, so
//!   librdkafka stops fetching, and what it prefetches is bounded by `queued_max_kbytes`.
//!
//! Non-guarantees: group offsets are committed (every `commit_interval_ms`) for monitoring
//! tools only; the source of truth for replay is the engine's epoch log. Every process
//! must see the same topic metadata at start (the same partition counts): partitions added
//! while the job runs are not read until it restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_engine::dead_letter::DeadLetter;
use cap_engine::source::{Polled, Position, Source, SourceError, SourcePartition, SourceRecord};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::diagnose::{explain, Problems};
use crate::clickstream::csv::CsvDecoder;
use crate::clickstream::encode::CSV_HEADER_EXTENDED;
use crate::clickstream::json::JsonDecoder;
use crate::clickstream::{Channel, DecodeOptions, Event};
use crate::crm::{decode_upsert, ProfileUpsert};
use crate::file::Format;

/// Where a partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest retained offset.
    #[default]
    Earliest,
    /// The high watermark when the partition is opened: only new records.
    Latest,
    /// The first offset whose timestamp is at or after `start_timestamp`.
    Timestamp,
    /// The offset committed by `group_id` (earliest where none is committed).
    Group,
}

/// Where a partition stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopAt {
    /// Never: read new records as they arrive.
    #[default]
    Never,
    /// At the high watermark the partition had when it was opened.
    End,
}

/// One topic of a Kafka source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// The topic name.
    pub name: String,
    /// Value format: `json` (one object per message) or `csv` (one record per message).
    #[serde(default = "default_format")]
    pub format: Format,
    /// The channel (`web`, `app`, `social`) given to events that carry none.
    #[serde(default)]
    pub channel: Option<String>,
    /// The column order of `csv` values (default: REES46 plus `ip,user_agent,channel,country`).
    #[serde(default)]
    pub csv_header: Option<String>,
}

fn default_format() -> Format {
    Format::Json
}

/// `[sources.NAME]` for `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Always `kafka`.
    pub kind: String,
    /// Bootstrap brokers, comma separated.
    pub brokers: String,
    /// The topics read, in a fixed order (partitions are numbered in this order).
    pub topics: Vec<TopicConfig>,
    /// Where reading starts: `earliest`, `latest`, `timestamp` or `group`.
    #[serde(default)]
    pub start: StartAt,
    /// With `start = "timestamp"`: RFC 3339 (`2019-11-01T00:00:00Z`) or epoch milliseconds.
    #[serde(default)]
    pub start_timestamp: Option<toml::Value>,
    /// `never` (default) or `end` (the high watermarks at open).
    #[serde(default)]
    pub stop: StopAt,
    /// Consumer group for committed offsets (monitoring, `start = "group"`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Milliseconds between group offset commits (0: never commit).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// librdkafka's `queued.max.messages.kbytes`: prefetch bound per partition, in KiB.
    #[serde(default = "default_queued_max_kbytes")]
    pub queued_max_kbytes: u64,
    /// How long start-up waits for topic metadata and offsets before failing, in ms.
    #[serde(default = "default_metadata_timeout_ms")]
    pub metadata_timeout_ms: u64,
    /// Earliest accepted event_time year.
    #[serde(default = "default_min_year")]
    pub min_year: i32,
    /// Latest accepted event_time year.
    #[serde(default = "default_max_year")]
    pub max_year: i32,
    /// librdkafka properties passed through (`security.protocol`, `sasl.*`, `ssl.*`...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_commit_interval_ms() -> u64 {
    5000
}
fn default_queued_max_kbytes() -> u64 {
    16 * 1024
}
fn default_metadata_timeout_ms() -> u64 {
    60_000
}
fn default_min_year() -> i32 {
    DecodeOptions::default().min_year
}
fn default_max_year() -> i32 {
    DecodeOptions::default().max_year
}

/// How one topic's messages become records: clickstream [`Event`]s, or CRM
/// [`ProfileUpsert`]s.
pub trait MessageDecoder: Clone + Send + Sync + 'static {
    /// What a message decodes to.
    type Item;
    /// Decodes the message at `offset` of partition `partition` (its index in the source's
    /// partition list) into an item or a dead letter naming `dead_source`.
    fn decode(
        &self,
        dead_source: &str,
        partition: u32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> SourceRecord<Self::Item>;
}

/// The decoder of one clickstream topic's values.
#[derive(Clone)]
enum ValueDecoder {
    Json(JsonDecoder),
    Csv(Arc<CsvDecoder>),
}

/// Decodes a clickstream topic: JSON or CSV values, with the topic's default channel.
#[derive(Clone)]
pub struct EventDecoder {
    decoder: ValueDecoder,
    channel: Option<Channel>,
}

/// Decodes a CRM profile topic: keyed upserts (see [`crate::crm`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfileDecoder;

/// One topic, resolved: its name and decoder.
#[derive(Clone)]
struct Topic<D> {
    name: String,
    decoder: D,
}

impl MessageDecoder for ProfileDecoder {
    type Item = ProfileUpsert;

    fn decode(
        &self,
        dead_source: &str,
        partition: u32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> SourceRecord<ProfileUpsert> {
        let position = offset.max(0) as Position;
        let item = decode_upsert(key, value, (position, partition)).map_err(|why| {
            let mut raw = key.map(<[u8]>::to_vec).unwrap_or_default();
            raw.extend_from_slice(b"\t");
            raw.extend_from_slice(value.unwrap_or_default());
            DeadLetter::new(dead_source, position, &raw, why)
        });
        SourceRecord { position, item }
    }
}

impl MessageDecoder for EventDecoder {
    type Item = Event;

    /// Decodes one message's value into an event or a dead letter (the key is not used).
    fn decode(
        &self,
        dead_source: &str,
        _partition: u32,
        offset: i64,
        _key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> SourceRecord<Event> {
        let position = offset as Position;
        let item = match payload {
            None => Err(DeadLetter::new(
                dead_source,
                position,
                b"",
                "the message has no value (a tombstone or an empty record); expected a clickstream event",
            )),
            Some(bytes) => {
                let decoded = match &self.decoder {
                    ValueDecoder::Json(d) => d.decode(bytes),
                    ValueDecoder::Csv(d) => {
                        let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        d.decode(line)
                    }
                };
                match decoded {
                    Ok(mut e) => {
                        if e.channel.is_none() {
                            e.channel = self.channel;
                        }
                        Ok(e)
                    }
                    Err(why) => Err(DeadLetter::new(
                        dead_source,
                        position,
                        bytes,
                        why.message,
                    )),
                }
            }
        };
        SourceRecord { position, item }
    }
}

/// A configured Kafka source (see the module docs): clickstream events by default
/// ([`KafkaSource::new`]), CRM profile upserts with [`KafkaSource::profiles`].
pub struct KafkaSource<D = EventDecoder> {
    name: String,
    config: KafkaSourceConfig,
    topics: Vec<Topic<D>>,
    /// `(topic index, partition)` per partition label, in label order.
    partitions: Vec<(usize, i32)>,
    start_ms: Option<i64>,
}

impl KafkaSource<EventDecoder> {
    /// A source of clickstream events: validates `config` and reads every topic's
    /// partitions from the brokers (waiting up to `metadata_timeout_ms` for them). Errors
    /// name the key, the topic or the brokers.
    pub fn new(name: &str, config: KafkaSourceConfig) -> Result<KafkaSource, SourceError> {
        let prefix = format!("sources.{name}");
        if config.min_year > config.max_year {
            return Err(SourceError::Config {
                source_name: name.to_owned(),
                reason: format!(
                    "{prefix}.min_year ({}) is after max_year ({})",
                    config.min_year, config.max_year
                ),
            });
        }
        let topics = resolve_topics(&prefix, &config).map_err(|reason| SourceError::Config {
            source_name: name.to_owned(),
            reason,
        })?;
        KafkaSource::with_topics(name, config, topics)
    }
}

impl KafkaSource<ProfileDecoder> {
    /// A source of CRM profile upserts (see [`crate::crm`]): every topic holds JSON
    /// profiles keyed by user id, and tombstones. Errors as [`KafkaSource::new`].
    pub fn profiles(
        name: &str,
        config: KafkaSourceConfig,
    ) -> Result<KafkaSource<ProfileDecoder>, SourceError> {
        let prefix = format!("sources.{name}");
        let topics =
            resolve_profile_topics(&prefix, &config).map_err(|reason| SourceError::Config {
                source_name: name.to_owned(),
                reason,
            })?;
        KafkaSource::with_topics(name, config, topics)
    }
}

impl<D: MessageDecoder> KafkaSource<D> {
    /// Validates what every Kafka source shares and reads the topics' partitions.
    fn with_topics(
        name: &str,
        config: KafkaSourceConfig,
        topics: Vec<Topic<D>>,
    ) -> Result<KafkaSource<D>, SourceError> {
        let prefix = format!("sources.{name}");
        let cfg_err = |reason: String| SourceError::Config {
            source_name: name.to_owned(),
            reason,
        };
        if config.brokers.trim().is_empty() {
            return Err(cfg_err(format!("{prefix}.brokers is empty")));
        }
        if topics.is_empty() {
            return Err(cfg_err(format!(
                "{prefix}.topics is empty: list at least one [[{prefix}.topics]] with a name"
            )));
        }
        let start_ms = match (config.start, &config.start_timestamp) {
            (StartAt::Timestamp, None) => {
                return Err(cfg_err(format!(
                    "{prefix}.start is `timestamp` but {prefix}.start_timestamp is not set"
                )))
            }
            (StartAt::Timestamp, Some(v)) => Some(
                parse_start_timestamp(v)
                    .map_err(|why| cfg_err(format!("{prefix}.start_timestamp: {why}")))?,
            ),
            (_, Some(_)) => {
                return Err(cfg_err(format!(
                    "{prefix}.start_timestamp is set but {prefix}.start is not `timestamp`"
                )))
            }
            (_, None) => None,
        };
        if config.start == StartAt::Group && config.group_id.is_none() {
            return Err(cfg_err(format!(
                "{prefix}.start is `group` but {prefix}.group_id is not set"
            )));
        }

        let mut source = KafkaSource {
            name: name.to_owned(),
            config,
            topics,
            partitions: Vec::new(),
            start_ms,
        };
        source.partitions = source.read_partitions()?;
        info!(
            source = name,
            brokers = %source.config.brokers,
            topics = source.topics.len(),
            partitions = source.partitions.len(),
            "kafka source: topics found"
        );
        Ok(source)
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::Config {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// The librdkafka configuration of this source's consumers.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers)
            .set(
                "group.id",
                self.config
                    .group_id
                    .clone()
                    .unwrap_or_else(|| format!("cap-{}", self.name)),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "queued.max.messages.kbytes",
                self.config.queued_max_kbytes.max(1).to_string(),
            )
            .set("statistics.interval.ms", "1000");
        for (k, v) in &self.config.properties {
            c.set(k, v);
        }
        c
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.metadata_timeout_ms.max(1))
    }

    /// Every topic's partitions, waiting for the brokers up to the metadata timeout.
    fn read_partitions(&self) -> Result<Vec<(usize, i32)>, SourceError> {
        let consumer: BaseConsumer<SourceContext> = self
            .client_config()
            .create_with_context(SourceContext::new(&self.name))
            .map_err(|e| {
                self.error(format!(
                    "cannot create a Kafka consumer: {}",
                    super::client_error(&e)
                ))
            })?;
        let deadline = Instant::now() + self.timeout();
        let mut out = Vec::new();
        for (ti, topic) in self.topics.iter().enumerate() {
            let count = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let found = consumer
                    .fetch_metadata(
                        Some(&topic.name),
                        left.clamp(Duration::from_millis(100), Duration::from_secs(1)),
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|md| {
                        let t = md
                            .topics()
                            .iter()
                            .find(|t| t.name() == topic.name)
                            .ok_or_else(|| "not in the metadata".to_owned())?;
                        match t.error() {
                            Some(e) => Err(format!("{:?}", RDKafkaErrorCode::from(e))),
                            None if t.partitions().is_empty() => {
                                Err("the topic has no partitions (does it exist?)".to_owned())
                            }
                            None => Ok(t.partitions().len()),
                        }
                    });
                // Serves the main queue: a TLS or authentication failure reaches the context
                // only as an error event. A poll returns after one statistics event, so poll
                // for a while rather than until the first empty answer.
                let serve = |d: Duration| {
                    let until = Instant::now() + d;
                    while let Some(wait) = until.checked_duration_since(Instant::now()) {
                        let _ = consumer.poll(wait.min(Duration::from_millis(20)));
                    }
                };
                if found.is_err() {
                    serve(Duration::from_millis(100));
                }
                match found {
                    Ok(n) => break n,
                    Err(why) if Instant::now() >= deadline => {
                        return Err(self.error(explain(
                            format!(
                                "topic `{}` on {}: {why} (waited {} ms, sources.{}.metadata_timeout_ms)",
                                topic.name,
                                self.config.brokers,
                                self.config.metadata_timeout_ms,
                                self.name
                            ),
                            consumer.context().shared.problems.reason(),
                        )))
                    }
                    Err(why) => {
                        let detail = consumer.context().shared.problems.reason();
                        warn!(source = %self.name, topic = %topic.name, brokers = %self.config.brokers, reason = %why, detail = detail.as_deref().unwrap_or("-"), "kafka source: topic metadata not available yet; retrying");
                        serve(Duration::from_millis(400));
                    }
                }
            };
            for p in 0..count {
                out.push((ti, p as i32));
            }
        }
        Ok(out)
    }

    /// The offsets each of `parts` starts and (with `stop = "end"`) ends at.
    fn resolve_offsets(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        parts: &[(usize, i32)],
    ) -> Result<Vec<(i64, Option<i64>)>, SourceError> {
        let timeout = self.timeout();
        let deadline = Instant::now() + timeout;
        let mut marks = Vec::with_capacity(parts.len());
        for &(ti, p) in parts {
            let topic = &self.topics[ti].name;
            // Short tries until the deadline: a broker that lost one request (seen with
            // tansu after a client was killed mid-request) answers the next one.
            let (lo, hi) = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let tried = consumer.fetch_watermarks(
                    topic,
                    p,
                    left.clamp(Duration::from_millis(100), Duration::from_secs(2)),
                );
                match tried {
                    Ok(marks) => break marks,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(self.error(explain(
                            format!(
                                "cannot read the offsets of {topic}/{p} on {}: {e} (waited {} ms, sources.{}.metadata_timeout_ms)",
                                self.config.brokers, self.config.metadata_timeout_ms, self.name
                            ),
                            consumer.context().shared.problems.reason(),
                        )))
                    }
                    Err(e) => {
                        warn!(source = %self.name, partition = %format!("{topic}/{p}"), brokers = %self.config.brokers, reason = %e, "kafka source: cannot read the partition's offsets yet; retrying");
                        let _ = consumer.poll(Duration::from_millis(100));
                    }
                }
            };
            marks.push((lo, hi));
        }
        let mut tpl = TopicPartitionList::new();
        let starts: Vec<i64> = match self.config.start {
            StartAt::Earliest => marks.iter().map(|&(lo, _)| lo).collect(),
            StartAt::Latest => marks.iter().map(|&(_, hi)| hi).collect(),
            StartAt::Timestamp => {
                let ts = self.start_ms.unwrap_or(0);
                for &(ti, p) in parts {
                    tpl.add_partition_offset(&self.topics[ti].name, p, Offset::Offset(ts))
                        .map_err(|e| self.error(e.to_string()))?;
                }
                let found = consumer
                    .offsets_for_times(tpl, timeout)
                    .map_err(|e| self.error(format!("cannot look up offsets by time: {e}")))?;
                parts
                    .iter()
                    .zip(&marks)
                    .map(|(&(ti, p), &(_, hi))| {
                        match found
                            .find_partition(&self.topics[ti].name, p)
                            .map(|e| e.offset())
                        {
                            Some(Offset::Offset(o)) => o,
                            _ => hi, // no record at or after the time: start at the end
                        }
                    })
                    .collect()
            }
            StartAt::Group => {
                for &(ti, p) in parts {
                    tpl.add_partition(&self.topics[ti].name, p);
                }
                let found = consumer
                    .committed_offsets(tpl, timeout)
                    .map_err(|e| self.error(format!("cannot read committed offsets: {e}")))?;
                parts
                    .iter()
                    .zip(&marks)
                    .map(|(&(ti, p), &(lo, hi))| {
                        match found
                            .find_partition(&self.topics[ti].name, p)
                            .map(|e| e.offset())
                        {
                            Some(Offset::Offset(o)) => o.clamp(lo, hi),
                            _ => lo,
                        }
                    })
                    .collect()
            }
        };
        Ok(starts
            .into_iter()
            .zip(marks)
            .map(|(s, (_, hi))| {
                let end = match self.config.stop {
                    StopAt::Never => None,
                    StopAt::End => Some(hi),
                };
                (s, end)
            })
            .collect())
    }
}

/// Checks the name of topic `i` (the `{prefix}.topics[i]` key) against those before it.
fn check_topic_name(key: &str, config: &KafkaSourceConfig, i: usize) -> Result<(), String> {
    let name = &config.topics[i].name;
    if name.trim().is_empty() {
        return Err(format!("{key}.name is empty"));
    }
    if config.topics[..i].iter().any(|t| &t.name == name) {
        return Err(format!("{key}.name `{name}` is listed twice"));
    }
    Ok(())
}

/// The clickstream topics of `config`, validated, with their decoders; errors name the key.
fn resolve_topics(
    prefix: &str,
    config: &KafkaSourceConfig,
) -> Result<Vec<Topic<EventDecoder>>, String> {
    let options = DecodeOptions {
        min_year: config.min_year,
        max_year: config.max_year,
    };
    let mut topics = Vec::new();
    for (i, t) in config.topics.iter().enumerate() {
        let key = format!("{prefix}.topics[{i}]");
        check_topic_name(&key, config, i)?;
        let channel = match &t.channel {
            None => None,
            Some(c) => Some(Channel::parse(c.as_bytes()).ok_or_else(|| {
                format!("{key}.channel is `{c}`; expected `web`, `app` or `social`")
            })?),
        };
        let decoder = match t.format {
            Format::Json => ValueDecoder::Json(JsonDecoder::new(options.clone())),
            Format::Csv => {
                let header = t.csv_header.as_deref().unwrap_or(CSV_HEADER_EXTENDED);
                let d = CsvDecoder::from_header(header.as_bytes(), options.clone())
                    .map_err(|e| format!("{key}.csv_header: {e}"))?;
                ValueDecoder::Csv(Arc::new(d))
            }
        };
        topics.push(Topic {
            name: t.name.clone(),
            decoder: EventDecoder { decoder, channel },
        });
    }
    Ok(topics)
}

/// The profile topics of `config`: JSON values only, no channel or CSV header.
fn resolve_profile_topics(
    prefix: &str,
    config: &KafkaSourceConfig,
) -> Result<Vec<Topic<ProfileDecoder>>, String> {
    let mut topics = Vec::new();
    for (i, t) in config.topics.iter().enumerate() {
        let key = format!("{prefix}.topics[{i}]");
        check_topic_name(&key, config, i)?;
        if t.format != Format::Json {
            return Err(format!(
                "{key}.format: profile topics hold JSON values; `csv` is not supported"
            ));
        }
        if t.channel.is_some() || t.csv_header.is_some() {
            return Err(format!(
                "{key}: `channel` and `csv_header` apply to clickstream topics, not to profiles"
            ));
        }
        topics.push(Topic {
            name: t.name.clone(),
            decoder: ProfileDecoder,
        });
    }
    Ok(topics)
}

/// Parses `start_timestamp`: epoch milliseconds, or RFC 3339 / REES46 text.
fn parse_start_timestamp(v: &toml::Value) -> Result<i64, String> {
    match v {
        toml::Value::Integer(ms) => Ok(*ms),
        toml::Value::String(s) => crate::clickstream::timestamp::parse_event_time(s.as_bytes())
            .ok_or_else(|| {
                format!("`{s}` is not a time (expected RFC 3339, e.g. 2019-11-01T00:00:00Z, or epoch ms)")
            }),
        toml::Value::Datetime(d) => {
            crate::clickstream::timestamp::parse_event_time(d.to_string().as_bytes())
                .ok_or_else(|| format!("`{d}` is not a full date and time with a zone"))
        }
        other => Err(format!(
            "expected a time text or epoch milliseconds, found {}",
            other.type_str()
        )),
    }
}

impl<D: MessageDecoder> Source<D::Item> for KafkaSource<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Vec<String> {
        self.partitions
            .iter()
            .map(|&(ti, p)| format!("{}/{p}", self.topics[ti].name))
            .collect()
    }

    fn open(&self, index: usize) -> Result<Box<dyn SourcePartition<D::Item>>, SourceError> {
        let mut one = self.open_owned(&[index])?;
        one.pop()
            .ok_or_else(|| self.error(format!("no partition {index}")))
    }

    fn open_owned(
        &self,
        indices: &[usize],
    ) -> Result<Vec<Box<dyn SourcePartition<D::Item>>>, SourceError> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let mut parts = Vec::with_capacity(indices.len());
        for &i in indices {
            parts.push(
                *self
                    .partitions
                    .get(i)
                    .ok_or_else(|| self.error(format!("no partition {i}")))?,
            );
        }
        let context = SourceContext::new(&self.name);
        let shared = Arc::clone(&context.shared);
        let consumer: Arc<BaseConsumer<SourceContext>> = Arc::new(
            self.client_config()
                .create_with_context(context)
                .map_err(|e| {
                    self.error(format!(
                        "cannot create a Kafka consumer: {}",
                        super::client_error(&e)
                    ))
                })?,
        );
        let offsets = self.resolve_offsets(&consumer, &parts)?;
        let mut tpl = TopicPartitionList::new();
        for (&(ti, p), &(start, _)) in parts.iter().zip(&offsets) {
            tpl.add_partition_offset(&self.topics[ti].name, p, Offset::Offset(start))
                .map_err(|e| self.error(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.error(format!("cannot assign partitions: {e}")))?;
        let mut out: Vec<Box<dyn SourcePartition<D::Item>>> = Vec::with_capacity(parts.len());
        for ((&(ti, p), &(start, end)), &index) in parts.iter().zip(&offsets).zip(indices) {
            let topic = &self.topics[ti];
            let label = format!("{}/{p}", topic.name);
            let queue = consumer
                .split_partition_queue(&topic.name, p)
                .ok_or_else(|| self.error(format!("cannot open the queue of partition {label}")))?;
            info!(source = %self.name, partition = %label, start, end = ?end, "kafka partition assigned");
            out.push(Box::new(KafkaPartition {
                dead_source: format!("{}:{label}", self.name),
                label,
                topic: topic.clone(),
                partition: p,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                consumer: Arc::clone(&consumer),
                shared: Arc::clone(&shared),
                queue,
                next: start,
                end,
                commit_every: (self.config.commit_interval_ms > 0)
                    .then(|| Duration::from_millis(self.config.commit_interval_ms)),
                committed: start,
                last_commit: Instant::now(),
                paused: false,
            }));
        }
        Ok(out)
    }
}

/// A message returned by the main queue: its offset, key and value.
type Stray = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// What the consumer's callbacks learn, shared by the partitions of one consumer.
#[derive(Default)]
struct Shared {
    /// High watermark per `(topic, partition)`, from librdkafka's statistics.
    high: Mutex<HashMap<(String, i32), i64>>,
    /// Set when librdkafka reports that no broker is reachable; cleared by the next record.
    down: AtomicBool,
    /// Messages the main queue returned before their partition queue was split off.
    strays: Mutex<HashMap<(String, i32), Vec<Stray>>>,
    /// The client errors, which explain a metadata or offset request that timed out.
    problems: Problems,
}

/// The consumer context: routes librdkafka's logs and errors to `tracing`, keeps the
/// high watermarks its statistics report.
struct SourceContext {
    source: String,
    shared: Arc<Shared>,
}

impl SourceContext {
    fn new(source: &str) -> SourceContext {
        SourceContext {
            source: source.to_owned(),
            shared: Arc::default(),
        }
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                warn!(source = %self.source, facility = fac, "librdkafka: {message}")
            }
            _ => debug!(source = %self.source, facility = fac, "librdkafka: {message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut high = self.shared.high.lock().unwrap_or_else(|p| p.into_inner());
        for (name, topic) in statistics.topics {
            for (p, part) in topic.partitions {
                if p >= 0 && part.hi_offset >= 0 {
                    high.insert((name.clone(), p), part.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.problems.record(&error, reason);
        let all_down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        );
        if all_down && !self.shared.down.swap(true, Ordering::Relaxed) {
            warn!(source = %self.source, reason, "kafka source: no broker reachable; waiting for the brokers (librdkafka reconnects) - nothing is lost, reading resumes where it stopped");
        } else if !all_down {
            warn!(source = %self.source, error = %error, reason, "kafka source: client error");
        }
    }
}

impl ConsumerContext for SourceContext {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            debug!(source = %self.source, error = %e, "kafka source: group offset commit failed (monitoring only)");
        }
    }
}

/// One assigned partition of a worker's consumer.
struct KafkaPartition<D> {
    label: String,
    dead_source: String,
    topic: Topic<D>,
    partition: i32,
    /// This partition's index in the source's partition list (the upsert order's tie-break).
    index: u32,
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
    queue: PartitionQueue<SourceContext>,
    /// Offset of the next record to yield.
    next: i64,
    /// Offset to stop at (`stop = "end"`).
    end: Option<i64>,
    commit_every: Option<Duration>,
    committed: i64,
    last_commit: Instant,
    paused: bool,
}

impl<D: MessageDecoder> KafkaPartition<D> {
    fn tpl(&self, offset: Option<i64>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        match offset {
            Some(o) => {
                // A valid partition and offset; the list is local, so this cannot fail.
                let _ =
                    tpl.add_partition_offset(&self.topic.name, self.partition, Offset::Offset(o));
            }
            None => {
                tpl.add_partition(&self.topic.name, self.partition);
            }
        }
        tpl
    }

    /// Serves the consumer's main queue (errors, statistics, commit results) and keeps any
    /// message it returns for the partition it belongs to.
    fn serve_main_queue(&self) {
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            match result {
                Ok(m) => {
                    let mut strays = self.shared.strays.lock().unwrap_or_else(|p| p.into_inner());
                    strays
                        .entry((m.topic().to_owned(), m.partition()))
                        .or_default()
                        .push((
                            m.offset(),
                            m.key().map(<[u8]>::to_vec),
                            m.payload().map(<[u8]>::to_vec),
                        ));
                }
                Err(e) => self.note_error(&e),
            }
        }
    }

    fn note_error(&self, e: &KafkaError) {
        warn!(source = %self.dead_source, error = %e, "kafka source: consumer error; retrying");
    }

    fn accept(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<SourceRecord<D::Item>>,
    ) {
        if offset < self.next {
            return; // already yielded (a message fetched before a seek)
        }
        let decoder = &self.topic.decoder;
        out.push(decoder.decode(&self.dead_source, self.index, offset, key, value));
        self.next = offset + 1;
    }

    fn maybe_commit(&mut self) {
        let Some(every) = self.commit_every else {
            return;
        };
        if self.committed == self.next || self.last_commit.elapsed() < every {
            return;
        }
        self.last_commit = Instant::now();
        match self
            .consumer
            .commit(&self.tpl(Some(self.next)), CommitMode::Async)
        {
            Ok(()) => self.committed = self.next,
            Err(e) => {
                debug!(partition = %self.label, error = %e, "kafka source: cannot commit the group offset (monitoring only)")
            }
        }
    }

    fn at_end(&self) -> bool {
        self.end.is_some_and(|end| self.next >= end)
    }
}

impl<D: MessageDecoder> SourcePartition<D::Item> for KafkaPartition<D> {
    fn label(&self) -> &str {
        &self.label
    }

    fn position(&self) -> Position {
        self.next.max(0) as Position
    }

    fn poll(
        &mut self,
        budget: usize,
        out: &mut Vec<SourceRecord<D::Item>>,
    ) -> Result<Polled, SourceError> {
        if self.at_end() {
            return Ok(Polled::Exhausted);
        }
        self.serve_main_queue();
        let before = out.len();
        let strays = {
            let mut strays = self.shared.strays.lock().unwrap_or_else(|p| p.into_inner());
            strays.remove(&(self.topic.name.clone(), self.partition))
        };
        for (offset, key, value) in strays.into_iter().flatten() {
            self.accept(offset, key.as_deref(), value.as_deref(), out);
        }
        while out.len() - before < budget && !self.at_end() {
            match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let m: BorrowedMessage<'_> = m;
                    let offset = m.offset();
                    if offset < self.next {
                        continue;
                    }
                    let rec = self.topic.decoder.decode(
                        &self.dead_source,
                        self.index,
                        offset,
                        m.key(),
                        m.payload(),
                    );
                    drop(m);
                    out.push(rec);
                    self.next = offset + 1;
                }
                Some(Err(e)) => {
                    self.note_error(&e);
                    break;
                }
            }
        }
        let n = out.len() - before;
        if n > 0 && self.shared.down.swap(false, Ordering::Relaxed) {
            info!(source = %self.dead_source, offset = self.next, "kafka source: brokers reachable again; reading resumed");
        }
        self.maybe_commit();
        if n > 0 {
            Ok(Polled::Records(n))
        } else if self.at_end() {
            Ok(Polled::Exhausted)
        } else {
            Ok(Polled::Idle)
        }
    }

    fn seek(&mut self, position: Position) -> Result<(), SourceError> {
        let offset = i64::try_from(position).unwrap_or(i64::MAX);
        self.consumer
            .seek(
                &self.topic.name,
                self.partition,
                Offset::Offset(offset),
                Duration::from_secs(30),
            )
            .map_err(|e| SourceError::Seek {
                source_name: self.dead_source.clone(),
                partition: self.label.clone(),
                position,
                reason: e.to_string(),
            })?;
        self.next = offset;
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        let high = self.shared.high.lock().unwrap_or_else(|p| p.into_inner());
        high.get(&(self.topic.name.clone(), self.partition))
            .map(|&hi| hi.saturating_sub(self.next).max(0) as u64)
    }

    fn set_paused(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        let tpl = self.tpl(None);
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                debug!(partition = %self.label, paused, "kafka source: partition pause state changed")
            }
            Err(e) => {
                error!(partition = %self.label, paused, error = %e, "kafka source: cannot change the partition's pause state")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(topics: &str) -> KafkaSourceConfig {
        let text = format!("kind = \"kafka\"\nbrokers = \"127.0.0.1:1\"\n{topics}");
        match toml::from_str(&text) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse: {e}"),
        }
    }

    fn topics(topics: &str) -> Result<Vec<Topic<EventDecoder>>, String> {
        resolve_topics("sources.clickstream", &config(topics))
    }

    const JSON_VIEW: &[u8] = br#"{"event_time":"2019-11-01 00:00:00 UTC","event_type":"view","product_id":1,"category_id":2,"category_code":null,"brand":null,"price":1.5,"user_id":3,"user_session":null}"#;

    #[test]
    fn values_decode_with_the_topic_format_and_channel() -> Result<(), String> {
        let t = topics(
            "[[topics]]\nname = \"web\"\n[[topics]]\nname = \"app\"\nformat = \"csv\"\nchannel = \"app\"",
        )?;
        let web = t[0]
            .decoder
            .decode("clickstream:web/0", 0, 7, None, Some(JSON_VIEW));
        assert_eq!(web.position, 7);
        let e = web.item.map_err(|d| d.reason)?;
        assert_eq!((e.user_id, e.price_cents, e.channel), (3, 150, None));

        let line = b"2019-11-01 00:00:01 UTC,cart,1,2,,,2.00,3,,1.2.3.4,ua,,\n";
        let app = t[1]
            .decoder
            .decode("clickstream:app/1", 0, 9, None, Some(line));
        let e = app.item.map_err(|d| d.reason)?;
        assert_eq!(
            (e.event_type.as_str(), e.channel),
            ("cart", Some(Channel::App))
        );
        // A channel in the record wins over the topic's.
        let line = b"2019-11-01 00:00:01 UTC,cart,1,2,,,2.00,3,,,,social,";
        let e = t[1]
            .decoder
            .decode("clickstream:app/1", 0, 10, None, Some(line))
            .item
            .map_err(|d| d.reason)?;
        assert_eq!(e.channel, Some(Channel::Social));
        Ok(())
    }

    #[test]
    fn bad_values_and_tombstones_are_dead_letters_naming_partition_and_offset() -> Result<(), String>
    {
        let t = topics("[[topics]]\nname = \"web\"")?;
        let bad = t[0].decoder.decode(
            "clickstream:web/2",
            0,
            41,
            None,
            Some(b"{\"event_type\":\"view\""),
        );
        match bad.item {
            Ok(e) => return Err(format!("decoded {e:?}")),
            Err(d) => {
                assert_eq!((d.source.as_str(), d.position), ("clickstream:web/2", 41));
                assert_eq!(d.raw, b"{\"event_type\":\"view\"");
                assert!(!d.reason.is_empty());
            }
        }
        match t[0]
            .decoder
            .decode("clickstream:web/2", 0, 42, None, None)
            .item
        {
            Ok(e) => Err(format!("decoded {e:?}")),
            Err(d) => {
                assert!(d.reason.contains("no value"), "{}", d.reason);
                Ok(())
            }
        }
    }

    #[test]
    fn profile_topics_decode_keyed_upserts_and_tombstones() -> Result<(), String> {
        let c = config("[[topics]]\nname = \"crm\"");
        let t = resolve_profile_topics("sources.profiles", &c)?;
        let up = t[0]
            .decoder
            .decode(
                "profiles:crm/1",
                3,
                12,
                Some(b"42"),
                Some(br#"{"tier":"gold"}"#),
            )
            .item
            .map_err(|d| d.reason)?;
        assert_eq!((up.user_id, up.seq), (42, (12, 3)));
        assert_eq!(up.profile.and_then(|p| p.tier).as_deref(), Some("gold"));
        let del = t[0]
            .decoder
            .decode("profiles:crm/1", 3, 13, Some(b"42"), None);
        assert_eq!(del.item.map_err(|d| d.reason)?.profile, None);
        match t[0]
            .decoder
            .decode("profiles:crm/1", 3, 14, Some(b"7"), Some(b"{"))
            .item
        {
            Ok(u) => return Err(format!("decoded {u:?}")),
            Err(d) => {
                assert_eq!((d.source.as_str(), d.position), ("profiles:crm/1", 14));
                assert_eq!(d.raw, b"7\t{", "key and value are kept");
                assert!(d.reason.contains("invalid JSON"), "{}", d.reason);
            }
        }
        let csv = config("[[topics]]\nname = \"crm\"\nformat = \"csv\"");
        let e = resolve_profile_topics("sources.profiles", &csv)
            .err()
            .unwrap_or_default();
        assert!(e.contains("sources.profiles.topics[0].format"), "{e}");
        let chan = config("[[topics]]\nname = \"crm\"\nchannel = \"app\"");
        let e = resolve_profile_topics("sources.profiles", &chan)
            .err()
            .unwrap_or_default();
        assert!(e.contains("apply to clickstream topics"), "{e}");
        Ok(())
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |t: &str| topics(t).err().unwrap_or_default();
        assert!(err("[[topics]]\nname = \"\"").contains("sources.clickstream.topics[0].name"));
        assert!(err("[[topics]]\nname = \"a\"\n[[topics]]\nname = \"a\"")
            .contains("topics[1].name `a` is listed twice"));
        assert!(
            err("[[topics]]\nname = \"a\"\nchannel = \"tv\"").contains("topics[0].channel is `tv`")
        );
        assert!(
            err("[[topics]]\nname = \"a\"\nformat = \"csv\"\ncsv_header = \"a,b\"")
                .contains("topics[0].csv_header")
        );
        let no_topics = KafkaSource::new("clickstream", config("topics = []"));
        assert!(no_topics
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("sources.clickstream.topics is empty"));
        let mut c = config("start = \"timestamp\"\n[[topics]]\nname = \"a\"");
        let e = KafkaSource::new("clickstream", c.clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("start_timestamp is not set"), "{e}");
        c.start = StartAt::Group;
        let e = KafkaSource::new("clickstream", c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("group_id is not set"), "{e}");
    }

    #[test]
    fn unreachable_brokers_fail_start_up_after_the_metadata_timeout() {
        let mut c = config("metadata_timeout_ms = 300\n[[topics]]\nname = \"a\"");
        c.properties
            .insert("socket.connection.setup.timeout.ms".into(), "1000".into());
        let e = KafkaSource::new("clickstream", c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("topic `a` on 127.0.0.1:1"), "{e}");
        assert!(e.contains("metadata_timeout_ms"), "{e}");
    }

    #[test]
    fn start_timestamps_parse_as_text_or_millis() {
        assert_eq!(
            parse_start_timestamp(&toml::Value::Integer(1_572_566_400_000)),
            Ok(1_572_566_400_000)
        );
        assert_eq!(
            parse_start_timestamp(&toml::Value::String("2019-11-01T00:00:00Z".into())),
            Ok(1_572_566_400_000)
        );
        assert!(
            parse_start_timestamp(&toml::Value::String("yesterday".into()))
                .err()
                .unwrap_or_default()
                .contains("yesterday")
        );
        assert!(parse_start_timestamp(&toml::Value::Boolean(true)).is_err());
    }
}
