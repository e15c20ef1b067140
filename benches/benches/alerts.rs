//! Alert detectors benchmark: generated events (pregenerated in memory) through the job's
//! `alerts` dataflow (windowed counts per user and ip, view-only bursts, global baselines,
//! merging) on timely workers; prints events/s.
//!
//! ```text
//! cargo bench -p cap-benches --bench alerts -- [--events N] [--workers 1,2] [--chunk N]
//! ```

#[path = "../src/alerts_runner.rs"]
mod alerts_runner;

use cap_connectors::generator::GeneratorConfig;
use clap::Parser;
use customer_analytics::tables::alerts::AlertSettings;

#[derive(Parser, Debug)]
#[command(about = "events/s through the alert detectors")]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Worker counts to run, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Events per generator partition per epoch (4 partitions).
    #[arg(long, default_value_t = 25_000)]
    chunk: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rules = AlertSettings::default().rules()?;
    let cfg = GeneratorConfig {
        events: Some(args.events),
        ..GeneratorConfig::default()
    };
    for &workers in &args.workers {
        let run = alerts_runner::run_alerts(&cfg, rules, workers, args.chunk, true)?;
        let secs = run.elapsed.as_secs_f64();
        println!(
            "alerts w={workers:<2} {:>10} events {:>8.2}s {:>10.0} events/s  {} alerts",
            run.events,
            secs,
            run.events as f64 / secs.max(1e-9),
            run.rows.len()
        );
    }
    Ok(())
}
