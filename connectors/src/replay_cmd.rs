//! The `replay` command: sends a REES46 file, or the built-in generator's events, to a Kafka
//! topic, one event per message, keyed by a field of the event, at a chosen rate. It feeds
//! the Kafka source in tests, demos and load runs.
//!
//! ```text
//! customer-analytics replay --brokers localhost:9092 --topic clicks \
//!     --input events.csv.gz --key-field category_id --rate 50000 --create-partitions 6
//! customer-analytics replay --brokers localhost:9092 --topic clicks --events 1000000 --seed 7
//! ```
//!
//! ```text
//!  --input FILE ──RecordReader──▶ (line bytes, event | undecodable) ──┐
//!  --events N ──MergedEvents (generator, event-time order)──▶ event ──┤
//!                                                                     ▼
//!          value: json | csv (re-encoded event) | raw (the line as read)
//!          key:   the --key-field text of the event (none: null field, undecodable line)
//!                                                                     ▼
//!     message n waits for start + n / rate ──▶ idempotent BaseProducer ──▶ topic
//!                                              (partitioner murmur2_random)
//! ```
//!
//! Guarantees: every record read (up to `--max-events`) is produced once, and each
//! partition holds its messages in input order: the idempotent producer's retries neither
//! duplicate nor reorder, and it never gives up on an unreachable broker
//! (`message.timeout.ms=0`: the command waits, warning every 10 s). A line that does not decode is sent anyway, as its raw bytes and
//! without a key, so a downstream job's dead-letter path sees it; such lines are counted in
//! the summary. Messages with the same key land on the same partition, chosen by Java's
//! murmur2 partitioner as the CAP sink and Java clients do. A message the broker rejects
//! for good (too large, no such topic, not authorized) is counted and the command fails at
//! the end with the count and the first reason.
//!
//! Pacing (`--rate`) is a token bucket against the monotonic clock: message `n` is due
//! `n / rate` seconds after the start, computed from `n` each time so sleeping late never
//! accumulates drift. After a stall (a slow broker) at most 100 ms worth of messages go out
//! back to back, then the rate resumes: the replay then ends later rather than bursting.
//!
//! Non-guarantees: no Kafka transactions, and an interrupted replay leaves what it sent so
//! far (running it again sends everything again). Message timestamps are the send time, not
//! the event time. The CSV header is never sent: `csv` values always have the columns of
//! `CSV_HEADER_EXTENDED`, while `raw` values keep the file's own column order.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_engine::config::KafkaSinkConfig;
use cap_engine::time::format_rees46;
use clap::{ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use indicatif::{HumanCount, ProgressBar, ProgressStyle};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::clickstream::encode::{write_csv, write_json};
use crate::clickstream::{DecodeOptions, Event};
use crate::file::{Format, ReadError, RecordReader};
use crate::generator::{GeneratorSource, MergedEvents};
use crate::kafka::{client_config, Cleanup, KafkaChangelogSink};

/// The event field whose text keys each message (`--key-field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum KeyField {
    /// The REES46 time text, `2019-11-01 00:00:00 UTC`.
    EventTime,
    /// `view`, `cart`, `remove_from_cart` or `purchase`.
    EventType,
    /// The product id, in decimal.
    ProductId,
    /// The category id, in decimal.
    CategoryId,
    /// The category code (null: no key).
    CategoryCode,
    /// The brand (null: no key).
    Brand,
    /// The user id, in decimal.
    UserId,
    /// The session (null: no key).
    UserSession,
    /// The client ip (null: no key).
    Ip,
    /// `web`, `app` or `social` (null: no key).
    Channel,
    /// The country (null: no key).
    Country,
    /// No key: messages are spread over the partitions at random.
    None,
}

impl KeyField {
    /// The key text of `event`: the field's text (ids in decimal), `None` when the field is
    /// null or the key field is `none`.
    pub fn key_text(self, event: &Event) -> Option<Cow<'_, str>> {
        let owned = |v: u64| Some(Cow::Owned(v.to_string()));
        match self {
            KeyField::EventTime => Some(Cow::Owned(format_rees46(event.event_time))),
            KeyField::EventType => Some(Cow::Borrowed(event.event_type.as_str())),
            KeyField::ProductId => owned(event.product_id),
            KeyField::CategoryId => owned(event.category_id),
            KeyField::CategoryCode => event.category_code.as_deref().map(Cow::Borrowed),
            KeyField::Brand => event.brand.as_deref().map(Cow::Borrowed),
            KeyField::UserId => owned(event.user_id),
            KeyField::UserSession => event.user_session.as_ref().map(|s| s.to_string().into()),
            KeyField::Ip => event.ip.as_deref().map(Cow::Borrowed),
            KeyField::Channel => event.channel.map(|c| Cow::Borrowed(c.as_str())),
            KeyField::Country => event.country.as_deref().map(Cow::Borrowed),
            KeyField::None => None,
        }
    }
}

