//! Layered, typed configuration: embedded defaults, then a TOML file, then environment
//! variables, then command-line flags.
//!
//! Every layer is a TOML table; later layers override earlier ones key by key (tables merge,
//! scalars and arrays replace). The merged table is then deserialized into typed structs,
//! and any error names the dotted key and the reason ("`engine.workers`: invalid type:
//! string \"two\", expected usize"). Validation happens at start-up, before any worker runs.
//!
//! Environment variables: `CAP_<SECTION>__<KEY>[__<KEY>...]=value`, e.g.
//! `CAP_ENGINE__WORKERS=2` or `CAP_SOURCES__CLICKSTREAM__PATH=/data/events.csv`. Keys are
//! lower-cased; the value is read as a TOML literal when it parses as one (`2`, `true`,
//! `"x"`, `[1, 2]`) and as a plain string otherwise.
//!
//! Layout of the file (see `docs/runbook.md` for every key):
//! ```toml
//! [engine]            # runtime: workers, epochs, metrics, console
//! [sources.NAME]      # one table per source the job declares; `kind` picks the connector
//! [sinks]             # default sink for every table; [sinks.tables.NAME] overrides one
//! [job]               # the job's own settings
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration error: which key (or file) and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key has a value of the wrong type or an invalid value.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Result alias for configuration.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Runtime settings, the `[engine]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes in the cluster.
    pub processes: usize,
    /// This process's index, 0-based.
    pub process: usize,
    /// File with one `host:port` per process, in process order (empty: localhost:2101+i).
    pub hostfile: Option<PathBuf>,
    /// Close an epoch after this many records read by a worker (0: no record limit).
    pub epoch_records: u64,
    /// Close an epoch after this many milliseconds (0: no time limit).
    pub epoch_ms: u64,
    /// Epochs a worker may read ahead of its completed outputs (backpressure), at least 1.
    pub max_epochs_in_flight: u64,
    /// Stop after this many records per source in all (split over partitions); none: run until
    /// the sources end or a stop signal.
    pub max_events: Option<u64>,
    /// Address for the Prometheus `/metrics` endpoint (e.g. `127.0.0.1:9464`); none: off.
    pub metrics_addr: Option<String>,
    /// Log filter (`info`, `debug`, `cap_engine=debug`...). `RUST_LOG` overrides it.
    pub log_level: String,
    /// Print a live summary to stderr.
    pub console: bool,
    /// Milliseconds between console summaries.
    pub console_interval_ms: u64,
    /// Tables whose current rows the console shows (small tables only).
    pub console_tables: Vec<String>,
    /// Where the engine writes its own records (epoch positions log).
    pub state_dir: PathBuf,
    /// Tables to compute and write; empty (default): every table of the job. A job skips
    /// building the dataflow of a table nobody asked for (see `Dataflow::wants`).
    pub tables: Vec<String>,
    /// Checkpoints and restore (`[engine.checkpoint]`).
    pub checkpoint: crate::checkpoint::CheckpointConfig,
    /// This run's number in the epoch log; none: the next after the newest (one process).
    pub run: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            epoch_records: 100_000,
            epoch_ms: 1000,
            max_epochs_in_flight: 2,
            max_events: None,
            metrics_addr: None,
            log_level: "info".into(),
            console: true,
            console_interval_ms: 1000,
            console_tables: Vec::new(),
            state_dir: PathBuf::from("out/_state"),
            tables: Vec::new(),
            checkpoint: crate::checkpoint::CheckpointConfig::default(),
            run: None,
        }
    }
}

impl EngineConfig {
    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: format!("engine.{key}"),
                reason: reason.into(),
            })
        };
        if self.workers == 0 {
            return bad("workers", "must be at least 1");
        }
        if self.processes == 0 {
            return bad("processes", "must be at least 1");
        }
        if self.process >= self.processes {
            return bad(
                "process",
                &format!(
                    "is {} but must be below engine.processes ({})",
                    self.process, self.processes
                ),
            );
        }
        if self.epoch_records == 0 && self.epoch_ms == 0 {
            return bad(
                "epoch_records",
                "and engine.epoch_ms are both 0: epochs would never close",
            );
        }
        if self.max_epochs_in_flight == 0 {
            return bad("max_epochs_in_flight", "must be at least 1");
        }
        if self.console_interval_ms == 0 {
            return bad("console_interval_ms", "must be at least 1");
        }
        self.checkpoint.validate()
    }
}

/// Sink binding: the `[sinks]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Default sink for every table.
    #[serde(flatten)]
    pub default: SinkConfig,
    /// Per-table overrides, by table name.
    pub tables: BTreeMap<String, SinkConfig>,
    /// Notification channels (`[[sinks.notify]]`): rows of a table (by default `alerts`)
    /// are also delivered there, after the table's own sink has written them.
    pub notify: Vec<NotifyConfig>,
}

