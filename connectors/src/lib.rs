//! CAP connectors: where data comes from and where results go.
//!
//! - [`clickstream`]: the event model of the output contract and its CSV/JSON codecs.
//! - [`crm`]: CRM customer profiles as keyed upserts (read with [`open_profiles`]).
//! - [`generator`]: a deterministic, calibrated synthetic clickstream (a source and the
//!   `generate` command).
//! - [`file`]: replays CSV/JSON files (plain or gzip) as a partitioned source.
//! - [`sinks`]: the JSON-lines file sink (changelog + snapshot), the null sink and the
//!   tee that writes a table to several sinks.
//! - [`lake`]: the lakehouse sink: Parquet tables on local disk, S3, Azure, GCS or HDFS.
//! - [`notify`]: notification channels (webhooks) that rows of a table, by default
//!   `alerts`, are also delivered to.
//!
//! Jobs open their sources with the opener of the record type they read (e.g.
//! [`open_clickstream`]) and link [`Connectors`] into their binary, which gives the engine
//! its sinks and the CLI its extra commands:
//!
//! ```no_run
//! # struct MyJob;
//! # impl cap_engine::job::Job for MyJob {
//! #   fn name(&self) -> &'static str { "my-job" }
//! #   fn about(&self) -> &'static str { "" }
//! #   fn default_config(&self) -> &'static str { "" }
//! #   fn tables(&self) -> Vec<&'static str> { vec![] }
//! #   fn build<'s>(&self, _df: &mut cap_engine::job::Dataflow<'s>) -> Result<(), cap_engine::job::BuildError> { Ok(()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     cap_engine::cli::main(MyJob, std::sync::Arc::new(cap_connectors::Connectors))
//! }
//! ```
#![warn(missing_docs)]

use std::sync::Arc;

use cap_engine::cli::Extension;
use cap_engine::config::{typed_table, NotifyConfig, SinkConfig};
use cap_engine::metrics::Registry;
use cap_engine::sink::{SinkError, SinkFactory, TableSchema, TableWriter};
use cap_engine::source::{Source, SourceError};

pub mod clickstream;
pub mod crm;
pub mod file;
pub mod generate_cmd;
pub mod generator;
pub mod json_order;
pub mod kafka;
pub mod lake;
pub mod notify;
pub mod replay_cmd;
pub mod sinks;

use clickstream::Event;

/// Opens a clickstream source from its `[sources.NAME]` table: `kind = "generator"` or
/// `kind = "file"`. Errors name the key and the reason.
pub fn open_clickstream(
    name: &str,
    table: &toml::Table,
) -> Result<Arc<dyn Source<Event>>, SourceError> {
    let prefix = format!("sources.{name}");
    let cfg_err = |e: cap_engine::config::ConfigError| SourceError::Config {
        source_name: name.to_owned(),
        reason: e.to_string(),
    };
    let kind = table.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    match kind {
        "generator" => {
            let mut t = table.clone();
            t.remove("kind");
            let cfg: generator::GeneratorConfig = typed_table(&prefix, t).map_err(cfg_err)?;
            cfg.validate().map_err(|reason| SourceError::Config {
                source_name: name.to_owned(),
                reason: format!("{prefix}: {reason}"),
            })?;
            let source = generator::GeneratorSource::try_new(name, cfg).map_err(|e| {
                SourceError::Config {
                    source_name: name.to_owned(),
                    reason: format!("{prefix}: {e}"),
                }
            })?;
            Ok(Arc::new(source))
        }
        "file" => {
            let cfg: file::FileSourceConfig =
                typed_table(&prefix, table.clone()).map_err(cfg_err)?;
            Ok(Arc::new(file::FileSource::new(name, cfg)?))
        }
        "kafka" => {
            let cfg: kafka::KafkaSourceConfig =
                typed_table(&prefix, table.clone()).map_err(cfg_err)?;
            Ok(Arc::new(kafka::KafkaSource::new(name, cfg)?))
        }
        other => Err(SourceError::Config {
            source_name: name.to_owned(),
            reason: format!("{prefix}.kind is `{other}`; expected `generator`, `file` or `kafka`"),
        }),
    }
}