/// The value of each message (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueFormat {
    /// The event as one JSON object, as in a JSON-lines file (no trailing newline).
    Json,
    /// The event as one CSV record with the extended columns, no header, no newline.
    Csv,
    /// The input line exactly as read, decodable or not (file input only).
    Raw,
}

/// Flags of `replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Bootstrap brokers, comma separated (librdkafka's `bootstrap.servers`).
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: String,
    /// The topic to send to.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// REES46 CSV or JSON-lines file to replay: `.csv`, `.json`, `.jsonl` or `.ndjson`,
    /// optionally `.gz`.
    #[arg(short = 'i', long, value_name = "FILE", required_unless_present = "events",
          conflicts_with_all = ["events", "seed", "set"])]
    pub input: Option<PathBuf>,
    /// Replay N events of the built-in generator (merged in event-time order) instead of a file.
    #[arg(short = 'e', long, value_name = "N")]
    pub events: Option<u64>,
    /// Generator seed: the same seed and settings send the same events.
    #[arg(long, value_name = "SEED", requires = "events")]
    pub seed: Option<u64>,
    /// Set any generator key, e.g. --set users=5000 (repeatable; see docs/runbook.md).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "events")]
    pub set: Vec<String>,
    /// Messages per second overall; 0 or absent: as fast as possible.
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub rate: Option<f64>,
    /// The event field whose text keys each message (ids in decimal); messages whose
    /// field is null, and undecodable lines, have no key.
    #[arg(long, value_enum, value_name = "FIELD", default_value_t = KeyField::UserId)]
    pub key_field: KeyField,
    /// The message value: the event re-encoded as JSON or CSV, or the input line as read.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = ValueFormat::Json)]
    pub format: ValueFormat,
    /// Create the topic with P partitions (replication 1) if it does not exist.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(i32).range(1..))]
    pub create_partitions: Option<i32>,
    /// A librdkafka property passed through, e.g. --property security.protocol=SASL_SSL
    /// (repeatable). It cannot turn off idempotence, the no-timeout delivery or the
    /// murmur2_random partitioner.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub property: Vec<String>,
    /// Stop after N messages (undecodable lines included).
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
    /// Never show a progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

const LONG_ABOUT: &str = "\
Send a REES46 CSV or JSON-lines file (plain or .gz), or the built-in generator's events, to a \
Kafka topic: one event per message, keyed by --key-field, paced by --rate. Lines that do not \
decode are sent as their raw bytes without a key (and counted), so the downstream job's \
dead-letter path sees them. The producer is idempotent and waits out broker outages; \
messages the broker rejects are counted and make the command fail at the end. One summary \
line goes to stderr: events sent, undecodable lines, delivery failures, elapsed time and \
events/s.";

const EXAMPLES: &str = "\
Examples:
  # a REES46 file keyed by category, at 50K events/s, into a new 6-partition topic
  customer-analytics replay --brokers localhost:9092 --topic clicks \\
      --input 2019-Nov.csv.gz --key-field category_id --rate 50000 --create-partitions 6
  # one million generator events, as fast as possible, as CSV records
  customer-analytics replay --brokers localhost:9092 --topic clicks \\
      --events 1000000 --seed 7 --set users=20000 --format csv
  # every line as it is, bad ones included (dead-letter tests), over SASL/TLS
  customer-analytics replay --brokers broker:9093 --topic clicks --input dirty.csv \\
      --format raw --property security.protocol=SASL_SSL --property sasl.mechanism=PLAIN \\
      --property sasl.username=cap --property \"sasl.password=$KAFKA_PASSWORD\"";

/// The `replay` subcommand definition.
pub fn command() -> Command {
    // About texts after the flags: `augment_args` would set the struct's doc comment.
    ReplayArgs::augment_args(Command::new("replay"))
        .about("Send a REES46 file or generated events to a Kafka topic, keyed and paced")
        .long_about(LONG_ABOUT)
        .after_long_help(EXAMPLES)
}

