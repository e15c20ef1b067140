//! The examples of `docs/kafka-services.md` against the code, so the page cannot drift
//! from the keys that exist.
//!
//! ```text
//!  every ```toml block, numbered from 1 in page order
//!    ├─ parses as TOML
//!    ├─ layered as a --config file over generator defaults (Layers::merge_file)
//!    ├─ [sources.NAME]  -> typed_table::<KafkaSourceConfig> (as open_clickstream does)
//!    ├─ [sinks]         -> Layers::typed::<SinksConfig>("sinks") (as the job does)
//!    └─ every librdkafka property -> librdkafka's own configuration parser
//!       (rd_kafka_conf_set through rdkafka's create_native_config: no client is
//!       created, nothing connects)
//! ```
//!
//! A failure names the block by its number and line. Non-guarantees: a property that
//! needs a library this build lacks (OpenSSL) is checked by name and, for enumerations,
//! by value, but not by use; string values (paths, passwords) are not checked at all, and
//! neither is anything only a broker can judge.

use std::collections::BTreeMap;
use std::io::Write;

use cap_engine::config::{typed_table, EngineConfig, Layers, SinksConfig};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use super::{client_config, KafkaSourceConfig};

/// The page under test.
const PAGE: &str = include_str!("../../../docs/kafka-services.md");

/// What every job's embedded defaults look like: a generator source and a file sink. A
/// block that makes `clickstream` a Kafka source replaces that table (config layering),
/// so a generator key left behind would fail here as it would in the job.
const DEFAULTS: &str = r#"
[engine]
workers = 2
[sources.clickstream]
kind = "generator"
seed = 42
[sinks]
kind = "file"
dir = "out/customer-analytics"
"#;

/// What librdkafka says when a property needs a library this build does not have.
const NOT_IN_BUILD: &str = "not available at build time";

/// The SASL mechanisms librdkafka knows (CONFIGURATION.md, `sasl.mechanisms`).
const MECHANISMS: &[&str] = &[
    "GSSAPI",
    "PLAIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "OAUTHBEARER",
];

/// Properties the source sets itself (`KafkaSource::client_config`), and why a page
/// example must not: its properties are applied last and would replace them.
const SOURCE_OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("group.id", "use `group_id`"),
    ("enable.auto.commit", "the source commits by itself"),
    (
        "enable.auto.offset.store",
        "the source stores offsets by itself",
    ),
    ("enable.partition.eof", "the source needs it off"),
    ("queued.max.messages.kbytes", "use `queued_max_kbytes`"),
    ("statistics.interval.ms", "the lag metric needs CAP's value"),
];

/// Properties the sink sets itself (`client_config`, `KafkaChangelogSink::open`).
const SINK_OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("enable.idempotence", "CAP's value wins"),
    ("message.timeout.ms", "CAP's value wins"),
    ("partitioner", "CAP's value wins"),
    ("linger.ms", "CAP's value wins"),
];

/// One fenced block of the page.
struct Block {
    /// 1-based, in page order, counting `toml` blocks only.
    number: usize,
    /// 1-based line of the opening fence.
    line: usize,
    /// The nearest heading above the block.
    heading: String,
    text: String,
}

impl Block {
    fn name(&self) -> String {
        format!(
            "docs/kafka-services.md block {} (line {})",
            self.number, self.line
        )
    }
}

/// Every ```toml block of `page`; an unterminated one is an error.
fn toml_blocks(page: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    let mut in_other_fence = false;
    for (i, line) in page.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if let Some(block) = open.as_mut() {
            if fence {
                blocks.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
        } else if in_other_fence {
            in_other_fence = !fence;
        } else if fence && line.trim_start().trim_start_matches('`').trim() == "toml" {
            open = Some(Block {
                number: blocks.len() + 1,
                line: i + 1,
                heading: heading.clone(),
                text: String::new(),
            });
        } else if fence {
            in_other_fence = true;
        } else if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_owned();
        }
    }
    match open {
        Some(b) => Err(format!("{}: the block is never closed", b.name())),
        None => Ok(blocks),
    }
}

/// Whether the linked librdkafka was built with OpenSSL.
fn build_has_openssl() -> bool {
    ClientConfig::new()
        .set("security.protocol", "ssl")
        .create_native_config()
        .is_ok()
}

/// What a good block needs from the build.
#[derive(Debug, Default)]
struct Needs {
    /// Some property or mechanism needs OpenSSL, which this build lacks.
    openssl: bool,
}

