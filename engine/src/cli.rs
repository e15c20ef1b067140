//! The command line every job gets for free: `run`, `config`, plus connector commands.
//!
//! ```text
//! customer-analytics run [--workers N] [--processes N --process I [--hostfile F]]
//!                        [--config FILE] [--set KEY=VALUE]... [--max-events N] ...
//! customer-analytics config [same flags]     # print the effective configuration
//! customer-analytics supervise [--max-restarts N] [--backoff-ms MS] [run flags]
//!                                            # run engine.processes processes, restart on a crash
//! customer-analytics generate ...           # extension command (from the connectors)
//! ```
//!
//! Configuration layers, later wins: the job's embedded defaults, `--config FILE`,
//! `CAP_*` environment variables, then flags (dedicated flags, then `--set`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use crate::config::{ConfigError, EngineConfig, Layers};
use crate::job::Job;
use crate::runtime::{run_job, RunReport};
use crate::sink::SinkFactory;
use crate::supervise::{supervise, Plan as SupervisePlan, SuperviseArgs};

/// Flags shared by `run` and `config`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file, layered over the job's embedded defaults.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Worker threads per process.
    #[arg(short = 'w', long, value_name = "N")]
    pub workers: Option<usize>,
    /// Number of processes in the cluster (timely's communication over TCP).
    #[arg(short = 'n', long, value_name = "N")]
    pub processes: Option<usize>,
    /// This process's index, 0-based.
    #[arg(short = 'p', long, value_name = "I")]
    pub process: Option<usize>,
    /// File with one host:port per process, in process order (default localhost:2101+i).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// Stop after N records per source (split evenly over its partitions).
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
    /// Close an epoch after N records per worker.
    #[arg(long, value_name = "N")]
    pub epoch_records: Option<u64>,
    /// Close an epoch after MS milliseconds.
    #[arg(long, value_name = "MS")]
    pub epoch_ms: Option<u64>,
    /// Output directory of file sinks and the engine's state (sets sinks.dir and engine.state_dir).
    #[arg(short = 'o', long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Sink kind for every table: `file` or `null`.
    #[arg(long, value_name = "KIND")]
    pub sink: Option<String>,
    /// Compute and write only these tables (comma separated; default: all of the job's).
    #[arg(long, value_name = "TABLE,...", value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Read the job's first source from this CSV/JSON file (plain or .gz) instead of its default.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Pace the --input file by event time, SPEEDUP times faster than real time.
    #[arg(long, value_name = "SPEEDUP")]
    pub pace: Option<f64>,
    /// Set any configuration key, e.g. --set sources.clickstream.seed=7 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Log filter: error, warn, info, debug, trace, or per-module directives. RUST_LOG overrides.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Do not print the live console summary.
    #[arg(long)]
    pub no_console: bool,
    /// Checkpoint every MS milliseconds, and on start restore the newest sound checkpoint
    /// and replay the epoch log (sets engine.checkpoint.interval_ms and .restore).
    #[arg(long, value_name = "MS")]
    pub checkpoint_ms: Option<u64>,
    /// Start afresh: delete the checkpoints and the epoch log of earlier runs instead of
    /// restoring them (sets engine.checkpoint.restore = false).
    #[arg(long)]
    pub fresh: bool,
    /// This run's number in the epoch log, the same for every process of the run (set by
    /// the supervisor and the cluster scripts; sets engine.run).
    #[arg(long, value_name = "N")]
    pub run: Option<u64>,
}

/// Extra subcommands contributed by connectors (e.g. `generate`).
pub trait Extension: Send + Sync {
    /// The subcommands to add.
    fn commands(&self) -> Vec<Command>;
    /// Runs subcommand `name` if it is one of ours; `None` otherwise.
    fn run(&self, name: &str, matches: &ArgMatches) -> Option<Result<(), String>>;
}

/// The connectors a job binary is linked with: sinks, and extension commands.
pub trait Connectors: SinkFactory + Extension {
    /// Upcast to the sink factory.
    fn sink_factory(self: Arc<Self>) -> Arc<dyn SinkFactory>;
}