/// Runs `replay`.
pub fn run(matches: &ArgMatches) -> Result<(), String> {
    let args = ReplayArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
    if args.brokers.trim().is_empty() {
        return Err(
            "--brokers is empty: give the bootstrap brokers as HOST:PORT[,HOST:PORT]".into(),
        );
    }
    if args.format == ValueFormat::Raw && args.input.is_none() {
        return Err(
            "--format raw sends input lines as they were read, so it needs --input FILE: \
             generated events have no lines (use --format json or csv)"
                .into(),
        );
    }
    let rate = match args.rate {
        None => None,
        Some(0.0) => None,
        Some(r) if r.is_finite() && r > 0.0 => Some(r),
        Some(r) => return Err(format!("--rate must be a positive number or 0, found {r}")),
    };
    let mut properties = std::collections::BTreeMap::new();
    for kv in &args.property {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--property `{kv}`: expected KEY=VALUE"))?;
        properties.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let kafka = KafkaSinkConfig {
        brokers: args.brokers.clone(),
        create_partitions: args.create_partitions.unwrap_or(0),
        properties,
        ..KafkaSinkConfig::default()
    };

    let mut input = Input::open(&args)?;
    let sender = Sender::connect(&args.topic, &kafka)?;
    let progress = !args.no_progress && std::io::stderr().is_terminal();
    let bar = input.progress_bar(progress, args.max_events);

    let started = Instant::now();
    let mut pacer = rate.map(Pacer::new);
    let mut tally = Tally::default();
    let mut value = Vec::with_capacity(1024);
    let limit = args.max_events.unwrap_or(u64::MAX);
    // A read error ends the replay, but what was sent before it is still flushed.
    let read = loop {
        if tally.sent >= limit {
            break Ok(());
        }
        let record = match input.next() {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Some(pacer) = &mut pacer {
            pacer.wait_for(tally.sent, started, &sender);
        }
        value.clear();
        let key = match (&record.event, args.format) {
            (Some(e), ValueFormat::Json) => {
                write_json(e, &mut value);
                value.pop(); // the JSON-lines newline
                args.key_field.key_text(e)
            }
            (Some(e), ValueFormat::Csv) => {
                write_csv(e, true, &mut value);
                value.pop(); // the record's newline
                args.key_field.key_text(e)
            }
            (event, _) => {
                value.extend_from_slice(record.line.unwrap_or_default());
                event.as_ref().and_then(|e| args.key_field.key_text(e))
            }
        };
        if record.event.is_none() {
            tally.undecodable += 1;
        }
        sender.send(key.as_deref().map(str::as_bytes), &value, &bar);
        tally.sent += 1;
        if tally.sent % 1024 == 0 {
            sender.producer.poll(Duration::ZERO);
            input.show(&bar, tally.sent, started);
        }
    };
    input.show(&bar, tally.sent, started);
    let flushed = sender.flush(&bar);
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let failures = sender.failures.count.load(Ordering::Relaxed);
    eprintln!(
        "replay: {} events sent to `{}` ({} undecodable lines sent raw), {failures} delivery \
         failures, {elapsed:.2} s, {:.0} events/s",
        tally.sent,
        args.topic,
        tally.undecodable,
        tally.sent as f64 / elapsed.max(1e-9)
    );
    read?;
    flushed?;
    if failures > 0 {
        let first = sender
            .failures
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        return Err(format!(
            "{failures} of {} messages were not delivered to `{}`, first: {first}",
            tally.sent, args.topic
        ));
    }
    Ok(())
}

/// Counts of a replay.
#[derive(Debug, Default)]
struct Tally {
    /// Messages produced.
    sent: u64,
    /// Of which input lines that did not decode.
    undecodable: u64,
}

/// One record to send: its line as read (file input) and its event (`None`: undecodable).
struct Record<'a> {
    line: Option<&'a [u8]>,
    event: Option<Event>,
}

/// Where the events come from.
enum Input {
    File {
        path: PathBuf,
        records: Box<RecordReader>,
    },
    Generator {
        events: MergedEvents,
        total: u64,
    },
}

impl Input {
    /// Opens the file or builds the generator the flags name; errors name the path or key.
    fn open(args: &ReplayArgs) -> Result<Input, String> {
        if let Some(path) = &args.input {
            let format = Format::from_path(path).ok_or_else(|| {
                format!(
                    "cannot tell the format of {} from its name: expected .csv, .json, .jsonl \
                     or .ndjson, optionally followed by .gz",
                    path.display()
                )
            })?;
            let records = RecordReader::open(path, format, DecodeOptions::default())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            return Ok(Input::File {
                path: path.clone(),
                records: Box::new(records),
            });
        }
        let total = args
            .events
            .ok_or("give --input FILE or --events N (the generator)")?;
        let mut layers = cap_engine::config::Layers::default();
        let int = |v: u64| toml::Value::Integer(v as i64);
        let mut set = |k: &str, v: toml::Value| {
            layers
                .set_value(&format!("generator.{k}"), v)
                .map_err(|e| e.to_string())
        };
        set("events", int(total))?;
        if let Some(seed) = args.seed {
            set("seed", int(seed))?;
        }
        let mut cfg = crate::generate_cmd::with_set_items(layers, &args.set)?;
        cfg.rate = None; // --rate paces the replay
        let source = GeneratorSource::try_new("replay", cfg).map_err(|e| e.to_string())?;
        let events = MergedEvents::new(&source).map_err(|e| e.to_string())?;
        Ok(Input::Generator { events, total })
    }

    /// The next record; `None` at the end of the input.
    fn next(&mut self) -> Result<Option<Record<'_>>, String> {
        match self {
            Input::Generator { events, .. } => Ok(events.next().map(|e| Record {
                line: None,
                event: Some(e),
            })),
            Input::File { path, records } => match records.next_record() {
                Ok(Some(r)) => Ok(Some(Record {
                    line: Some(r.body),
                    event: r.decoded.ok(),
                })),
                Ok(None) => Ok(None),
                Err(ReadError::Io(e)) => Err(format!("reading {}: {e}", path.display())),
                Err(ReadError::Header { position, error }) => Err(format!(
                    "{}: line {position}: bad CSV header: {error}",
                    path.display()
                )),
            },
        }
    }

    /// A progress bar (hidden unless `show`): bytes read of the file, or events sent of
    /// the generator's (or `--max-events`) total.
    fn progress_bar(&self, show: bool, max_events: Option<u64>) -> ProgressBar {
        if !show {
            return ProgressBar::hidden();
        }
        let (bar, template) = match self {
            Input::File { records, .. } => (
                ProgressBar::new(records.total_bytes().unwrap_or(0)),
                "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} read, {msg} (eta {eta})",
            ),
            Input::Generator { total, .. } => (
                ProgressBar::new(max_events.map_or(*total, |m| m.min(*total))),
                "{spinner} [{elapsed_precise}] [{bar:30}] {human_pos}/{human_len} events sent ({per_sec}, eta {eta})",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    /// Updates `bar` after `sent` messages.
    fn show(&self, bar: &ProgressBar, sent: u64, started: Instant) {
        if bar.is_hidden() {
            return;
        }
        match self {
            Input::File { records, .. } => {
                bar.set_position(records.bytes_read());
                let per_s = sent as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "{} events sent, {}/s",
                    HumanCount(sent),
                    HumanCount(per_s as u64)
                ));
            }
            Input::Generator { .. } => bar.set_position(sent),
        }
    }
}

/// Delivery failures of the producer: how many, and the first reason.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    fn record(&self, reason: impl FnOnce() -> String) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason());
        }
    }
}