impl SinksConfig {
    /// The sink configuration for `table`.
    pub fn for_table(&self, table: &str) -> &SinkConfig {
        self.tables.get(table).unwrap_or(&self.default)
    }

    /// The notification channels of `table`, in configuration order.
    pub fn notify_for(&self, table: &str) -> Vec<NotifyConfig> {
        self.notify
            .iter()
            .filter(|n| n.table == table)
            .cloned()
            .collect()
    }

    /// Checks what types alone cannot, for a job whose tables are `tables`: every
    /// notification channel (errors name `sinks.notify[i].<key>`).
    pub fn validate(&self, tables: &[&str]) -> Result<()> {
        for (i, n) in self.notify.iter().enumerate() {
            n.validate(&format!("sinks.notify[{i}]"), tables)?;
        }
        Ok(())
    }
}

/// One sink binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Connector kind: `file` (JSON lines changelog + snapshot), `kafka` (keyed changelog
    /// topics), `parquet` (lakehouse tables) or `null` (discard); several joined by commas
    /// (`"kafka,parquet"`) write every change to each.
    pub kind: String,
    /// Output directory of the file sink.
    pub dir: PathBuf,
    /// Milliseconds between snapshot rewrites of the file sink (the final one is always written).
    pub snapshot_interval_ms: u64,
    /// The Kafka sink's settings (`[sinks.kafka]`), read when `kind` names `kafka`.
    pub kafka: KafkaSinkConfig,
    /// The Parquet lakehouse sink's settings (`[sinks.parquet]`), read when `kind` names
    /// `parquet`.
    pub parquet: ParquetSinkConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: "file".into(),
            dir: PathBuf::from("out"),
            snapshot_interval_ms: 5000,
            kafka: KafkaSinkConfig::default(),
            parquet: ParquetSinkConfig::default(),
        }
    }
}

/// Where and how the Parquet sink writes: the gold tables of the lakehouse
/// (`<url>/gold/<table>/`, see `docs/lakehouse.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetSinkConfig {
    /// The lake's root: a directory, or a URL: `file:///path`, `s3://bucket/prefix`,
    /// `az://container/prefix` / `abfss://container@account.dfs.core.windows.net/prefix`,
    /// `gs://bucket/prefix`, `hdfs://namenode:port/path`. Empty (default): `<dir>/lake`.
    pub url: String,
    /// Object store options passed through (`aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_region`, `aws_endpoint`, `aws_allow_http`, `azure_storage_account_name`,
    /// `azure_storage_account_key`, `google_service_account`, ...); the store's own
    /// environment variables (`AWS_ACCESS_KEY_ID`, ...) are read too. Booleans and numbers
    /// are taken as their text (`aws_allow_http = true`).
    #[serde(deserialize_with = "scalars_as_text")]
    pub options: BTreeMap<String, String>,
    /// A changelog file is closed once it holds this many rows; the changes queued when a
    /// file is written go into one file, so files grow with the load.
    pub file_rows: usize,
    /// Rows per Parquet row group (each row group and page carries min/max statistics).
    pub row_group_rows: usize,
    /// zstd level of the pages (1-22).
    pub zstd_level: i32,
    /// Epochs queued for the background writer before the table's sink waits (bounded
    /// memory; backpressure reaches the sources through the output frontier).
    pub queue_epochs: usize,
    /// Compact the oldest changelog files into one once this many are smaller than
    /// `file_rows` (0: never compact).
    pub compact_files: usize,
}

/// A table of scalars as text: `true` -> `"true"`, `3` -> `"3"`; a table or array is refused.
fn scalars_as_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Boolean(_) | toml::Value::Integer(_) | toml::Value::Float(_) => {
                Ok((k, v.to_string()))
            }
            other => Err(serde::de::Error::custom(format!(
                "option `{k}` is a {}; expected text, a number or a boolean",
                other.type_str()
            ))),
        })
        .collect()
}