/// Builds the layered configuration for `job` from flags and the environment.
pub fn layered_config<J: Job>(
    job: &J,
    args: &RunArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Layers, ConfigError> {
    let mut layers = Layers::from_defaults(job.default_config())?;
    if let Some(path) = &args.config {
        layers.merge_file(path)?;
    }
    layers.merge_env(env)?;
    let mut set_num = |key: &str, v: Option<u64>| -> Result<(), ConfigError> {
        if let Some(v) = v {
            layers.set_value(key, toml::Value::Integer(v as i64))?;
        }
        Ok(())
    };
    set_num("engine.workers", args.workers.map(|v| v as u64))?;
    set_num("engine.processes", args.processes.map(|v| v as u64))?;
    set_num("engine.process", args.process.map(|v| v as u64))?;
    set_num("engine.max_events", args.max_events)?;
    set_num("engine.epoch_records", args.epoch_records)?;
    set_num("engine.epoch_ms", args.epoch_ms)?;
    set_num("engine.run", args.run)?;
    if let Some(ms) = args.checkpoint_ms {
        set_num("engine.checkpoint.interval_ms", Some(ms))?;
        layers.set_value("engine.checkpoint.restore", toml::Value::Boolean(true))?;
    }
    if let Some(h) = &args.hostfile {
        layers.set_value(
            "engine.hostfile",
            toml::Value::String(h.display().to_string()),
        )?;
    }
    if let Some(out) = &args.output {
        layers.set_value("sinks.dir", toml::Value::String(out.display().to_string()))?;
        layers.set_value(
            "engine.state_dir",
            toml::Value::String(out.join("_state").display().to_string()),
        )?;
    }
    if let Some(kind) = &args.sink {
        layers.set_value("sinks.kind", toml::Value::String(kind.clone()))?;
    }
    if let Some(tables) = &args.tables {
        let list = tables
            .iter()
            .map(|t| toml::Value::String(t.clone()))
            .collect();
        layers.set_value("engine.tables", toml::Value::Array(list))?;
    }
    if let Some(input) = &args.input {
        let first =
            layers
                .source_names()
                .into_iter()
                .next()
                .ok_or_else(|| ConfigError::Invalid {
                    key: "sources".into(),
                    reason: "--input given but the job declares no source".into(),
                })?;
        let mut table = toml::Table::new();
        table.insert("kind".into(), toml::Value::String("file".into()));
        table.insert(
            "path".into(),
            toml::Value::String(input.display().to_string()),
        );
        layers.set_value(&format!("sources.{first}"), toml::Value::Table(table))?;
        if let Some(p) = args.pace {
            layers.set_value(&format!("sources.{first}.pace"), toml::Value::Float(p))?;
        }
    }
    if let Some(level) = &args.log_level {
        layers.set_value("engine.log_level", toml::Value::String(level.clone()))?;
    }
    if let Some(addr) = &args.metrics_addr {
        layers.set_value("engine.metrics_addr", toml::Value::String(addr.clone()))?;
    }
    if args.no_console {
        layers.set_value("engine.console", toml::Value::Boolean(false))?;
    }
    for kv in &args.set {
        let (k, v) = kv.split_once('=').ok_or_else(|| ConfigError::Invalid {
            key: kv.clone(),
            reason: "--set takes KEY=VALUE".into(),
        })?;
        layers.set(k.trim(), v.trim())?;
    }
    if args.fresh {
        layers.set_value("engine.checkpoint.restore", toml::Value::Boolean(false))?;
    }
    Ok(layers)
}

/// The whole CLI of a job binary: `fn main() -> ExitCode { cli::main(MyJob, connectors) }`.
pub fn main<J: Job, C: Connectors + 'static>(job: J, connectors: Arc<C>) -> ExitCode {
    let run_cmd = RunArgs::augment_args(
        Command::new("run").about("Run the job until its sources end or Ctrl-C"),
    );
    let config_cmd = RunArgs::augment_args(
        Command::new("config").about("Print the effective configuration and exit"),
    );
    let supervise_cmd = SuperviseArgs::augment_args(RunArgs::augment_args(
        Command::new("supervise").about(
            "Run this machine's processes of the job (engine.processes) and restart them all, restoring the newest checkpoint, when one dies",
        ),
    ));
    let mut cmd = Command::new(job.name())
        .about(job.about())
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(run_cmd)
        .subcommand(config_cmd)
        .subcommand(supervise_cmd);
    for c in connectors.commands() {
        cmd = cmd.subcommand(c);
    }
    let matches = cmd.get_matches();
    let Some((name, sub)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    match name {
        "run" | "config" => {
            let args = match RunArgs::from_arg_matches(sub) {
                Ok(a) => a,
                Err(e) => e.exit(),
            };
            let layers = match layered_config(&job, &args, std::env::vars()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if name == "config" {
                print!("{}", layers.to_toml());
                return ExitCode::SUCCESS;
            }
            let factory = Arc::clone(&connectors).sink_factory();
            match run_job(Arc::new(job), layers, factory) {
                Ok(RunReport { .. }) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        "supervise" => {
            let (args, own) = match (
                RunArgs::from_arg_matches(sub),
                SuperviseArgs::from_arg_matches(sub),
            ) {
                (Ok(a), Ok(o)) => (a, o),
                (Err(e), _) | (_, Err(e)) => e.exit(),
            };
            let layers = match layered_config(&job, &args, std::env::vars()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let engine: EngineConfig = match layers.typed("engine") {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            crate::runtime::init_logging(&engine.log_level);
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: cannot find this program's path: {e}");
                    return ExitCode::from(2);
                }
            };
            let raw: Vec<String> = std::env::args()
                .skip_while(|a| a != "supervise")
                .skip(1)
                .collect();
            let plan = SupervisePlan {
                exe: &exe,
                run_flags: SuperviseArgs::run_flags(&raw),
                processes: engine.processes,
                state_dir: &engine.state_dir,
            };
            match supervise(&plan, &own) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "supervise: giving up");
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        other => match connectors.run(other, sub) {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(e)) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
            None => ExitCode::from(2),
        },
    }
}