struct DeliveryContext(Arc<Failures>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((e, msg)) = result {
            use rdkafka::message::Message;
            self.0.record(|| match msg.key() {
                Some(k) => format!("key {}: {e}", String::from_utf8_lossy(k)),
                None => format!("message without key: {e}"),
            });
        }
    }
}

/// The producer of one replay (the conventions of the changelog sink).
struct Sender {
    topic: String,
    producer: BaseProducer<DeliveryContext>,
    failures: Arc<Failures>,
    warn_after: Duration,
}

impl Sender {
    /// Creates the topic when asked (and missing), then the producer.
    fn connect(topic: &str, cfg: &KafkaSinkConfig) -> Result<Sender, String> {
        if cfg.create_partitions > 0 {
            KafkaChangelogSink::create_topic(topic, cfg, Cleanup::BrokerDefault)
                .map_err(|e| format!("cannot create topic `{topic}` on {}: {e}", cfg.brokers))?;
        }
        let failures = Arc::new(Failures::default());
        let mut c = client_config(cfg);
        if !cfg.properties.contains_key("linger.ms") {
            c.set("linger.ms", "5");
        }
        // Set last, over any --property: no duplicates or reordering within a partition,
        // no message ever timed out, and Java's partitioning by key.
        c.set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("partitioner", "murmur2_random");
        let producer = c
            .create_with_context(DeliveryContext(Arc::clone(&failures)))
            .map_err(|e| {
                format!(
                    "cannot create the producer for `{topic}`: {}",
                    crate::kafka::client_error(&e)
                )
            })?;
        Ok(Sender {
            topic: topic.to_owned(),
            producer,
            failures,
            warn_after: Duration::from_millis(cfg.delivery_warn_ms.max(1)),
        })
    }