impl Default for ParquetSinkConfig {
    fn default() -> Self {
        ParquetSinkConfig {
            url: String::new(),
            options: BTreeMap::new(),
            file_rows: 1_000_000,
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            queue_epochs: 16,
            compact_files: 32,
        }
    }
}

/// Where the Kafka sink writes: each table is the changelog topic `<topic_prefix><table>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, comma separated (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Prefix of every output topic (default `cap.`).
    pub topic_prefix: String,
    /// Create a missing output topic with this many partitions (0: never create; the topic
    /// must exist).
    pub create_partitions: i32,
    /// Replication factor of created topics.
    pub create_replication: i32,
    /// How long one epoch's delivery may wait for the brokers before the job logs and
    /// keeps waiting, in ms.
    pub delivery_warn_ms: u64,
    /// librdkafka properties passed through as they are (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, `compression.type`, ...).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: "localhost:9092".into(),
            topic_prefix: "cap.".into(),
            create_partitions: 3,
            create_replication: 1,
            delivery_warn_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

/// The severities of `alerts` rows, lowest first: `min_severity` names one of them.
pub const ALERT_SEVERITIES: &[&str] = &["warning", "critical"];

/// What delivers a notification channel's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// An HTTP(S) POST of a JSON body to `url`.
    #[default]
    Webhook,
}

/// The body a webhook posts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// `{"alert_id": .., "alert": <the row>, "table": ..}`.
    #[default]
    Json,
    /// A Slack incoming webhook's `{"text": ..}`.
    Slack,
    /// A Microsoft Teams incoming webhook's MessageCard.
    Teams,
}

/// One notification channel, an entry of `[[sinks.notify]]` (`docs/runbook.md`,
/// "Notifications", describes every key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Connector kind: `webhook`.
    pub kind: NotifyKind,
    /// The table whose rows are notified (default `alerts`).
    pub table: String,
    /// Where the webhook posts (`http://` or `https://`).
    pub url: String,
    /// The body: `json` (default), `slack` or `teams`.
    pub format: NotifyFormat,
    /// Only rows whose `severity` is at least this one (see [`ALERT_SEVERITIES`]); none:
    /// every row.
    pub min_severity: Option<String>,
    /// Notifications per minute at most (a token bucket of this many, refilled evenly).
    pub max_per_minute: u32,
    /// Retries of a notification after its first attempt, on connection errors, timeouts,
    /// 429 and 5xx.
    pub retries: u32,
    /// Timeout of one request, in ms.
    pub timeout_ms: u64,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: BTreeMap<String, String>,
    /// Notifications waiting for the rate limit at most; more are folded into one summary.
    pub queue_len: usize,
    /// At the end of the run, how long the channel may keep delivering, in ms.
    pub drain_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            kind: NotifyKind::Webhook,
            table: "alerts".into(),
            url: String::new(),
            format: NotifyFormat::Json,
            min_severity: None,
            max_per_minute: 30,
            retries: 5,
            timeout_ms: 5000,
            headers: BTreeMap::new(),
            queue_len: 1000,
            drain_ms: 10_000,
        }
    }
}

impl NotifyConfig {
    /// Checks the values types cannot; errors name `<prefix>.<key>`. `tables` are the
    /// job's tables.
    pub fn validate(&self, prefix: &str, tables: &[&str]) -> Result<()> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                key: format!("{prefix}.{key}"),
                reason,
            })
        };
        if !tables.contains(&self.table.as_str()) {
            return bad(
                "table",
                format!(
                    "`{}` is not a table of this job (its tables: {})",
                    self.table,
                    tables.join(", ")
                ),
            );
        }
        let url = self.url.trim();
        if url.is_empty() {
            return bad(
                "url",
                "is empty; expected an http:// or https:// url".into(),
            );
        }
        let Some(rest) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
        else {
            return bad(
                "url",
                format!("`{url}` does not start with http:// or https://"),
            );
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') || url.chars().any(char::is_whitespace) {
            return bad("url", format!("`{url}` has no host or contains spaces"));
        }
        if let Some(min) = &self.min_severity {
            if !ALERT_SEVERITIES.contains(&min.as_str()) {
                return bad(
                    "min_severity",
                    format!(
                        "is `{min}`; expected one of {}",
                        ALERT_SEVERITIES.join(", ")
                    ),
                );
            }
        }
        if self.max_per_minute == 0 {
            return bad("max_per_minute", "must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "must be at least 1".into());
        }
        if self.queue_len == 0 {
            return bad("queue_len", "must be at least 1".into());
        }
        for (name, value) in &self.headers {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) {
                return bad(
                    &format!("headers.{name}"),
                    "is not a valid HTTP header name".into(),
                );
            }
            // The channel sets these itself: the body's type and the deduplication key.
            if ["content-type", "content-length", "idempotency-key"]
                .contains(&name.to_ascii_lowercase().as_str())
            {
                return bad(
                    &format!("headers.{name}"),
                    "is set by the channel and cannot be configured".into(),
                );
            }
            if value.chars().any(|c| c == '\r' || c == '\n') {
                return bad(&format!("headers.{name}"), "contains a line break".into());
            }
        }
        Ok(())
    }
}

