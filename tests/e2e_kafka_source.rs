//! End to end: the real `customer-analytics` binary reads its clickstream from a real broker
//! (tansu, on loopback): two topics (JSON and CSV values, one with a channel) of several
//! partitions, spread over two workers and over two processes. Every table equals the table
//! the same job computes from the file; every bad record is a dead letter naming its topic,
//! partition and offset; the epoch log covers every offset of every partition exactly once;
//! and a broker (SQLite storage) killed and restarted in the middle of a checkpointed run
//! loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cap_tests::kafka_read::replay;
use cap_tests::tansu::Tansu;
use cap_tests::{append_lines, field_text, generate_csv, job_binary, read_jsonl, run_job};
use serde_json::Value;

/// Lines that no decoder accepts; each must come out as one dead letter.
const BAD: [&str; 3] = [
    "2019-11-01 00:00:00 UTC,teleport,1,2,,,1.00,3,",
    "not,a,record",
    "2019-11-01 00:00:00 UTC,view,1,2,,,abc,3,",
];

/// Splits `csv` into two CSV files (every third line to the second), bad lines in both.
fn split(csv: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(csv)?;
    let mut lines = text.lines();
    let header = lines.next().context("empty csv")?;
    let (a, b) = (dir.join("web.csv"), dir.join("app.csv"));
    let mut fa = std::fs::File::create(&a)?;
    let mut fb = std::fs::File::create(&b)?;
    writeln!(fa, "{header}")?;
    writeln!(fb, "{header}")?;
    for (i, line) in lines.enumerate() {
        if i % 3 == 2 {
            writeln!(fb, "{line}")?;
        } else {
            writeln!(fa, "{line}")?;
        }
    }
    drop((fa, fb));
    append_lines(&a, &BAD[..2])?;
    append_lines(&b, &BAD[2..])?;
    Ok((a, b))
}

/// A config file binding the clickstream to the two topics, read to their end.
fn kafka_config(dir: &Path, brokers: &str) -> Result<PathBuf> {
    let path = dir.join("kafka.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[sources.clickstream]
kind = "kafka"
brokers = "{brokers}"
stop = "end"
group_id = "cap-e2e"
commit_interval_ms = 200

[[sources.clickstream.topics]]
name = "web"
format = "json"

[[sources.clickstream.topics]]
name = "app"
format = "csv"
channel = "app"
"#
        ),
    )?;
    Ok(path)
}

/// The snapshot tables (not changelogs) in `out`, by name.
fn snapshots(out: &Path) -> Result<BTreeMap<String, Vec<Value>>> {
    let mut tables = BTreeMap::new();
    for entry in std::fs::read_dir(out)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(t) = name.strip_suffix(".jsonl") {
            if !t.ends_with(".changelog") {
                tables.insert(t.to_owned(), read_jsonl(&out.join(&name))?);
            }
        }
    }
    Ok(tables)
}

/// Every table but `dead_letters` equals the file run's; the dead letters are the bad lines.
fn ensure_same_as_file(files: &Path, kafka: &Path) -> Result<()> {
    let expected = snapshots(files)?;
    let got = snapshots(kafka)?;
    ensure!(expected.len() >= 14, "file run wrote {:?}", expected.keys());
    for (table, rows) in &expected {
        if table == "dead_letters" {
            continue;
        }
        let mine = got
            .get(table)
            .with_context(|| format!("{table} not written"))?;
        ensure!(
            mine.len() == rows.len(),
            "{table}: {} rows from kafka, {} from the file",
            mine.len(),
            rows.len()
        );
        ensure!(
            mine == rows,
            "{table}: rows differ between the kafka and the file run"
        );
    }
    let dead = got
        .get("dead_letters")
        .context("dead_letters not written")?;
    ensure!(dead.len() == BAD.len(), "dead letters: {dead:?}");
    let mut raws = BTreeSet::new();
    for d in dead {
        let source = field_text(d, "source")?;
        ensure!(
            source.starts_with("clickstream:web/") || source.starts_with("clickstream:app/"),
            "dead letter source {source}"
        );
        raws.insert(field_text(d, "raw")?);
    }
    let bad: BTreeSet<String> = BAD.iter().map(|s| s.to_string()).collect();
    ensure!(raws == bad, "dead letters carry {raws:?}, expected {bad:?}");
    Ok(())
}