    /// Produces one message; a full local queue is backpressure (serve delivery reports
    /// and try again, warning while the brokers do not take anything), any other refusal
    /// is counted as a failure.
    fn send(&self, key: Option<&[u8]>, value: &[u8], bar: &ProgressBar) {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        let mut waiting_since: Option<Instant> = None;
        let mut next_warning = self.warn_after;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                    let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
                    if waited >= next_warning {
                        next_warning += self.warn_after;
                        bar.suspend(|| {
                            eprintln!(
                                "replay: warning: the local queue has been full for {} s: \
                                 the brokers are not acknowledging `{}`; waiting",
                                waited.as_secs(),
                                self.topic
                            )
                        });
                    }
                }
                Err((e, _)) => {
                    self.failures.record(|| format!("cannot produce: {e}"));
                    return;
                }
            }
        }
    }

    /// Waits until every produced message is acknowledged or failed, however long the
    /// brokers take, warning every `warn_after`.
    fn flush(&self, bar: &ProgressBar) -> Result<(), String> {
        let started = Instant::now();
        loop {
            match self.producer.flush(self.warn_after) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => bar.suspend(|| {
                    eprintln!(
                        "replay: warning: {} messages to `{}` not acknowledged after {} s; waiting",
                        self.producer.in_flight_count(),
                        self.topic,
                        started.elapsed().as_secs()
                    )
                }),
                Err(e) => return Err(format!("flushing the messages to `{}`: {e}", self.topic)),
            }
        }
    }
}

/// Longest single sleep of the pacing, so delivery reports keep being served.
const MAX_SLEEP: Duration = Duration::from_millis(5);
/// Most a paced replay may run behind schedule before the schedule restarts: the bucket's
/// capacity, in time.
const MAX_BURST: Duration = Duration::from_millis(100);

/// When message `n` (from 0) is due at `rate` messages per second: `n / rate` seconds
/// after the schedule's origin, from `n` itself so that no rounding accumulates.
fn due_after(rate: f64, n: u64) -> Duration {
    Duration::try_from_secs_f64(n as f64 / rate).unwrap_or(Duration::MAX)
}