/// Opens a CRM profile source from its `[sources.NAME]` table: `kind = "kafka"`, whose
/// topics hold JSON profiles keyed by user id, and tombstones (see [`crm`]). Errors name
/// the key and the reason.
pub fn open_profiles(
    name: &str,
    table: &toml::Table,
) -> Result<Arc<dyn Source<crm::ProfileUpsert>>, SourceError> {
    let prefix = format!("sources.{name}");
    let kind = table.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    if kind != "kafka" {
        return Err(SourceError::Config {
            source_name: name.to_owned(),
            reason: format!("{prefix}.kind is `{kind}`; profile sources are `kafka`"),
        });
    }
    let cfg: kafka::KafkaSourceConfig =
        typed_table(&prefix, table.clone()).map_err(|e| SourceError::Config {
            source_name: name.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(kafka::KafkaSource::profiles(name, cfg)?))
}

/// The connectors linked into a job binary: sinks (`file`, `null`) and the `generate` command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connectors;

impl SinkFactory for Connectors {
    fn open(&self, table: &str, config: &SinkConfig) -> Result<Box<dyn TableWriter>, SinkError> {
        sinks::FileAndNullSinks.open(table, config)
    }

    /// The table's sink, wrapped in a [`notify::NotifyingWriter`] when channels notify it.
    fn open_bound(
        &self,
        table: &str,
        config: &SinkConfig,
        notify: &[NotifyConfig],
        registry: &Registry,
        schema: Option<&TableSchema>,
    ) -> Result<Box<dyn TableWriter>, SinkError> {
        let kinds: Vec<&str> = config.kind.split(',').map(str::trim).collect();
        let mut writers = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            if kinds[..i].contains(kind) {
                return Err(SinkError {
                    table: table.to_owned(),
                    what: format!("sinks.kind `{}` names `{kind}` twice", config.kind),
                    cause: None,
                });
            }
            // The Kafka sink counts its deliveries in the registry; the Parquet sink needs
            // the table's columns; the others need neither.
            let writer: Box<dyn TableWriter> = match *kind {
                "kafka" => Box::new(kafka::KafkaChangelogSink::open_with_metrics(
                    table,
                    &config.kafka,
                    kafka::SinkDeliveryMetrics::new(registry, table),
                )?),
                "parquet" => Box::new(lake::ParquetTableSink::open(
                    table,
                    schema,
                    &config.parquet,
                    &config.dir,
                    config.snapshot_interval_ms,
                )?),
                _ => {
                    let one = SinkConfig {
                        kind: (*kind).to_owned(),
                        ..config.clone()
                    };
                    self.open(table, &one)?
                }
            };
            writers.push(writer);
        }
        let writer: Box<dyn TableWriter> = if writers.len() == 1 {
            writers.remove(0)
        } else {
            Box::new(sinks::Tee::new(writers))
        };
        if notify.is_empty() {
            return Ok(writer);
        }
        Ok(Box::new(notify::NotifyingWriter::open(
            table, writer, notify, registry,
        )?))
    }
}

impl Extension for Connectors {
    fn commands(&self) -> Vec<clap::Command> {
        vec![generate_cmd::command(), replay_cmd::command()]
    }

    fn run(&self, name: &str, matches: &clap::ArgMatches) -> Option<Result<(), String>> {
        match name {
            "generate" => Some(generate_cmd::run(matches)),
            "replay" => Some(replay_cmd::run(matches)),
            _ => None,
        }
    }
}

impl cap_engine::cli::Connectors for Connectors {
    fn sink_factory(self: Arc<Self>) -> Arc<dyn SinkFactory> {
        self
    }
}
