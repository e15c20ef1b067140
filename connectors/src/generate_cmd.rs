//! The `generate` command: writes a synthetic REES46 clickstream to a CSV or JSON-lines
//! file (optionally gzip), and optionally its bot/DDoS ground truth beside it.
//!
//! ```text
//! customer-analytics generate -o events.csv.gz --events 5000000 --seed 7 \
//!     --out-of-order 0.02 --duplicates 0.001 --ground-truth truth.json
//! ```
//! Any generator key can be set with `--set KEY=VALUE` (see `docs/runbook.md`).

use std::path::PathBuf;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use crate::generator::{write_dataset, GeneratorConfig, OutputFormat, WriteOptions};

/// Flags of `generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Output file (`.csv`, `.json`/`.jsonl`, optionally `.gz`).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// `csv` or `json`; inferred from the file name when absent.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Compress with gzip (also implied by a `.gz` name).
    #[arg(long)]
    pub gzip: bool,
    /// Number of events to write.
    #[arg(short = 'e', long, value_name = "N", default_value_t = 1_000_000)]
    pub events: u64,
    /// Random seed: the same seed and settings give the same file, byte for byte.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// Generator partitions (users are sharded over them).
    #[arg(long, value_name = "N")]
    pub partitions: Option<u64>,
    /// Number of simulated users.
    #[arg(long, value_name = "N")]
    pub users: Option<u64>,
    /// Fraction of events delivered late (out of event-time order), 0..1.
    #[arg(long, value_name = "FRACTION")]
    pub out_of_order: Option<f64>,
    /// Fraction of events emitted twice (identical rows), 0..1.
    #[arg(long, value_name = "FRACTION")]
    pub duplicates: Option<f64>,
    /// Number of injected bots.
    #[arg(long, value_name = "N")]
    pub bots: Option<u64>,
    /// Number of injected DDoS bursts.
    #[arg(long, value_name = "N")]
    pub ddos_bursts: Option<u64>,
    /// Write the bots' and bursts' ground truth (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
    /// Set any generator key, e.g. --set products=20000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The `generate` subcommand definition.
pub fn command() -> Command {
    GenerateArgs::augment_args(
        Command::new("generate")
            .about("Write a synthetic REES46 clickstream (CSV or JSON lines, optionally gzip)"),
    )
}

/// The generator configuration the flags describe; errors name the flag or key.
pub fn config_from_args(args: &GenerateArgs) -> Result<GeneratorConfig, String> {
    let mut layers = cap_engine::config::Layers::default();
    let mut set = |k: &str, v: toml::Value| {
        layers
            .set_value(&format!("generator.{k}"), v)
            .map_err(|e| e.to_string())
    };
    set("events", toml::Value::Integer(args.events as i64))?;
    if let Some(v) = args.seed {
        set("seed", toml::Value::Integer(v as i64))?;
    }
    if let Some(v) = args.partitions {
        set("partitions", toml::Value::Integer(v as i64))?;
    }
    if let Some(v) = args.users {
        set("users", toml::Value::Integer(v as i64))?;
    }
    if let Some(v) = args.out_of_order {
        set("out_of_order_fraction", toml::Value::Float(v))?;
    }
    if let Some(v) = args.duplicates {
        set("duplicate_fraction", toml::Value::Float(v))?;
    }
    if let Some(v) = args.bots {
        set("bots", toml::Value::Integer(v as i64))?;
    }
    if let Some(v) = args.ddos_bursts {
        set("ddos_bursts", toml::Value::Integer(v as i64))?;
    }
    with_set_items(layers, &args.set)
}

/// `layers` with the `--set KEY=VALUE` items `set` (generator keys) over them, typed as the
/// `generator` section and validated; errors name the item or key. Shared by the commands
/// that run the generator (`generate`, `replay`).
pub(crate) fn with_set_items(
    mut layers: cap_engine::config::Layers,
    set: &[String],
) -> Result<GeneratorConfig, String> {
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set `{kv}`: expected KEY=VALUE"))?;
        layers
            .set(&format!("generator.{}", k.trim()), v.trim())
            .map_err(|e| e.to_string())?;
    }
    let cfg: GeneratorConfig = layers.typed("generator").map_err(|e| e.to_string())?;
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `generate`.
pub fn run(matches: &ArgMatches) -> Result<(), String> {
    let args = GenerateArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
    let cfg = config_from_args(&args)?;
    let format = match args.format.as_deref() {
        Some("csv") => OutputFormat::Csv,
        Some("json") => OutputFormat::Json,
        Some(other) => return Err(format!("--format `{other}`: expected `csv` or `json`")),
        None => match crate::file::Format::from_path(&args.output) {
            Some(crate::file::Format::Json) => OutputFormat::Json,
            Some(crate::file::Format::Csv) => OutputFormat::Csv,
            None => {
                return Err(format!(
                    "cannot tell the format of {} from its name; pass --format csv|json",
                    args.output.display()
                ))
            }
        },
    };
    let opts = WriteOptions {
        path: args.output.clone(),
        format,
        gzip: args.gzip,
        ground_truth: args.ground_truth.clone(),
    };
    let progress = !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = write_dataset(&cfg, &opts, progress).map_err(|e| e.to_string())?;
    eprintln!("{report:?}");
    Ok(())
}
