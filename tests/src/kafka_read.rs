//! Reads output topics back the way a downstream system would: a plain consumer from the
//! earliest offset to the end of every partition, folded as a compacted topic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// One message of an output topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition it was read from.
    pub partition: i32,
    /// The key (primary-key JSON).
    pub key: String,
    /// The row JSON, `None` for a tombstone.
    pub value: Option<String>,
    /// `cap.epoch` header.
    pub epoch: u64,
    /// `cap.seq` header.
    pub seq: u64,
}

/// One message as consumed, bytes as they are (for topics written by other producers than
/// the changelog sink, e.g. the `replay` command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Every message of `topic` as changelog records (`cap.epoch`/`cap.seq` headers, text
/// keys), per partition in offset order.
pub fn read_topic(brokers: &str, topic: &str) -> Result<Vec<Record>> {
    read_messages(brokers, topic)?
        .into_iter()
        .map(|m| {
            let header = |name: &str| -> Result<u64> {
                let (_, value) = m
                    .headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .with_context(|| format!("no {name} header"))?;
                let value = value.as_deref().context("empty header")?;
                Ok(std::str::from_utf8(value)?.parse()?)
            };
            Ok(Record {
                partition: m.partition,
                key: String::from_utf8(m.key.clone().context("message without a key")?)?,
                value: m
                    .value
                    .as_deref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                epoch: header("cap.epoch")?,
                seq: header("cap.seq")?,
            })
        })
        .collect()
}

/// Every message of `topic`, per partition in offset order.
pub fn read_messages(brokers: &str, topic: &str) -> Result<Vec<RawMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cap-tests-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    // One partition at a time: tansu 0.6 serves a fetch of several partitions from one
    // of them only (seen here: two of three partitions never delivered in 60 s).
    let mut out = Vec::new();
    for p in partitions {
        let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next < end {
            if Instant::now() > deadline {
                bail!("reading {topic} partition {p}: at offset {next} of {end} after 60 s");
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m?;
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            out.push(RawMessage {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
            next = m.offset() + 1;
        }
    }
    Ok(out)
}

/// The rows a compacted topic keeps: per key its last value, tombstoned keys removed.
pub fn compact(records: &[Record]) -> Result<BTreeMap<String, Value>> {
    let mut rows = BTreeMap::new();
    for r in records {
        match &r.value {
            Some(v) => {
                rows.insert(r.key.clone(), serde_json::from_str(v)?);
            }
            None => {
                rows.remove(&r.key);
            }
        }
    }
    Ok(rows)
}

/// Has `tests/read_topics.py` (Python confluent-kafka: another client, its own librdkafka)
/// read every table's topic, compact it and compare it with the file snapshot; returns the
/// number of messages it read. `properties` are librdkafka properties (security).
pub fn python_reader(
    brokers: &str,
    prefix: &str,
    files: &Path,
    tables: &BTreeSet<String>,
    properties: &[(&str, &str)],
) -> Result<usize> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("read_topics.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--brokers", brokers, "--prefix", prefix, "--files"])
        .arg(files)
        .args(
            properties
                .iter()
                .flat_map(|(k, v)| ["--property".to_owned(), format!("{k}={v}")]),
        )
        .args(tables)
        .output()
        .context("running python3 tests/read_topics.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "tests/read_topics.py failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summaries: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("tests/read_topics.py output: {stdout}"))?;
    ensure!(
        summaries.len() == tables.len(),
        "tests/read_topics.py checked {} of {} tables: {stdout}",
        summaries.len(),
        tables.len()
    );
    summaries
        .iter()
        .map(|s| {
            s["messages"]
                .as_u64()
                .map(|n| n as usize)
                .with_context(|| format!("no message count in {s}"))
        })
        .sum()
}

/// The value of the topic config `name` of `topic` as the broker describes it (DescribeConfigs),
/// `None` when the broker does not list it.
pub fn topic_config(brokers: &str, topic: &str, name: &str) -> Result<Option<String>> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating an admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = runtime
        .block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts))
        .with_context(|| format!("describing the configs of {topic}"))?;
    for result in results {
        let resource = result.map_err(|e| anyhow::anyhow!("describing {topic}: {e}"))?;
        if let Some(entry) = resource.get(name) {
            return Ok(entry.value.clone());
        }
    }
    Ok(None)
}

/// Replays `file` into `topic` with the `replay` command.
pub fn replay(
    brokers: &str,
    topic: &str,
    file: &Path,
    format: &str,
    partitions: &str,
) -> Result<()> {
    crate::run_job(&[
        "replay",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--input",
        file.to_str().context("path")?,
        "--format",
        format,
        "--key-field",
        "user_id",
        "--create-partitions",
        partitions,
        "--no-progress",
    ])?;
    Ok(())
}
