//! Kafka benchmark against a real broker (tansu on loopback): how fast the job consumes,
//! what the broker itself delivers, what the engine costs per message, and the latency
//! from produce to output-topic delivery.
//!
//! ```text
//! cargo bench -p cap-benches --bench kafka -- [--events N] [--partitions P] [--workers W]
//!     [--storage memory|sqlite] [--latency-rate R] [--latency-seconds S] [--epoch-ms MS]
//! ```
//!
//! 1. produce: N generated events as JSON values (~150-200 bytes), keyed by user_id, into
//!    a topic of P partitions;
//! 2. broker bound: a plain librdkafka consumer reads the topic to its end (no decoding):
//!    the most any consumer gets from this broker on this machine;
//! 3. engine: customer-analytics reads the topic (`stop = "end"`) with W workers into
//!    `daily_visitors` (null sink): events/s, and CPU seconds of this process per message
//!    (the engine's own cost: decode, dataflow, librdkafka client threads; the broker is
//!    another process);
//! 4. latency: a producer sends R events/s for S seconds, all on one UTC day, into a
//!    one-partition topic while the job runs with the Kafka source and the Kafka sink; a
//!    consumer reads `daily_visitors` from its output topic, whose `events` column counts
//!    the events included so far, so event i is delivered by the first output row with
//!    `events > i`. Latency of event i = that row's arrival - event i's send time
//!    (HdrHistogram, p50/p99/p99.9/max).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cap_benches::run_pipeline_with;
use cap_connectors::clickstream::encode::write_json;
use cap_connectors::clickstream::Event;
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::source::{Polled, Source, SourceRecord};
use cap_tests::tansu::Tansu;
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(
    about = "Kafka source and sink against a real broker: events/s, cost per message, produce-to-output latency"
)]
struct Args {
    /// Events for the throughput measurements.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Partitions of the throughput topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Worker threads of the job.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// tansu storage: `memory` (fast) or `sqlite` (durable, slower).
    #[arg(long, default_value = "memory")]
    storage: String,
    /// Events per second of the latency run (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    latency_rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Epoch length of the latency run, in ms.
    #[arg(long, default_value_t = 10)]
    epoch_ms: u64,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// `n` generated events, each encoded as a JSON value, with its user id as the key.
fn encoded_events(n: u64, one_day: bool) -> Result<Vec<(String, Vec<u8>)>> {
    let source = GeneratorSource::try_new("bench", GeneratorConfig::default())?;
    let mut out = Vec::with_capacity(n as usize);
    let mut records: Vec<SourceRecord<Event>> = Vec::new();
    let parts = source.partitions().len();
    'all: for p in 0..parts {
        let mut part = source.open(p)?;
        loop {
            records.clear();
            let polled = part.poll(4096, &mut records)?;
            for r in records.drain(..) {
                let Ok(mut e) = r.item else { continue };
                if one_day {
                    // 2019-11-01 plus less than a day: every event lands on one day.
                    e.event_time = 1_572_566_400_000 + (out.len() as i64 % 86_000_000);
                }
                let mut value = Vec::with_capacity(200);
                write_json(&e, &mut value);
                out.push((e.user_id.to_string(), value));
                if out.len() as u64 >= n {
                    break 'all;
                }
            }
            if polled == Polled::Exhausted {
                break;
            }
        }
    }
    if (out.len() as u64) < n {
        bail!("the generator gave only {} events", out.len());
    }
    Ok(out)
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in rt.block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating {t}: {code}");
            }
        }
    }
    Ok(())
}

fn producer(brokers: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .create()?)
}

/// Sends one message, serving delivery reports while the local queue is full.
fn send(p: &BaseProducer, topic: &str, key: &str, value: &[u8]) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                p.poll(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce: {e}"),
        }
    }
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0 // utime, stime (fields 14, 15); USER_HZ = 100
}

fn source_settings(brokers: &str, topic: &str, stop: &str) -> Vec<String> {
    vec![
        "sources.clickstream.kind=\"kafka\"".into(),
        format!("sources.clickstream.brokers=\"{brokers}\""),
        format!("sources.clickstream.topics=[{{name = \"{topic}\"}}]"),
        format!("sources.clickstream.stop=\"{stop}\""),
        "engine.tables=[\"daily_visitors\"]".into(),
    ]
}

fn throughput(args: &Args, brokers: &str) -> Result<()> {
    let topic = "bench.events";
    create_topic(brokers, topic, args.partitions)?;
    let events = encoded_events(args.events, false)?;
    let bytes: usize = events.iter().map(|(_, v)| v.len()).sum();
    let p = producer(brokers)?;
    let started = Instant::now();
    for (k, v) in &events {
        send(&p, topic, k, v)?;
    }
    p.flush(Duration::from_secs(300))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produce      {:>9} msgs {:>7.2}s {:>10.0} msgs/s  (avg value {} bytes, {} partitions)",
        events.len(),
        secs,
        events.len() as f64 / secs,
        bytes / events.len().max(1),
        args.partitions
    );

    // The broker's bound: a plain consumer, no decoding.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cap-bench-raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let total = stored(brokers, topic)?;
    for part in 0..args.partitions {
        tpl.add_partition_offset(topic, part, Offset::Beginning)?;
    }
    if total != events.len() as u64 {
        println!(
            "note: the broker holds {total} of {} produced messages",
            events.len()
        );
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut read = 0u64;
    while read < total && started.elapsed() < Duration::from_secs(300) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m?;
            read += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "broker bound {:>9} msgs {:>7.2}s {:>10.0} msgs/s  (plain librdkafka consumer, one thread)",
        read,
        secs,
        read as f64 / secs
    );

    // The engine: the job's Kafka source into daily_visitors.
    let cpu = cpu_seconds();
    let report = run_pipeline_with(
        customer_analytics::CustomerAnalytics,
        args.workers,
        100_000,
        source_settings(brokers, topic, "end"),
    )?;
    let cpu = cpu_seconds() - cpu;
    println!(
        "engine       {:>9} msgs {:>7.2}s {:>10.0} msgs/s  ({} workers; {:.2} CPU s in this process = {:.2} us/msg, daily_visitors computed)",
        report.records,
        report.elapsed.as_secs_f64(),
        report.rate(),
        args.workers,
        cpu,
        cpu * 1e6 / report.records.max(1) as f64
    );
    Ok(())
}