/// The last recorded position of every partition over every worker's epoch log
/// (`epochs/run-N/worker-W.jsonl`), and that each partition is read by exactly one worker.
fn final_positions(state: &Path) -> Result<BTreeMap<String, u64>> {
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut files = Vec::new();
    for run in std::fs::read_dir(state.join("epochs"))? {
        for entry in std::fs::read_dir(run?.path())? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "jsonl") {
                files.push(path);
            }
        }
    }
    ensure!(!files.is_empty(), "no epoch log under {}", state.display());
    for path in files {
        let worker = path.display().to_string();
        for line in std::io::BufReader::new(std::fs::File::open(&path)?).lines() {
            let rec: Value = serde_json::from_str(&line?)?;
            for pos in rec["positions"].as_array().context("positions")? {
                let label = pos[0].as_str().context("label")?.to_owned();
                let at = pos[1].as_u64().context("position")?;
                if let Some(prev) = owner.insert(label.clone(), worker.clone()) {
                    ensure!(prev == worker, "{label} read by {prev} and {worker}");
                }
                let before = last.insert(label.clone(), at).unwrap_or(0);
                ensure!(
                    before <= at,
                    "{label}: position went back from {before} to {at}"
                );
            }
        }
    }
    Ok(last)
}

/// Messages per partition label (`topic/p`), counted from the topics themselves.
fn topic_ends(brokers: &str) -> Result<BTreeMap<String, u64>> {
    let mut ends = BTreeMap::new();
    for topic in ["web", "app"] {
        for m in cap_tests::kafka_read::read_messages(brokers, topic)? {
            *ends.entry(format!("{topic}/{}", m.partition)).or_insert(0) += 1;
        }
    }
    Ok(ends)
}

/// The shared set-up: `events` generated events (seed `seed`) plus the bad lines, fed to the
/// `web` (JSON, 3 partitions) and `app` (CSV, 2 partitions) topics, and the file run of the
/// same records into `<dir>/files` with `epoch_records`-record epochs.
fn feed_topics_and_run_file(
    broker: &Tansu,
    dir: &Path,
    events: u64,
    seed: u64,
    epoch_records: &str,
) -> Result<PathBuf> {
    let csv = generate_csv(dir, events, seed, &[])?;
    let all = dir.join("all.csv");
    std::fs::copy(&csv, &all)?;
    append_lines(&all, &BAD)?;
    let (web, app) = split(&csv, dir)?;
    replay(&broker.brokers, "web", &web, "json", "3")?;
    replay(&broker.brokers, "app", &app, "csv", "2")?;
    let files = dir.join("files");
    cap_tests::run_on_csv(&all, &files, "2", epoch_records, &[])?;
    Ok(files)
}

#[test]
fn two_topics_over_workers_and_processes_equal_the_file_run() -> Result<()> {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let files = feed_topics_and_run_file(&broker, dir.path(), 3_000, 29, "400")?;
    let config = kafka_config(dir.path(), &broker.brokers)?;
    let config = config.to_str().context("path")?;

    // Two workers in one process: five partitions spread over both.
    let kafka = dir.path().join("kafka");
    run_job(&[
        "run",
        "--config",
        config,
        "--output",
        kafka.to_str().context("path")?,
        "--workers",
        "2",
        "--epoch-records",
        "400",
        "--no-console",
    ])
    .with_context(|| format!("broker log: {}", broker.log_text()))?;
    ensure_same_as_file(&files, &kafka)?;
    // The epoch log covers every message of every partition, each on one worker.
    let ends = topic_ends(&broker.brokers)?;
    ensure!(ends.len() == 5, "partitions: {ends:?}");
    ensure!(final_positions(&kafka.join("_state"))? == ends);

    // Two processes of one worker each.
    let two = dir.path().join("two");
    cap_tests::run_two_processes(
        dir.path(),
        &[
            "--config",
            config,
            "--output",
            two.to_str().context("path")?,
            "--epoch-records",
            "400",
            "--no-console",
        ],
    )?;
    ensure_same_as_file(&files, &two)?;
    ensure!(final_positions(&two.join("_state"))? == ends);
    Ok(())
}

/// The `cap_source_records_total` series of a job's metrics endpoint, summed.
fn records_read(addr: &str) -> Option<u64> {
    scrape(addr).map(|body| metric_sum(&body, "cap_source_records_total"))
}

