//! End-to-end pipeline benchmark: generator -> customer-analytics -> null sinks.
//!
//! ```text
//! cargo bench -p cap-benches --bench pipeline -- [--events N] [--workers 1,2] [--epoch-records N] [--rate R]
//! ```
//! Prints events/s and epoch latency p50/p99/p99.9 (HdrHistogram) per worker count.

use clap::Parser;

use cap_benches::{format_report, run_pipeline, PipelineBench};

#[derive(Parser, Debug)]
#[command(about = "generator -> customer-analytics -> null sinks: events/s and epoch latency")]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Worker counts to run, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Records per epoch per worker.
    #[arg(long, default_value_t = 100_000)]
    epoch_records: u64,
    /// Rate limit in events/s (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Extra configuration KEY=VALUE.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for &workers in &args.workers {
        let bench = PipelineBench {
            workers,
            events: args.events,
            epoch_records: args.epoch_records,
            rate: args.rate,
            set: args.set.clone(),
        };
        let report = run_pipeline(customer_analytics::CustomerAnalytics, &bench)?;
        println!(
            "{}",
            format_report(&format!("customer-analytics w={workers}"), &report)
        );
    }
    Ok(())
}