/// The merged configuration tree, before and after typing.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    table: toml::Table,
}

impl Layers {
    /// Starts from embedded defaults (a TOML document compiled into the job).
    pub fn from_defaults(defaults: &str) -> Result<Layers> {
        let table: toml::Table =
            defaults
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: PathBuf::from("<embedded defaults>"),
                    message: e.to_string(),
                })?;
        Ok(Layers { table })
    }

    /// Merges a TOML file over the current layers.
    pub fn merge_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.into(),
            cause,
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        merge_layer(&mut self.table, table);
        Ok(())
    }

    /// Merges `CAP_*` variables from an environment (pass `std::env::vars()`).
    pub fn merge_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("CAP_") else {
                continue;
            };
            if !rest.contains("__") {
                continue; // e.g. CAP_TEST_HDFS_URL: not a config key
            }
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// Sets one dotted key (`sources.clickstream.path`) to a value given as text: a TOML
    /// literal when it parses as one, a string otherwise.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed = parse_literal(value);
        self.set_value(key, parsed)
    }

    /// Sets one dotted key to a typed value.
    pub fn set_value(&mut self, key: &str, value: toml::Value) -> Result<()> {
        let parts: Vec<&str> = key.split('.').collect();
        if let ["sources", name, "kind"] = parts[..] {
            if let Some(toml::Value::Table(sources)) = self.table.get_mut("sources") {
                let same = sources
                    .get(name)
                    .and_then(|t| t.get("kind"))
                    .is_some_and(|k| *k == value);
                if !same {
                    // A source whose connector changes starts from an empty table.
                    sources.remove(name);
                }
            }
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Invalid {
                key: key.into(),
                reason: "empty key segment".into(),
            });
        }
        let mut table = &mut self.table;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            let entry = table
                .entry((*part).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: parts[..=i].join("."),
                        reason: "is a value, not a table".into(),
                    })
                }
            };
        }
        table.insert(parts[parts.len() - 1].to_owned(), value);
        Ok(())
    }

    /// The sub-table at a dotted key (empty when absent).
    pub fn table_at(&self, key: &str) -> toml::Table {
        let mut t = &self.table;
        for part in key.split('.') {
            match t.get(part) {
                Some(toml::Value::Table(inner)) => t = inner,
                _ => return toml::Table::new(),
            }
        }
        t.clone()
    }

    /// Names of the sub-tables under `sources`.
    pub fn source_names(&self) -> Vec<String> {
        self.table_at("sources").keys().cloned().collect()
    }

    /// Deserializes the sub-table at `key` into `T`, with errors naming the full dotted key.
    pub fn typed<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        typed_table(key, self.table_at(key))
    }

    /// The whole merged tree, for printing.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.table)
            .unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }
}

/// Deserializes a table into `T`; errors name `prefix.path.to.key`.
pub fn typed_table<T: DeserializeOwned>(prefix: &str, table: toml::Table) -> Result<T> {
    let de = toml::Value::Table(table);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        ConfigError::Invalid {
            key,
            reason: e.into_inner().to_string(),
        }
    })
}