#[test]
fn a_broker_restart_in_the_middle_of_a_run_loses_nothing() -> Result<()> {
    let mut broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let files = feed_topics_and_run_file(&broker, dir.path(), 4_000, 31, "200")?;

    let config = kafka_config(dir.path(), &broker.brokers)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let kafka = dir.path().join("kafka");
    let log = dir.path().join("job.log");
    let mut job = Command::new(job_binary()?)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&kafka)
        .args(["--workers", "2", "--epoch-records", "200", "--no-console"])
        .args(["--metrics-addr", &metrics])
        // Checkpoints go on through the outage (the fault-tolerance issue's broker restart).
        .args(["--checkpoint-ms", "200"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = job.try_wait()? {
            bail!(
                "the job ended ({status}) before the broker could be killed: {}",
                std::fs::read_to_string(&log)?
            );
        }
        if records_read(&metrics).unwrap_or(0) > 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "the job read nothing in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill()?;
    std::thread::sleep(Duration::from_secs(3));
    let during = records_read(&metrics).unwrap_or(0);
    broker.restart()?;
    let status = job.wait()?;
    let text = std::fs::read_to_string(&log)?;
    ensure!(status.success(), "job failed: {text}");
    ensure!(
        during < 4_000,
        "the job had read everything ({during}) before the broker went away; the test proves nothing"
    );
    ensure!(
        text.contains("reading resumed") || text.contains("librdkafka"),
        "no outage was logged: {text}"
    );
    ensure!(
        text.contains("checkpoint written"),
        "no checkpoint was written: {text}"
    );
    ensure_same_as_file(&files, &kafka)
}

/// The sum of the series of `name` in a Prometheus text body.
fn metric_sum(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).ok()?;
    Some(body)
}

#[test]
fn a_flood_is_read_no_further_ahead_than_the_epochs_in_flight() -> Result<()> {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 12_000, 37, &[])?;
    replay(&broker.brokers, "web", &csv, "json", "1")?;
    let config = kafka_config(dir.path(), &broker.brokers)?;
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)?
            .replace(
                "[[sources.clickstream.topics]]\nname = \"app\"\nformat = \"csv\"\nchannel = \"app\"\n",
                "",
            )
            .replace("commit_interval_ms = 200\n", "commit_interval_ms = 200\nqueued_max_kbytes = 64\n"),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (epoch_records, in_flight) = (100u64, 1u64);
    let log = dir.path().join("job.log");
    // Every table, in 100-record epochs: the dataflow is far slower than the broker.
    let mut job = Command::new(job_binary()?)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(dir.path().join("out"))
        .args([
            "--workers",
            "1",
            "--epoch-records",
            &epoch_records.to_string(),
            "--no-console",
        ])
        .args(["--metrics-addr", &metrics])
        .args(["--set", &format!("engine.max_epochs_in_flight={in_flight}")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let (mut samples, mut max_lag, mut pauses) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while job.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "the job did not finish in 300 s");
        if let Some(body) = scrape(&metrics) {
            let read = metric_sum(&body, "cap_source_records_total");
            let completed = metric_sum(&body, "cap_epochs_completed_total");
            // Read at most the completed epochs, the epochs in flight and the open one.
            let bound = (completed + in_flight + 1) * epoch_records;
            ensure!(
                read <= bound,
                "read {read} records with {completed} epochs complete (bound {bound})"
            );
            max_lag = max_lag.max(metric_sum(&body, "cap_source_lag_records"));
            pauses = pauses.max(metric_sum(&body, "cap_source_backpressure_pauses_total"));
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log)?;
    ensure!(job.wait()?.success(), "job failed: {text}");
    ensure!(
        samples > 10,
        "only {samples} metric samples: the test saw too little of the run"
    );
    // The topic ran far ahead of what was read, yet reading stayed within the bound.
    ensure!(
        max_lag > (in_flight + 2) * epoch_records,
        "the lag never exceeded {max_lag}: the source was never flooded"
    );
    let out = dir.path().join("out");
    let visitors = read_jsonl(&out.join("daily_visitors.jsonl"))?;
    let events: u64 = visitors.iter().filter_map(|r| r["events"].as_u64()).sum();
    let lines = std::fs::read_to_string(&csv)?.lines().count() as u64 - 1;
    ensure!(
        events == lines,
        "daily_visitors counts {events} events of {lines}"
    );
    ensure!(pauses > 0, "the source never paused");
    Ok(())
}
