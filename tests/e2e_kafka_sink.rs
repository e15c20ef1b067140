//! End to end: the real `customer-analytics` binary writes every table to a real broker
//! (tansu, on loopback) as keyed changelog topics. Read back from the earliest offset and
//! compacted, each topic equals the table the file sink writes for the same input; the
//! headers number each epoch's changes in key order; deletes are tombstones.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use cap_connectors::kafka::KafkaChangelogSink;
use cap_engine::config::KafkaSinkConfig;
use cap_engine::sink::{Change, TableWriter};
use cap_tests::kafka_read::{compact, python_reader, read_topic, topic_config, Record};
use cap_tests::tansu::Tansu;
use cap_tests::{generate_csv, read_jsonl, run_on_csv, snapshot_tables};
use serde_json::Value;

/// Per partition: epochs never go back, and within an epoch `cap.seq` increases.
fn ensure_ordered(topic: &str, records: &[Record]) -> Result<()> {
    let mut last: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    for r in records {
        if let Some(prev) = last.insert(r.partition, (r.epoch, r.seq)) {
            ensure!(
                prev < (r.epoch, r.seq),
                "{topic} partition {}: (epoch, seq) {prev:?} then {:?}",
                r.partition,
                (r.epoch, r.seq)
            );
        }
    }
    Ok(())
}

#[test]
fn every_table_topic_compacts_to_the_file_snapshot() -> Result<()> {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 8_000, 17, &[])?;
    let files = dir.path().join("files");
    run_on_csv(&csv, &files, "2", "700", &[])?;

    let state = dir.path().join("kafka");
    let brokers = format!("sinks.kafka.brokers={}", broker.brokers);
    run_on_csv(
        &csv,
        &state,
        "2",
        "700",
        &[
            "--set",
            "sinks.kind=kafka",
            "--set",
            &brokers,
            "--set",
            "sinks.kafka.topic_prefix=test.",
        ],
    )?;

    let tables = snapshot_tables(&files)?;
    ensure!(tables.len() >= 14, "expected every table, got {tables:?}");
    let mut messages = 0;
    let mut tombstones = 0;
    for table in &tables {
        let topic = format!("test.{table}");
        let records = read_topic(&broker.brokers, &topic)
            .with_context(|| format!("reading {topic}; broker log: {}", broker.log_text()))?;
        ensure_ordered(&topic, &records)?;
        messages += records.len();
        tombstones += records.iter().filter(|r| r.value.is_none()).count();
        let compacted: BTreeSet<String> = compact(&records)?
            .into_values()
            .map(|v| v.to_string())
            .collect();
        let snapshot: BTreeSet<String> = read_jsonl(&files.join(format!("{table}.jsonl")))?
            .into_iter()
            .map(|v: Value| v.to_string())
            .collect();
        ensure!(
            compacted == snapshot,
            "{topic}: compacted topic ({} rows) differs from the file snapshot ({} rows); \
             only in the topic: {:?}; only in the file: {:?}",
            compacted.len(),
            snapshot.len(),
            compacted.difference(&snapshot).take(3).collect::<Vec<_>>(),
            snapshot.difference(&compacted).take(3).collect::<Vec<_>>()
        );
    }
    // Not vacuous: thousands of changes (this input has no deletes: the next test has).
    ensure!(
        messages > 2_000,
        "{messages} messages, {tombstones} tombstones"
    );
    let read_by_python = python_reader(&broker.brokers, "test.", &files, &tables, &[])?;
    ensure!(
        read_by_python == messages,
        "the Python reader saw {read_by_python} messages, the Rust reader {messages}"
    );
    Ok(())
}

#[test]
fn deletes_are_tombstones_and_headers_number_each_epoch() -> Result<()> {
    let broker = Tansu::start()?;
    let cfg = KafkaSinkConfig {
        brokers: broker.brokers.clone(),
        topic_prefix: "unit.".into(),
        ..KafkaSinkConfig::default()
    };
    let mut sink = KafkaChangelogSink::open("t", &cfg)?;
    let change = |k: u32, v: Option<u32>| Change {
        key: format!("{{\"k\":{k}}}"),
        row: v.map(|v| format!("{{\"k\":{k},\"v\":{v}}}")),
        packed: None,
    };
    // Epoch 0 inserts 200 keys; epoch 1 deletes the even ones and updates the odd ones.
    sink.write_epoch(0, &(0..200).map(|k| change(k, Some(k))).collect::<Vec<_>>())?;
    sink.write_epoch(
        1,
        &(0..200)
            .map(|k| change(k, (k % 2 == 1).then_some(k + 1000)))
            .collect::<Vec<_>>(),
    )?;
    sink.close()?;
    let records = read_topic(&broker.brokers, "unit.t")?;
    ensure!(records.len() == 400, "{} messages", records.len());
    ensure_ordered("unit.t", &records)?;
    let tombstones: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.value.is_none())
        .map(|r| r.key.as_str())
        .collect();
    ensure!(
        tombstones.len() == 100 && tombstones.contains("{\"k\":0}"),
        "{tombstones:?}"
    );
    let rows = compact(&records)?;
    let expected: BTreeMap<String, Value> = (0..200)
        .filter(|k| k % 2 == 1)
        .map(|k| {
            (
                format!("{{\"k\":{k}}}"),
                serde_json::json!({"k": k, "v": k + 1000}),
            )
        })
        .collect();
    ensure!(rows == expected, "compacted: {rows:?}");
    // A key always lands on the same partition (partitioned by key).
    let mut partition_of: BTreeMap<&str, i32> = BTreeMap::new();
    for r in &records {
        let p = *partition_of.entry(r.key.as_str()).or_insert(r.partition);
        ensure!(
            p == r.partition,
            "key {} on partitions {p} and {}",
            r.key,
            r.partition
        );
    }
    ensure!(
        partition_of.values().collect::<BTreeSet<_>>().len() > 1,
        "every key on one partition"
    );
    // The sink created the topic compacted, so the broker keeps each key's latest row.
    let policy = topic_config(&broker.brokers, "unit.t", "cleanup.policy")?;
    ensure!(
        policy.as_deref() == Some("compact"),
        "cleanup.policy of unit.t: {policy:?}"
    );
    Ok(())
}