/// The token bucket of `--rate` (see the module docs).
#[derive(Debug, Clone, PartialEq)]
struct Pacer {
    rate: f64,
    /// The schedule's origin, as time since the start (moves only after a stall).
    origin: Duration,
    /// The message due at `origin`.
    base: u64,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            rate,
            origin: Duration::ZERO,
            base: 0,
        }
    }

    /// How long message `n` must still wait when `elapsed` has passed since the start
    /// (zero: it is due). Running more than [`MAX_BURST`] behind restarts the schedule
    /// `MAX_BURST` behind `elapsed`.
    fn wait(&mut self, n: u64, elapsed: Duration) -> Duration {
        let due = self
            .origin
            .saturating_add(due_after(self.rate, n.saturating_sub(self.base)));
        if elapsed > due.saturating_add(MAX_BURST) {
            self.origin = elapsed - MAX_BURST;
            self.base = n;
            return Duration::ZERO;
        }
        due.saturating_sub(elapsed)
    }

    /// Sleeps (at most [`MAX_SLEEP`] at a time, serving delivery reports in between)
    /// until message `n` is due.
    fn wait_for(&mut self, n: u64, started: Instant, sender: &Sender) {
        loop {
            let wait = self.wait(n, started.elapsed());
            if wait.is_zero() {
                return;
            }
            sender.producer.poll(Duration::ZERO);
            std::thread::sleep(wait.min(MAX_SLEEP));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickstream::{Channel, EventType, SessionId};

    fn event() -> Event {
        Event {
            event_time: 1_572_566_400_000, // 2019-11-01 00:00:00 UTC
            event_type: EventType::Cart,
            product_id: 1_003_461,
            category_id: 2_053_013_555_631_882_655,
            category_code: Some("electronics.smartphone".into()),
            brand: Some("xiaomi".into()),
            price_cents: 48_907,
            user_id: 520_088_904,
            user_session: Some(SessionId::parse("4d3b30da-a5e4-49df-b1a8-ba5943f1dd33")),
            ip: Some("10.1.2.3".into()),
            user_agent: Some("Mozilla/5.0".into()),
            channel: Some(Channel::App),
            country: Some("DE".into()),
        }
    }

    #[test]
    fn every_key_field_is_the_fields_text() {
        let e = event();
        let key = |f: KeyField| f.key_text(&e).map(Cow::into_owned);
        let cases = [
            (KeyField::EventTime, "2019-11-01 00:00:00 UTC"),
            (KeyField::EventType, "cart"),
            (KeyField::ProductId, "1003461"),
            (KeyField::CategoryId, "2053013555631882655"),
            (KeyField::CategoryCode, "electronics.smartphone"),
            (KeyField::Brand, "xiaomi"),
            (KeyField::UserId, "520088904"),
            (
                KeyField::UserSession,
                "4d3b30da-a5e4-49df-b1a8-ba5943f1dd33",
            ),
            (KeyField::Ip, "10.1.2.3"),
            (KeyField::Channel, "app"),
            (KeyField::Country, "DE"),
        ];
        for (field, text) in cases {
            assert_eq!(key(field).as_deref(), Some(text), "{field:?}");
        }
        assert_eq!(key(KeyField::None), None);
        // Every field but `none` has a case above.
        assert_eq!(cases.len() + 1, KeyField::value_variants().len());
    }

    #[test]
    fn null_fields_give_no_key() {
        let e = Event {
            category_code: None,
            brand: None,
            user_session: None,
            ip: None,
            channel: None,
            country: None,
            ..event()
        };
        for field in [
            KeyField::CategoryCode,
            KeyField::Brand,
            KeyField::UserSession,
            KeyField::Ip,
            KeyField::Channel,
            KeyField::Country,
        ] {
            assert_eq!(field.key_text(&e), None, "{field:?}");
        }
        assert_eq!(KeyField::UserId.key_text(&e).as_deref(), Some("520088904"));
    }

    #[test]
    fn key_field_names_are_the_schemas_column_names() {
        let names: Vec<String> = KeyField::value_variants()
            .iter()
            .filter_map(|f| f.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
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
                "none"
            ]
        );
    }

    #[test]
    fn message_n_is_due_n_over_rate_seconds_after_the_start() {
        assert_eq!(due_after(2000.0, 0), Duration::ZERO);
        assert_eq!(due_after(2000.0, 1), Duration::from_micros(500));
        assert_eq!(due_after(2000.0, 2000), Duration::from_secs(1));
        assert_eq!(due_after(3.0, 1), Duration::from_nanos(333_333_333));
        // From n itself: the billionth message at 50K/s is due at exactly 20,000 s.
        assert_eq!(
            due_after(50_000.0, 1_000_000_000),
            Duration::from_secs(20_000)
        );
        assert_eq!(due_after(1e-300, u64::MAX), Duration::MAX);
    }

    #[test]
    fn the_pacer_waits_until_due_and_bursts_at_most_max_burst_after_a_stall() {
        let ms = Duration::from_millis;
        let mut p = Pacer::new(1000.0); // one message per ms
        assert_eq!(p.wait(0, ms(0)), ms(0));
        assert_eq!(p.wait(10, ms(4)), ms(6), "due at 10 ms");
        assert_eq!(p.wait(10, ms(12)), ms(0), "late but within the burst");
        assert_eq!(
            p.wait(50, ms(140)),
            ms(0),
            "90 ms behind: still on schedule"
        );
        assert_eq!(p, Pacer::new(1000.0), "no restart within MAX_BURST");
        // A 1 s stall at message 100 (due at 100 ms): the schedule restarts 100 ms behind.
        assert_eq!(p.wait(100, ms(1100)), ms(0));
        assert_eq!((p.origin, p.base), (ms(1000), 100));
        assert_eq!(
            p.wait(199, ms(1100)),
            ms(0),
            "the bucket's 100 messages go at once"
        );
        assert_eq!(p.wait(300, ms(1100)), ms(100), "then the rate holds again");
    }
}