fn parse_literal(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

/// Merges one layer over the layers below it. A source whose `kind` the layer changes is
/// replaced whole, not merged: the keys of the old connector (a generator's `seed`) mean
/// nothing to the new one and would be rejected as unknown.
fn merge_layer(base: &mut toml::Table, mut over: toml::Table) {
    if let (Some(toml::Value::Table(below)), Some(toml::Value::Table(above))) =
        (base.get_mut("sources"), over.get_mut("sources"))
    {
        for (name, source) in above.iter() {
            let kind = source.get("kind");
            if kind.is_some() && below.get(name).and_then(|b| b.get("kind")) != kind {
                below.remove(name);
            }
        }
    }
    merge(base, over)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: &str = r#"
        [engine]
        workers = 1
        [sources.clickstream]
        kind = "generator"
        events = 10
    "#;

    #[test]
    fn layers_override_in_order() -> anyhow::Result<()> {
        let mut layers = Layers::from_defaults(DEFAULTS)?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("cap.toml");
        std::fs::write(&file, "[engine]\nworkers = 3\nepoch_ms = 50\n")?;
        layers.merge_file(&file)?;
        layers.merge_env(vec![
            ("CAP_ENGINE__WORKERS".to_owned(), "4".to_owned()),
            (
                "CAP_SOURCES__CLICKSTREAM__PATH".to_owned(),
                "/data/x.csv".to_owned(),
            ),
            ("CAP_TEST_HDFS_URL".to_owned(), "ignored".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ])?;
        layers.set("engine.epoch_records", "7")?;
        let engine: EngineConfig = layers.typed("engine")?;
        assert_eq!(engine.workers, 4);
        assert_eq!(engine.epoch_ms, 50);
        assert_eq!(engine.epoch_records, 7);
        let src = layers.table_at("sources.clickstream");
        assert_eq!(
            src.get("path").and_then(|v| v.as_str()),
            Some("/data/x.csv")
        );
        assert_eq!(src.get("kind").and_then(|v| v.as_str()), Some("generator"));
        assert_eq!(layers.source_names(), vec!["clickstream".to_owned()]);
        Ok(())
    }

    #[test]
    fn a_source_whose_kind_changes_is_replaced_not_merged() -> anyhow::Result<()> {
        let mut layers = Layers::from_defaults(DEFAULTS)?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("cap.toml");
        std::fs::write(
            &file,
            "[sources.clickstream]\nkind = \"kafka\"\nbrokers = \"b:9092\"\n",
        )?;
        layers.merge_file(&file)?;
        let src = layers.table_at("sources.clickstream");
        assert_eq!(
            src.get("events"),
            None,
            "generator keys left behind: {src:?}"
        );
        assert_eq!(src.get("brokers").and_then(|v| v.as_str()), Some("b:9092"));
        // The same kind merges key by key.
        std::fs::write(
            &file,
            "[sources.clickstream]\nkind = \"kafka\"\nstop = \"end\"\n",
        )?;
        layers.merge_file(&file)?;
        let src = layers.table_at("sources.clickstream");
        assert_eq!(src.get("brokers").and_then(|v| v.as_str()), Some("b:9092"));
        layers.set("sources.clickstream.kind", "file")?;
        layers.set("sources.clickstream.path", "/x.csv")?;
        let src = layers.table_at("sources.clickstream");
        assert_eq!(src.len(), 2, "{src:?}");
        Ok(())
    }

    #[test]
    fn errors_name_the_key() -> anyhow::Result<()> {
        let mut layers = Layers::from_defaults(DEFAULTS)?;
        layers.set("engine.workers", "two")?;
        let err = layers
            .typed::<EngineConfig>("engine")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("engine.workers"), "{err}");
        let mut layers = Layers::from_defaults(DEFAULTS)?;
        layers.set("engine.wrokers", "2")?;
        let err = layers
            .typed::<EngineConfig>("engine")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("wrokers"), "{err}");
        let engine = EngineConfig {
            process: 2,
            processes: 2,
            ..EngineConfig::default()
        };
        let err = engine
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("engine.process"), "{err}");
        Ok(())
    }

    #[test]
    fn notify_channels_parse_from_a_file_with_defaults() -> anyhow::Result<()> {
        let mut layers = Layers::from_defaults(DEFAULTS)?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("cap.toml");
        std::fs::write(
            &file,
            "[sinks]\nkind = \"null\"\n\
             [[sinks.notify]]\nkind = \"webhook\"\nurl = \"https://hooks.slack.com/services/T/B/x\"\n\
             format = \"slack\"\nmin_severity = \"critical\"\n\
             [sinks.notify.headers]\nAuthorization = \"Bearer t\"\n\
             [[sinks.notify]]\nurl = \"http://127.0.0.1:9/hook\"\ntable = \"other\"\n",
        )?;
        layers.merge_file(&file)?;
        let sinks: SinksConfig = layers.typed("sinks")?;
        assert_eq!(sinks.default.kind, "null");
        sinks.validate(&["alerts", "other"])?;
        let alerts = sinks.notify_for("alerts");
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].format, NotifyFormat::Slack);
        assert_eq!(alerts[0].headers["Authorization"], "Bearer t");
        let other = &sinks.notify_for("other")[0];
        assert_eq!(
            (
                other.kind,
                other.format,
                other.max_per_minute,
                other.retries
            ),
            (NotifyKind::Webhook, NotifyFormat::Json, 30, 5)
        );
        assert_eq!(
            (other.timeout_ms, other.drain_ms, other.queue_len),
            (5000, 10_000, 1000)
        );
        Ok(())
    }

    #[test]
    fn notify_config_errors_name_the_key() -> anyhow::Result<()> {
        // Types: the deserializer names the entry and the key.
        for (value, key) in [
            (
                "[{kind = \"email\", url = \"http://x\"}]",
                "sinks.notify[0].kind",
            ),
            (
                "[{url = \"http://x\"}, {url = \"http://x\", format = \"markdown\"}]",
                "sinks.notify[1].format",
            ),
            (
                "[{url = \"http://x\", retries = -1}]",
                "sinks.notify[0].retries",
            ),
            ("[{url = \"http://x\", colour = 1}]", "colour"),
        ] {
            let mut layers = Layers::from_defaults(DEFAULTS)?;
            layers.set("sinks.notify", value)?;
            let err = layers
                .typed::<SinksConfig>("sinks")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{value}: {err}");
        }
        // Values: validation names the entry and the key.
        let entry = |f: &dyn Fn(&mut NotifyConfig)| {
            let mut n = NotifyConfig {
                url: "https://hooks.example.invalid/x".into(),
                ..NotifyConfig::default()
            };
            f(&mut n);
            SinksConfig {
                notify: vec![NotifyConfig::default(), n],
                ..SinksConfig::default()
            }
        };
        let cases: Vec<(SinksConfig, &str)> = vec![
            (entry(&|n| n.url = String::new()), "sinks.notify[1].url"),
            (
                entry(&|n| n.url = "ftp://h/x".into()),
                "sinks.notify[1].url",
            ),
            (
                entry(&|n| n.url = "https:///x".into()),
                "sinks.notify[1].url",
            ),
            (entry(&|n| n.table = "nope".into()), "sinks.notify[1].table"),
            (
                entry(&|n| n.min_severity = Some("high".into())),
                "sinks.notify[1].min_severity",
            ),
            (
                entry(&|n| n.max_per_minute = 0),
                "sinks.notify[1].max_per_minute",
            ),
            (entry(&|n| n.timeout_ms = 0), "sinks.notify[1].timeout_ms"),
            (entry(&|n| n.queue_len = 0), "sinks.notify[1].queue_len"),
            (
                entry(&|n| {
                    n.headers.insert("Idempotency-Key".into(), "x".into());
                }),
                "sinks.notify[1].headers.Idempotency-Key",
            ),
            (
                entry(&|n| {
                    n.headers.insert("Bad Name".into(), "x".into());
                }),
                "sinks.notify[1].headers.Bad Name",
            ),
        ];
        for (sinks, key) in cases {
            // Entry 0 has an empty url too: entries are checked in order.
            let mut sinks = sinks;
            sinks.notify[0].url = "http://127.0.0.1:1/ok".into();
            let err = sinks
                .validate(&["alerts"])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        Ok(())
    }

    #[test]
    fn bad_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[engine\nworkers = 1").expect("write");
        let mut layers = Layers::default();
        let err = layers
            .merge_file(&file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn parquet_options_take_scalars_as_text() -> anyhow::Result<()> {
        let cfg: SinkConfig = toml::from_str(
            "[parquet.options]\naws_allow_http = true\nretries = 3\naws_region = \"eu-west-1\"\n",
        )?;
        let o = &cfg.parquet.options;
        assert_eq!(
            (
                o["aws_allow_http"].as_str(),
                o["retries"].as_str(),
                o["aws_region"].as_str()
            ),
            ("true", "3", "eu-west-1")
        );
        let err = toml::from_str::<SinkConfig>("[parquet.options]\nx = [1]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`x`") && err.contains("array"), "{err}");
        Ok(())
    }
}