/// Epoch `e` of a 60-key table: rows change with `e`, every fifth key leaves.
fn epoch_changes(e: u64) -> Vec<Change> {
    (0..60u64)
        .map(|k| Change {
            key: format!("{{\"k\":{k}}}"),
            row: (k % 5 != e % 5).then(|| format!("{{\"k\":{k},\"v\":{}}}", e * 100 + k)),
            packed: None,
        })
        .collect()
}

/// `(partition, key, value, epoch, seq)` of every message, sorted.
fn messages(records: &[Record]) -> Vec<(i32, String, Option<String>, u64, u64)> {
    let mut out: Vec<_> = records
        .iter()
        .map(|r| (r.partition, r.key.clone(), r.value.clone(), r.epoch, r.seq))
        .collect();
    out.sort();
    out
}

#[test]
fn a_resumed_sink_publishes_every_change_once_and_partitions_like_librdkafka() -> Result<()> {
    let broker = Tansu::start()?;
    let cfg = |prefix: &str| KafkaSinkConfig {
        brokers: broker.brokers.clone(),
        topic_prefix: prefix.into(),
        create_partitions: 3,
        ..KafkaSinkConfig::default()
    };
    // An uninterrupted run.
    let mut straight = KafkaChangelogSink::open("t", &cfg("straight."))?;
    straight.begin(false)?;
    for e in 0..8 {
        straight.write_epoch(e, &epoch_changes(e))?;
    }
    straight.close()?;

    // A run that crashed while publishing epoch 5: only its first 20 changes went out.
    let mut first = KafkaChangelogSink::open("t", &cfg("resume."))?;
    first.begin(false)?;
    for e in 0..5 {
        first.write_epoch(e, &epoch_changes(e))?;
    }
    first.write_epoch(5, &epoch_changes(5)[..20])?;
    first.close()?;
    // The restarted run restored epoch 2 and replays from epoch 3 on.
    let mut second = KafkaChangelogSink::open("t", &cfg("resume."))?;
    second.begin(true)?;
    for e in 3..8 {
        second.write_epoch(e, &epoch_changes(e))?;
    }
    second.close()?;

    let resumed = read_topic(&broker.brokers, "resume.t")?;
    ensure_ordered("resume.t", &resumed)?;
    let expected = read_topic(&broker.brokers, "straight.t")?;
    ensure!(
        expected.len() == 8 * 60,
        "{} messages straight",
        expected.len()
    );
    ensure!(
        messages(&resumed) == messages(&expected),
        "the resumed topic differs from the uninterrupted one: {} messages vs {}",
        resumed.len(),
        expected.len()
    );

    // Partitions set by the sink are those librdkafka's murmur2 partitioner picks.
    let mut plain = KafkaChangelogSink::open("t", &cfg("plain."))?;
    plain.write_epoch(0, &epoch_changes(0))?;
    plain.close()?;
    let by_librdkafka: BTreeMap<String, i32> = read_topic(&broker.brokers, "plain.t")?
        .into_iter()
        .map(|r| (r.key, r.partition))
        .collect();
    let by_cap: BTreeMap<String, i32> = expected
        .iter()
        .filter(|r| r.epoch == 0)
        .map(|r| (r.key.clone(), r.partition))
        .collect();
    ensure!(
        by_cap == by_librdkafka,
        "partitions differ: {by_cap:?} vs {by_librdkafka:?}"
    );
    ensure!(
        by_cap.values().collect::<BTreeSet<_>>().len() == 3,
        "keys on fewer than 3 partitions"
    );
    Ok(())
}

#[test]
fn an_unreachable_broker_list_is_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 1_000, 3, &[])?;
    let bin = cap_tests::job_binary()?;
    let out = std::process::Command::new(&bin)
        .args(["run", "--input"])
        .arg(&csv)
        .arg("--output")
        .arg(dir.path().join("out"))
        .args([
            "--no-console",
            "--set",
            "sinks.kind=kafka",
            "--set",
            "sinks.kafka.brokers=",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the job should refuse an empty broker list"
    );
    ensure!(stderr.contains("sinks.kafka.brokers"), "stderr: {stderr}");
    Ok(())
}
