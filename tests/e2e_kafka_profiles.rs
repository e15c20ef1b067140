//! End to end: CRM profiles read from a real broker (tansu, on loopback) as keyed upserts.
//!
//! A three-partition topic, keyed by user id with the Java client's murmur2 partitioner,
//! holds several updates per customer, deletions (tombstones), repeated values and bad
//! messages. A small job (the Kafka profile source, `cap_operators::upsert::latest_by_key`
//! and the file sink) reads it with two workers in many small epochs. Its
//! `customer_profiles` snapshot must equal an independent batch computation over the
//! messages read back from the broker (per partition in offset order, last one wins, a
//! tombstone deletes), its changelog must fold to that snapshot, and every bad message must
//! be exactly one dead letter naming its partition and offset.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cap_connectors::crm::CrmProfile;
use cap_connectors::kafka::{Cleanup, KafkaChangelogSink};
use cap_engine::config::{KafkaSinkConfig, Layers};
use cap_engine::job::{BuildError, Dataflow, Job};
use cap_engine::sink::TableRow;
use cap_tests::kafka_read::read_messages;
use cap_tests::tansu::Tansu;
use cap_tests::{ensure_changelog_folds_to_snapshot, read_jsonl};
use customer_analytics::rows::DeadLetterRow;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const TOPIC: &str = "crm-profiles";

/// `customer_profiles`: a customer's current CRM profile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
struct ProfileRow(CrmProfile);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct UserKey {
    user_id: u64,
}

impl TableRow for ProfileRow {
    type Key = UserKey;
    fn key(&self) -> UserKey {
        UserKey {
            user_id: self.0.user_id,
        }
    }
}

/// The job under test: profiles in, current profiles and dead letters out.
struct ProfilesJob;

impl Job for ProfilesJob {
    fn name(&self) -> &'static str {
        "crm-profiles-test"
    }
    fn about(&self) -> &'static str {
        "current CRM profiles from a keyed upsert topic"
    }
    fn default_config(&self) -> &'static str {
        ""
    }
    fn tables(&self) -> Vec<&'static str> {
        vec!["customer_profiles", "dead_letters"]
    }
    fn build<'s>(&self, df: &mut Dataflow<'s>) -> Result<(), BuildError> {
        let input = df.source("profiles", &cap_connectors::open_profiles)?;
        let log = input.records.map(|u| u.into_log());
        let current = cap_operators::upsert::latest_by_key(log).map(|(_, p)| ProfileRow(p));
        df.sink("customer_profiles", current)?;
        df.sink(
            "dead_letters",
            input.dead_letters.map(|d| DeadLetterRow::from(&d)),
        )?;
        Ok(())
    }
}

