//! Chaos over Kafka: the real `customer-analytics` binary, fed from a real broker (tansu on
//! loopback) and writing every table to it as changelog topics, runs under `supervise`
//! with checkpoints every 150 ms; its process is killed with SIGKILL three times, each time
//! once a checkpoint newer than at the previous kill is complete, so every restart
//! restores a checkpoint, seeks the input topic and replays the epochs after it.
//!
//! Afterwards every output topic, read from the earliest offset by an independent client
//! (Python confluent-kafka, `tests/read_topics.py`) and compacted, equals the table of an
//! uninterrupted run over the same events; and in every partition the `(cap.epoch,
//! cap.seq)` headers strictly increase, so no change was published twice.
//!
//! Ignored for now (`cargo nextest run --run-ignored all -E 'binary(e2e_kafka_chaos)'` runs
//! it): with tansu 0.6, the broker these tests can install, the restarted job's consumer
//! waits forever for the offsets of the partition the killed consumer was fetching
//! (ListOffsets is never answered; seen on every run, 2026-12-03), and restarting tansu
//! over its SQLite storage right after the kill leaves it not answering ApiVersions. With
//! group offset commits off (`commit_interval_ms = 0`) it hangs the same way, and the
//! restarted job's sinks time out reading topic metadata too: the broker as a whole stops
//! answering after the kill, not only for the partition (tansu's SQLite engine serves
//! every request from a small pool of connections, and writes in `IMMEDIATE`
//! transactions; a handler of the killed client's requests holding one is the suspect). The
//! same kills with file input and output pass (`tests/supervisor.rs`), and the Kafka sink's
//! resume is tested against tansu without a kill (`tests/e2e_kafka_sink.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use cap_tests::kafka_read::{python_reader, read_topic, replay};
use cap_tests::supervise::{newest_checkpoint, supervise_with_kills, KillWhen};
use cap_tests::tansu::Tansu;
use cap_tests::{generate_csv, run_on_csv, snapshot_tables};

/// A config file binding the clickstream to `topic` (read to its end) and every table to
/// changelog topics prefixed `chaos.`.
fn kafka_config(dir: &Path, brokers: &str, topic: &str) -> Result<PathBuf> {
    let path = dir.join("chaos.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[sources.clickstream]
kind = "kafka"
brokers = "{brokers}"
stop = "end"

[[sources.clickstream.topics]]
name = "{topic}"
format = "json"

[sinks]
kind = "kafka"

[sinks.kafka]
brokers = "{brokers}"
topic_prefix = "chaos."
"#
        ),
    )?;
    Ok(path)
}

#[test]
#[ignore = "blocked by tansu 0.6: after a consumer is killed with SIGKILL, the broker stops answering ListOffsets for the partition it was fetching (and a restarted broker stops answering ApiVersions); see the module docs"]
fn kills_during_a_kafka_fed_run_leave_every_topic_equal_to_an_uninterrupted_run() -> Result<()> {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 60_000, 31, &[])?;
    let files = dir.path().join("files");
    run_on_csv(&csv, &files, "2", "300", &[])?;
    replay(&broker.brokers, "clicks", &csv, "json", "3")?;

    let config = kafka_config(dir.path(), &broker.brokers, "clicks")?;
    let out = dir.path().join("chaos");
    let when: KillWhen = |state, before| newest_checkpoint(state) > before;
    let input = vec!["--config".to_owned(), config.display().to_string()];
    let brokers = broker.brokers.clone();
    let text = supervise_with_kills(&input, &out, &["--checkpoint-ms", "150"], 3, when);
    let text = text.with_context(|| format!("broker log: {}", broker.log_text()))?;
    ensure!(
        text.matches("restoring").count() >= 3,
        "not every restart restored a checkpoint:\n{text}"
    );

    let tables = snapshot_tables(&files)?;
    ensure!(tables.len() >= 14, "expected every table, got {tables:?}");
    let mut messages = 0;
    for table in &tables {
        let topic = format!("chaos.{table}");
        let records = read_topic(&brokers, &topic)?;
        let mut last: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
        for r in &records {
            if let Some(prev) = last.insert(r.partition, (r.epoch, r.seq)) {
                ensure!(
                    prev < (r.epoch, r.seq),
                    "{topic} partition {}: (epoch, seq) {prev:?} then {:?}: published twice",
                    r.partition,
                    (r.epoch, r.seq)
                );
            }
        }
        messages += records.len();
    }
    ensure!(messages > 2_000, "only {messages} messages");
    // The independent client compacts each topic and compares it with the uninterrupted
    // run's table.
    let read_by_python = python_reader(&brokers, "chaos.", &files, &tables, &[])?;
    ensure!(
        read_by_python == messages,
        "the Python reader saw {read_by_python} messages, the Rust reader {messages}"
    );
    Ok(())
}