fn latency(args: &Args, brokers: &str) -> Result<()> {
    let topic = "bench.latency";
    create_topic(brokers, topic, 1)?;
    let n = args.latency_rate * args.latency_seconds;
    let events = encoded_events(n, true)?;
    let prefix = "bench.out.";
    let out_topic = format!("{prefix}daily_visitors");
    create_topic(brokers, &out_topic, 1)?;

    // The job: Kafka in, Kafka out, small epochs. It runs until the process ends: tansu's
    // memory storage keeps fewer messages than were produced, so no event count ends it.
    let mut set = source_settings(brokers, topic, "never");
    set.extend([
        format!("engine.epoch_ms={}", args.epoch_ms),
        "sinks.kind=\"kafka\"".into(),
        format!("sinks.kafka.brokers=\"{brokers}\""),
        format!("sinks.kafka.topic_prefix=\"{prefix}\""),
        // librdkafka's dotted property names go in as inline tables. The consumer asks the
        // broker to answer a fetch within 5 ms rather than librdkafka's 500 ms (tansu holds
        // a fetch until that wait is over even when it has data); the producer sends at once.
        "sources.clickstream.properties={\"fetch.wait.max.ms\" = \"5\"}".into(),
        "sinks.kafka.properties={\"linger.ms\" = \"0\"}".into(),
    ]);
    let workers = args.workers;
    let _job = std::thread::spawn(move || {
        run_pipeline_with(
            customer_analytics::CustomerAnalytics,
            workers,
            1_000_000,
            set,
        )
    });

    // The reader of the output topic: (arrival, events included).
    let done = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let reader = {
        let (brokers, done, seen) = (brokers.to_owned(), Arc::clone(&done), Arc::clone(&seen));
        std::thread::spawn(move || -> Result<()> {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "cap-bench-latency")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&out_topic, 0, Offset::Beginning)?;
            c.assign(&tpl)?;
            while !done.load(Ordering::Relaxed) {
                let Some(m) = c.poll(Duration::from_millis(5)) else {
                    continue;
                };
                let at = Instant::now();
                let m = m?;
                let Some(v) = m.payload() else { continue };
                let row: serde_json::Value = serde_json::from_slice(v)?;
                let events = row["events"]
                    .as_u64()
                    .context("daily_visitors row without events")?;
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((at, events));
            }
            Ok(())
        })
    };

    // Give the job time to assign its partition before producing.
    std::thread::sleep(Duration::from_secs(2));
    let p = producer(brokers)?;
    let mut sent = Vec::with_capacity(events.len());
    let started = Instant::now();
    for (i, (k, v)) in events.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / args.latency_rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent.push(Instant::now());
        send(&p, topic, k, v)?;
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60))?;
    let achieved = events.len() as f64 / started.elapsed().as_secs_f64();
    let kept = stored(brokers, topic)?;
    // Done when the output has included every stored event, or has not grown for 3 s.
    let mut last = (0u64, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let included = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .map_or(0, |&(_, e)| e);
        if included != last.0 {
            last = (included, Instant::now());
        }
        if included >= kept || last.1.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut next = 0usize;
    for (at, included) in seen {
        while (next as u64) < included && next < sent.len() {
            h.record(at.saturating_duration_since(sent[next]).as_micros().max(1) as u64)?;
            next += 1;
        }
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // Events the broker lost are never included, so later events are matched to later
    // rows than their own: with losses the figures overstate the latency.
    println!(
        "latency      {:>9} msgs at {:.0}/s, epochs {} ms: produce -> output topic p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms ({} of {} events matched; the broker kept {})",
        sent.len(),
        achieved,
        args.epoch_ms,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        next,
        sent.len(),
        kept
    );
    Ok(())
}

/// Messages the broker holds in `topic` (sum of high watermarks).
fn stored(brokers: &str, topic: &str) -> Result<u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0u64;
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (lo, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += u64::try_from(hi - lo).unwrap_or(0);
        }
    }
    Ok(total)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let storage = match args.storage.as_str() {
        "memory" => "memory://tansu/",
        "sqlite" => "sqlite://tansu.db",
        other => bail!("--storage is `{other}`; expected memory or sqlite"),
    };
    let broker = Tansu::start_with_storage(storage)?;
    println!("tansu ({}) on {}", args.storage, broker.brokers);
    throughput(&args, &broker.brokers)?;
    if args.latency_rate > 0 {
        latency(&args, &broker.brokers)?;
    }
    Ok(())
}