/// SplitMix64, so the test input is the same on every run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// Bad messages (key, value): each must become one dead letter.
const BAD: [(Option<&str>, Option<&str>); 4] = [
    (Some("17"), Some(r#"{"user_id":17,"tier":"gold""#)), // truncated JSON
    (Some("18"), Some(r#"{"user_id":19}"#)),              // key and user_id disagree
    (None, None),                                         // a tombstone without a key
    (Some("20"), Some(r#"{"user_id":20,"birth_year":"old"}"#)), // a mistyped field
];

/// Produces `updates` random profile messages over `users` customers, and the bad ones.
fn produce(brokers: &str, updates: usize, users: u64) -> Result<()> {
    let mut cfg = KafkaSinkConfig {
        brokers: brokers.to_owned(),
        create_partitions: 3,
        ..KafkaSinkConfig::default()
    };
    cfg.properties.clear();
    KafkaChangelogSink::create_topic(TOPIC, &cfg, Cleanup::Compact).map_err(anyhow::Error::msg)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?;
    let mut rng = Rng(7);
    let tiers = ["bronze", "silver", "gold", "platinum"];
    let mut messages: Vec<(Option<String>, Option<String>)> = Vec::new();
    for i in 0..updates {
        let user = 1000 + rng.below(users);
        let value = match rng.below(10) {
            0 => None,                                             // a deletion
            1 => Some(json!({"user_id": user, "tier": "silver"})), // often repeated
            _ => {
                let tier = tiers[rng.below(4) as usize];
                let country = ["DE", "FR", "PL", ""][rng.below(4) as usize];
                let brand = ["apple", "samsung", "xiaomi"][rng.below(3) as usize];
                let value = format!("{}.{:02}", rng.below(5000), rng.below(100));
                Some(json!({
                    "user_id": user,
                    "tier": tier,
                    "country": country,
                    "birth_year": 1950 + rng.below(60),
                    "email_opt_in": rng.below(2) == 0,
                    "lifetime_value": value,
                    "updated_at": 1_572_566_400_000u64 + i as u64 * 1000,
                    "favourite_brand": brand,
                }))
            }
        };
        messages.push((Some(user.to_string()), value.map(|v| v.to_string())));
        if i % 250 == 100 {
            let (k, v) = BAD[(i / 250) % BAD.len()];
            messages.push((k.map(str::to_owned), v.map(str::to_owned)));
        }
    }
    for (key, value) in &messages {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(TOPIC);
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        if let Some(v) = value {
            record = record.payload(v.as_str());
        }
        if key.is_none() {
            record = record.partition(0); // no key: no partitioner input
        }
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// The independent batch computation: every message read back, per partition in offset
/// order; the result rows as JSON, and the `(partition, offset)` of every bad message.
fn batch_profiles(brokers: &str) -> Result<(BTreeMap<u64, Value>, BTreeSet<(i32, i64)>)> {
    let mut messages = read_messages(brokers, TOPIC)?;
    messages.sort_by_key(|m| (m.partition, m.offset));
    let mut current: BTreeMap<u64, Value> = BTreeMap::new();
    let mut bad = BTreeSet::new();
    let mut partition_of: BTreeMap<u64, i32> = BTreeMap::new();
    for m in &messages {
        let key = m.key.as_deref().map(String::from_utf8_lossy);
        let Some(user) = key.as_deref().and_then(|k| k.parse::<u64>().ok()) else {
            bad.insert((m.partition, m.offset));
            continue;
        };
        if let Some(&p) = partition_of.get(&user) {
            ensure!(
                p == m.partition,
                "user {user} is on partitions {p} and {}",
                m.partition
            );
        }
        partition_of.insert(user, m.partition);
        match m.value.as_deref() {
            None => {
                current.remove(&user);
            }
            Some(v) => match expected_row(user, &String::from_utf8_lossy(v)) {
                Some(row) => {
                    current.insert(user, row);
                }
                None => {
                    bad.insert((m.partition, m.offset));
                }
            },
        }
    }
    Ok((current, bad))
}

/// What the contract says a good profile message becomes, written from the contract's
/// table (crm module docs), not from the decoder; `None` for a bad message.
fn expected_row(user: u64, text: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(text).ok()?;
    let obj = v.as_object()?;
    if obj.get("user_id").and_then(Value::as_u64) != Some(user) {
        return None;
    }
    let birth_year = match obj.get("birth_year") {
        None => Value::Null,
        Some(y) => json!(y.as_u64().filter(|y| (1900..=2100).contains(y))?),
    };
    let text_or_null = |f: &str| match obj.get(f).and_then(Value::as_str) {
        None | Some("") => Value::Null,
        Some(s) => json!(s),
    };
    let cents = match obj.get("lifetime_value").and_then(Value::as_str) {
        None => Value::Null,
        Some(s) => json!(cap_tests::price_to_cents(s)?),
    };
    let attributes: Vec<Value> = obj
        .iter()
        .filter(|(k, _)| {
            ![
                "user_id",
                "updated_at",
                "signup_time",
                "email_opt_in",
                "tier",
                "country",
                "city",
                "birth_year",
                "lifetime_value",
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| {
            json!([
                k,
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            ])
        })
        .collect();
    Some(json!({
        "user_id": user,
        "updated_at_ms": obj.get("updated_at").cloned().unwrap_or(Value::Null),
        "signup_ms": Value::Null,
        "email_opt_in": obj.get("email_opt_in").and_then(Value::as_bool).unwrap_or(false),
        "tier": text_or_null("tier"),
        "country": text_or_null("country"),
        "city": Value::Null,
        "birth_year": birth_year,
        "lifetime_value_cents": cents,
        "attributes": attributes,
    }))
}

fn run(brokers: &str, out: &Path) -> Result<()> {
    let config = format!(
        r#"
[engine]
workers = 2
epoch_records = 40
epoch_ms = 50
console = false
state_dir = "{state}"

[sources.profiles]
kind = "kafka"
brokers = "{brokers}"
stop = "end"
metadata_timeout_ms = 30000

[[sources.profiles.topics]]
name = "{TOPIC}"

[sinks]
kind = "file"
dir = "{}"
"#,
        out.display(),
        state = out.join("_state").display()
    );
    let layers = Layers::from_defaults(&config)?;
    let report = cap_engine::runtime::run_job(
        Arc::new(ProfilesJob),
        layers,
        Arc::new(cap_connectors::Connectors),
    )?;
    ensure!(report.records > 0, "the job read nothing: {report:?}");
    Ok(())
}

#[test]
fn profiles_are_the_latest_upsert_per_customer() -> Result<()> {
    let broker = Tansu::start_with_storage("sqlite://tansu.db")?;
    produce(&broker.brokers, 3_000, 400)?;
    let (want, bad) = batch_profiles(&broker.brokers)?;
    ensure!(
        want.len() > 100 && bad.len() >= 4,
        "weak input: {} profiles, {} bad",
        want.len(),
        bad.len()
    );

    let out = tempfile::tempdir()?;
    run(&broker.brokers, out.path())?;

    let got: BTreeMap<u64, Value> = read_jsonl(&out.path().join("customer_profiles.jsonl"))?
        .into_iter()
        .map(|row| Ok((row["user_id"].as_u64().context("user_id")?, row)))
        .collect::<Result<_>>()?;
    for (user, row) in &want {
        match got.get(user) {
            Some(g) if g == row => {}
            Some(g) => bail!("user {user}: job has {g}, batch has {row}"),
            None => bail!("user {user}: missing from the job's output; batch has {row}"),
        }
    }
    let extra: Vec<&u64> = got.keys().filter(|u| !want.contains_key(u)).collect();
    ensure!(
        extra.is_empty(),
        "deleted or unknown users in the output: {extra:?}"
    );
    ensure_changelog_folds_to_snapshot(out.path(), "customer_profiles")?;
    let changes = read_jsonl(&out.path().join("customer_profiles.changelog.jsonl"))?;
    ensure!(
        changes.len() > want.len() + 200,
        "only {} changes for {} profiles: updates across epochs should retract earlier values",
        changes.len(),
        want.len()
    );

    let dead: BTreeSet<(i32, i64)> = read_jsonl(&out.path().join("dead_letters.jsonl"))?
        .iter()
        .map(|d| {
            let source = d["source"].as_str().context("source")?;
            let partition = source
                .strip_prefix(&format!("profiles:{TOPIC}/"))
                .with_context(|| format!("dead letter source `{source}`"))?
                .parse()?;
            Ok((partition, d["position"].as_i64().context("position")?))
        })
        .collect::<Result<_>>()?;
    ensure!(
        dead == bad,
        "dead letters {dead:?}, batch found bad messages at {bad:?}"
    );
    Ok(())
}
