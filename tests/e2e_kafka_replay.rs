//! End to end: the real `customer-analytics replay` command sends files to a real broker
//! (tansu, on loopback), and a plain consumer reads back exactly what the file holds: the
//! same events (re-encoded), each key on one partition, bad lines as their raw bytes.
//! Pacing is unit-tested in `replay_cmd.rs` (no timed assertions here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use cap_connectors::clickstream::csv::CsvDecoder;
use cap_connectors::clickstream::encode::CSV_HEADER_EXTENDED;
use cap_connectors::clickstream::json::JsonDecoder;
use cap_connectors::clickstream::{DecodeOptions, Event};
use cap_tests::kafka_read::{read_messages, RawMessage};
use cap_tests::tansu::Tansu;
use cap_tests::{generate_csv, job_binary, run_job};

/// The data lines of a CSV file (header and blank lines left out), without their newline.
fn data_lines(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The CSV file's lines, each decoded (`None`: the line does not decode).
fn decode_csv(path: &Path) -> Result<Vec<(Vec<u8>, Option<Event>)>> {
    let bytes = std::fs::read(path)?;
    let header = bytes.split(|&b| b == b'\n').next().context("empty file")?;
    let decoder = CsvDecoder::from_header(header, DecodeOptions::default())?;
    Ok(data_lines(path)?
        .into_iter()
        .map(|l| {
            let event = decoder.decode(&l).ok();
            (l, event)
        })
        .collect())
}

/// Runs `replay` with `args` against `broker`, returning its stderr (the summary line).
fn replay(broker: &Tansu, args: &[&str]) -> Result<String> {
    let mut all = vec!["replay", "--brokers", &broker.brokers, "--no-progress"];
    all.extend_from_slice(args);
    let out = run_job(&all).with_context(|| format!("broker log: {}", broker.log_text()))?;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn value(m: &RawMessage) -> Result<&[u8]> {
    m.value.as_deref().context("message without a value")
}

#[test]
fn a_replayed_file_reads_back_as_its_events_each_key_on_one_partition() -> Result<()> {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 1_500, 23, &[])?;
    let summary = replay(
        &broker,
        &[
            "--topic",
            "clicks",
            "--input",
            csv.to_str().context("path")?,
            "--format",
            "json",
            "--key-field",
            "category_id",
            "--create-partitions",
            "3",
        ],
    )?;
    ensure!(
        summary.contains("1500 events sent") && summary.contains("0 delivery failures"),
        "{summary}"
    );

    let mut expected: Vec<Event> = decode_csv(&csv)?
        .into_iter()
        .map(|(line, e)| e.with_context(|| String::from_utf8_lossy(&line).into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        expected.len() == 1_500,
        "{} events in the file",
        expected.len()
    );
    let messages = read_messages(&broker.brokers, "clicks")?;
    ensure!(
        messages.len() == expected.len(),
        "{} messages for {} events",
        messages.len(),
        expected.len()
    );

    let json = JsonDecoder::new(DecodeOptions::default());
    let mut got = Vec::with_capacity(messages.len());
    let mut partitions_of: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    for m in &messages {
        let event = json.decode(value(m)?)?;
        let key = m.key.clone().context("message without a key")?;
        ensure!(
            key == event.category_id.to_string().into_bytes(),
            "key {} for category {}",
            String::from_utf8_lossy(&key),
            event.category_id
        );
        partitions_of.entry(key).or_default().insert(m.partition);
        got.push(event);
    }
    got.sort();
    expected.sort();
    ensure!(got == expected, "the topic's events differ from the file's");
    let split: Vec<_> = partitions_of.iter().filter(|(_, p)| p.len() > 1).collect();
    ensure!(split.is_empty(), "keys on several partitions: {split:?}");
    // Not vacuous: several keys per partition, every partition used (1,500 events touch
    // about a dozen categories: sessions stay in their users' favourite ones).
    let used: BTreeSet<i32> = messages.iter().map(|m| m.partition).collect();
    ensure!(
        partitions_of.len() >= 6 && used.len() == 3,
        "{} keys over partitions {used:?}",
        partitions_of.len()
    );
    Ok(())
}

#[test]
fn bad_lines_are_sent_raw_and_raw_format_sends_every_line_byte_exact() -> Result<()> {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 300, 5, &[])?;
    // Three lines no decoder accepts: an unknown event type, junk, and invalid UTF-8.
    let mut bytes = std::fs::read(&csv)?;
    bytes.extend_from_slice(b"2019-11-01 00:00:02 UTC,click,1,2,,,1.00,3,s\n");
    bytes.extend_from_slice(b"not a record at all\n");
    bytes.extend_from_slice(b"\xff\xfe broken,bytes\n");
    std::fs::write(&csv, &bytes)?;
    let lines = decode_csv(&csv)?;
    let bad = lines.iter().filter(|(_, e)| e.is_none()).count();
    ensure!(
        lines.len() == 303 && bad == 3,
        "{} lines, {bad} bad",
        lines.len()
    );
    let path = csv.to_str().context("path")?;

    // raw: every line as it is, in order (one partition), keyed when it decodes.
    let summary = replay(
        &broker,
        &[
            "--topic",
            "raw",
            "--input",
            path,
            "--format",
            "raw",
            "--create-partitions",
            "1",
        ],
    )?;
    ensure!(
        summary.contains("3 undecodable lines sent raw"),
        "{summary}"
    );
    let messages = read_messages(&broker.brokers, "raw")?;
    ensure!(messages.len() == lines.len(), "{} messages", messages.len());
    for (m, (line, event)) in messages.iter().zip(&lines) {
        ensure!(
            value(m)? == line.as_slice(),
            "sent {:?}, the file has {:?}",
            String::from_utf8_lossy(value(m)?),
            String::from_utf8_lossy(line)
        );
        let key = event.as_ref().map(|e| e.user_id.to_string().into_bytes());
        ensure!(m.key == key, "key {:?} for line {:?}", m.key, line);
    }

    // csv: decodable lines re-encoded with the extended columns, bad lines still raw.
    replay(
        &broker,
        &[
            "--topic",
            "csv",
            "--input",
            path,
            "--format",
            "csv",
            "--create-partitions",
            "1",
        ],
    )?;
    let messages = read_messages(&broker.brokers, "csv")?;
    ensure!(messages.len() == lines.len(), "{} messages", messages.len());
    let extended =
        CsvDecoder::from_header(CSV_HEADER_EXTENDED.as_bytes(), DecodeOptions::default())?;
    for (m, (line, event)) in messages.iter().zip(&lines) {
        match event {
            Some(e) => ensure!(
                extended.decode(value(m)?)? == *e && !value(m)?.ends_with(b"\n"),
                "{:?} is not the CSV of {e:?}",
                String::from_utf8_lossy(value(m)?)
            ),
            None => ensure!(value(m)? == line.as_slice() && m.key.is_none()),
        }
    }
    Ok(())
}

/// Runs the binary with `args`, expecting it to fail: its stderr.
fn failing(args: &[&str]) -> Result<String> {
    let out = Command::new(job_binary()?)
        .args(args)
        .env_remove("RUST_LOG")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "{args:?} succeeded: {stderr}");
    Ok(stderr)
}

/// `replay` to a broker that is not there (nothing listens on port 9), then `extra`.
fn offline<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["replay", "--brokers", "127.0.0.1:9", "--topic", "t"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn usage_errors_are_clear_and_fail_before_connecting() -> Result<()> {
    let err = failing(&offline(&["--events", "10", "--key-field", "sku"]))?;
    for field in [
        "event_time",
        "event_type",
        "product_id",
        "category_id",
        "category_code",
        "brand",
        "user_id",
        "user_session",
        "ip",
        "channel",
        "country",
        "none",
    ] {
        ensure!(err.contains(field), "{field} not listed in: {err}");
    }
    ensure!(err.contains("sku"), "{err}");

    let err = failing(&offline(&["--events", "10", "--format", "raw"]))?;
    ensure!(
        err.contains("--format raw") && err.contains("--input"),
        "{err}"
    );

    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.csv");
    let missing = missing.to_str().context("path")?;
    let err = failing(&offline(&["--input", missing]))?;
    ensure!(
        err.contains(missing) && err.contains("No such file"),
        "{err}"
    );

    let err = failing(&["replay", "--topic", "t", "--events", "10"])?;
    ensure!(err.contains("--brokers"), "{err}");
    Ok(())
}