/// Checks one client's properties: CAP's own keys left alone, SASL mechanisms that
/// exist and that CAP can serve, and each property and value known to librdkafka.
/// Messages never print values (they may be secrets).
fn check_properties(
    at: &str,
    config: &ClientConfig,
    owned: &[(&str, &str)],
    user: &BTreeMap<String, String>,
    needs: &mut Needs,
) -> Vec<String> {
    let mut errors = Vec::new();
    for key in user.keys() {
        if let Some((_, why)) = owned.iter().find(|(k, _)| k == key) {
            errors.push(format!(
                "`{at}.\"{key}\"` is set by CAP itself ({why}); leave it out"
            ));
        }
    }
    for key in ["sasl.mechanism", "sasl.mechanisms"] {
        let Some(mechanism) = user.get(key) else {
            continue;
        };
        if !MECHANISMS.contains(&mechanism.as_str()) {
            errors.push(format!(
                "`{at}.\"{key}\"` is `{mechanism}`; librdkafka knows {MECHANISMS:?}"
            ));
        } else if mechanism == "OAUTHBEARER" {
            errors.push(format!(
                "`{at}.\"{key}\"` is OAUTHBEARER, but CAP's clients implement no token refresh"
            ));
        } else if mechanism.starts_with("SCRAM-") && !build_has_openssl() {
            // rd_kafka_conf_set accepts any text here; librdkafka refuses SCRAM without
            // OpenSSL only when a client is created.
            needs.openssl = true;
        }
    }
    for key in config.config_map().keys() {
        let Some(value) = config.get(key) else {
            continue;
        };
        let single = ClientConfig::new().set(*key, value).create_native_config();
        match single {
            Ok(_) => {}
            Err(KafkaError::ClientConfig(_, desc, _, _)) if desc.contains(NOT_IN_BUILD) => {
                if desc.contains("OpenSSL") {
                    needs.openssl = true;
                } else {
                    errors.push(format!(
                        "`{at}.\"{key}\"`: {desc} (this build cannot use it at all)"
                    ));
                }
            }
            Err(KafkaError::ClientConfig(_, desc, _, _)) => {
                errors.push(format!("`{at}.\"{key}\"`: librdkafka says: {desc}"))
            }
            Err(e) => errors.push(format!("`{at}.\"{key}\"`: {e}")),
        }
    }
    errors
}

/// Checks one block; returns what it needs from the build, or every problem found.
fn check_block(block: &Block) -> Result<Needs, Vec<String>> {
    let one = |e: String| vec![e];
    let own: toml::Table = block
        .text
        .parse()
        .map_err(|e: toml::de::Error| one(format!("not TOML: {e}")))?;

    // Layered exactly as `--config FILE` is, over defaults shaped like a job's.
    let mut file = tempfile::NamedTempFile::new().map_err(|e| one(e.to_string()))?;
    file.write_all(block.text.as_bytes())
        .map_err(|e| one(e.to_string()))?;
    let mut layers = Layers::from_defaults(DEFAULTS).map_err(|e| one(e.to_string()))?;
    layers
        .merge_file(file.path())
        .map_err(|e| one(e.to_string()))?;

    let mut errors = Vec::new();
    let mut needs = Needs::default();
    let mut kafka_sources = 0;
    let mut kafka_sinks = 0;

    if own.contains_key("engine") {
        if let Err(e) = layers.typed::<EngineConfig>("engine") {
            errors.push(e.to_string());
        }
    }

    let names: Vec<String> = own
        .get("sources")
        .and_then(|s| s.as_table())
        .map(|s| s.keys().cloned().collect())
        .unwrap_or_default();
    for name in names {
        let prefix = format!("sources.{name}");
        let table = layers.table_at(&prefix);
        let kind = table.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind != "kafka" {
            errors.push(format!(
                "`{prefix}.kind` is `{kind}`; this page is about `kind = \"kafka\"`"
            ));
            continue;
        }
        // The path `open_clickstream` takes.
        let cfg: KafkaSourceConfig = match typed_table(&prefix, table) {
            Ok(cfg) => cfg,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        kafka_sources += 1;
        // What `KafkaSource::new` checks before it talks to a broker.
        if cfg.brokers.trim().is_empty() {
            errors.push(format!("`{prefix}.brokers` is empty"));
        }
        if cfg.topics.is_empty() {
            errors.push(format!("`{prefix}` has no [[{prefix}.topics]]"));
        }
        if cfg.topics.iter().any(|t| t.name.trim().is_empty()) {
            errors.push(format!("`{prefix}.topics` has a topic without a name"));
        }
        // As `KafkaSource::client_config` builds it, minus the keys CAP fills in.
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &cfg.brokers);
        for (k, v) in &cfg.properties {
            client.set(k, v);
        }
        errors.extend(check_properties(
            &format!("{prefix}.properties"),
            &client,
            SOURCE_OWNED,
            &cfg.properties,
            &mut needs,
        ));
    }

    if let Some(own_sinks) = own.get("sinks").and_then(|s| s.as_table()) {
        // The path the job takes (`Layers::typed("sinks")`).
        match layers.typed::<SinksConfig>("sinks") {
            Err(e) => errors.push(e.to_string()),
            Ok(sinks) => {
                let mut bound = vec![("sinks".to_owned(), sinks.default.clone())];
                bound.extend(
                    sinks
                        .tables
                        .iter()
                        .map(|(t, c)| (format!("sinks.tables.{t}"), c.clone())),
                );
                for (at, sink) in bound {
                    let has_kafka = if at == "sinks" {
                        own_sinks.contains_key("kafka")
                    } else {
                        layers.table_at(&at).contains_key("kafka")
                    };
                    if sink.kind != "kafka" {
                        if has_kafka {
                            errors.push(format!(
                                "`{at}.kafka` is set but `{at}.kind` is `{}`, so the sink ignores it",
                                sink.kind
                            ));
                        }
                        continue;
                    }
                    kafka_sinks += 1;
                    let kafka = &sink.kafka;
                    if kafka.brokers.trim().is_empty() {
                        errors.push(format!("`{at}.kafka.brokers` is empty"));
                    }
                    // The sink's own client configuration, as it builds it.
                    errors.extend(check_properties(
                        &format!("{at}.kafka.properties"),
                        &client_config(kafka),
                        SINK_OWNED,
                        &kafka.properties,
                        &mut needs,
                    ));
                }
            }
        }
    }

    if kafka_sources == 0 {
        errors
            .push("no [sources.NAME] with kind = \"kafka\": every example shows the source".into());
    }
    if kafka_sinks == 0 {
        errors.push("no [sinks] with kind = \"kafka\": every example shows the sink".into());
    }
    if errors.is_empty() {
        Ok(needs)
    } else {
        Err(errors)
    }
}

/// Checks every block of `page`, and that each block's heading says whether this build
/// can use it. Returns every problem, each naming its block.
fn check_page(page: &str) -> Vec<String> {
    let blocks = match toml_blocks(page) {
        Ok(blocks) => blocks,
        Err(e) => return vec![e],
    };
    if blocks.is_empty() {
        return vec!["docs/kafka-services.md has no ```toml block".into()];
    }
    let openssl = build_has_openssl();
    let mut errors = Vec::new();
    for block in &blocks {
        match check_block(block) {
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", block.name())),
            ),
            Ok(needs) if !openssl => {
                let says_works = block.heading.contains("works with this build");
                let says_openssl = block.heading.contains("OpenSSL build");
                if needs.openssl && !says_openssl {
                    errors.push(format!(
                        "{}: needs a build with OpenSSL, but its heading `{}` does not say so",
                        block.name(),
                        block.heading
                    ));
                }
                if !needs.openssl && !says_works {
                    errors.push(format!(
                        "{}: works with this build, but its heading `{}` does not say \"works with this build\"",
                        block.name(),
                        block.heading
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    errors
}

#[test]
fn every_toml_block_of_kafka_services_md_matches_the_code() {
    let errors = check_page(PAGE);
    assert!(
        errors.is_empty(),
        "{} problem(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn the_build_has_what_kafka_services_md_promises() {
    // "What this build can connect with": TLS, SCRAM and zstd through librdkafka's own
    // parser, so dropping an rdkafka feature from Cargo.toml fails here, not at a customer.
    assert!(build_has_openssl(), "librdkafka was built without OpenSSL");
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("compression.type", "zstd"),
        ("ssl.endpoint.identification.algorithm", "https"),
    ] {
        let result = ClientConfig::new().set(key, value).create_native_config();
        assert!(result.is_ok(), "{key} = {value}: {:?}", result.err());
        assert!(PAGE.contains(value), "the page does not mention {value}");
    }
    assert!(
        !PAGE.contains(NOT_IN_BUILD),
        "the page still quotes a build without OpenSSL"
    );
}

/// The page's "Secrets" section, against the config layers.
#[test]
fn a_dotted_property_cannot_come_from_the_environment_but_a_whole_table_can() -> anyhow::Result<()>
{
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(
        br#"
[sources.clickstream]
kind = "kafka"
brokers = "localhost:9092"
[[sources.clickstream.topics]]
name = "clickstream"
[sources.clickstream.properties]
"security.protocol" = "SASL_SSL"
[sinks]
kind = "kafka"
[sinks.kafka.properties]
"security.protocol" = "SASL_SSL"
"client.id" = "cap"
"#,
    )?;
    let base = || -> anyhow::Result<Layers> {
        let mut layers = Layers::from_defaults(DEFAULTS)?;
        layers.merge_file(file.path())?;
        Ok(layers)
    };
    let source = |layers: &Layers| {
        typed_table::<KafkaSourceConfig>(
            "sources.clickstream",
            layers.table_at("sources.clickstream"),
        )
        .err()
        .map(|e| e.to_string().trim_end().to_owned())
    };
    let sink = |layers: &Layers| {
        layers
            .typed::<SinksConfig>("sinks")
            .err()
            .map(|e| e.to_string().trim_end().to_owned())
    };
    let source_error = "config key `sources.clickstream.properties.sasl`: invalid type: map, \
                        expected a string\nin `properties.sasl`";
    // `SinksConfig` flattens the default sink, which hides the rest of the path.
    let sink_error = "config key `sinks`: invalid type: map, expected a string";
    for quoted in [source_error, sink_error] {
        assert!(
            PAGE.contains(&format!("error: {quoted}")),
            "docs/kafka-services.md, \"Secrets\", should quote `error: {quoted}`"
        );
    }

    // One property from the environment: `.` splits the librdkafka name.
    let mut layers = base()?;
    layers.merge_env([
        (
            "CAP_SOURCES__CLICKSTREAM__PROPERTIES__SASL.PASSWORD".to_owned(),
            "secret".to_owned(),
        ),
        (
            "CAP_SINKS__KAFKA__PROPERTIES__SASL.PASSWORD".to_owned(),
            "secret".to_owned(),
        ),
    ])?;
    assert_eq!(source(&layers).as_deref(), Some(source_error));
    assert_eq!(sink(&layers).as_deref(), Some(sink_error));

    // The same through --set.
    let mut layers = base()?;
    layers.set("sources.clickstream.properties.sasl.password", "secret")?;
    layers.set("sinks.kafka.properties.sasl.password", "secret")?;
    assert_eq!(source(&layers).as_deref(), Some(source_error));
    assert_eq!(sink(&layers).as_deref(), Some(sink_error));

    // A whole inline table works, and replaces the file's table rather than merging.
    let mut layers = base()?;
    layers.merge_env([(
        "CAP_SINKS__KAFKA__PROPERTIES".to_owned(),
        r#"{ "sasl.password" = "secret", "sasl.mechanism" = "PLAIN" }"#.to_owned(),
    )])?;
    let sinks: SinksConfig = layers.typed("sinks")?;
    let want: BTreeMap<String, String> = [("sasl.password", "secret"), ("sasl.mechanism", "PLAIN")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(sinks.default.kafka.properties, want);
    Ok(())
}

/// The checker itself: a bad block fails, named by its number.
#[test]
fn a_bad_block_is_named_by_its_number() {
    let good = r#"
[sources.clickstream]
kind = "kafka"
brokers = "localhost:9092"
[[sources.clickstream.topics]]
name = "clickstream"

[sinks]
kind = "kafka"
[sinks.kafka]
brokers = "localhost:9092"
"#;
    let page = format!(
        "# A (works with this build)\n```toml\n{good}```\n\
         ```sh\necho not toml\n```\n\
         # B (works with this build)\n```toml\n{}```\n\
         # C (works with this build)\n```toml\n{}```\n\
         # D (works with this build)\n```toml\n{}```\n",
        good.replace("brokers = \"localhost:9092\"\n[[", "broker = \"localhost:9092\"\n[["),
        good.replace(
            "[sinks.kafka]\nbrokers = \"localhost:9092\"\n",
            "[sinks.kafka]\nbrokers = \"localhost:9092\"\n[sinks.kafka.properties]\n\"sasl.mechanismz\" = \"PLAIN\"\n",
        ),
        good.replace("kind = \"kafka\"\n[sinks.kafka]", "kind = \"file\"\n[sinks.kafka]"),
    );
    let errors = check_page(&page);
    let about = |n: usize| {
        errors
            .iter()
            .filter(|e| e.starts_with(&format!("docs/kafka-services.md block {n} ")))
            .count()
    };
    assert_eq!(about(1), 0, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("block 2 ") && e.contains("broker")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("block 3 ") && e.contains("sasl.mechanismz")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("block 4 ") && e.contains("the sink ignores it")),
        "{errors:#?}"
    );
    assert_eq!(about(5), 0, "there is no block 5: {errors:#?}");
}
