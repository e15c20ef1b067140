//! End-to-end pipeline benchmark: generator -> customer-analytics -> null sinks.
//!
//! ```text
//! cargo bench -p cap-benches --bench pipeline -- [--events N] [--workers 1,2] [--epoch-records N] [--rate R]
//!     [--users N] [--memory] [--set KEY=VALUE]...
//! ```
//! Prints events/s and epoch latency p50/p99/p99.9 (HdrHistogram) per worker count. With
//! `--memory`, also the run's peak resident set size (`VmHWM`, reset before each run) and
//! that peak divided by the customers of the input (distinct users among the generated
//! events, counted by a separate pass over the generator outside the timed run).

use clap::Parser;

use cap_benches::{
    format_report, generated_customers, peak_rss_bytes, reset_peak_rss, run_pipeline, PipelineBench,
};
use cap_connectors::generator::GeneratorConfig;

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
    /// Generator user population (default: the generator's, 200 000).
    #[arg(long)]
    users: Option<u64>,
    /// Report peak RSS and bytes per customer.
    #[arg(long)]
    memory: bool,
    /// Extra configuration KEY=VALUE.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut set = args.set.clone();
    // The generator stops by itself after `events`, so every run reads the same events.
    set.push(format!("sources.clickstream.events={}", args.events));
    if let Some(users) = args.users {
        set.push(format!("sources.clickstream.users={users}"));
    }
    let customers = if args.memory {
        let config = GeneratorConfig {
            events: Some(args.events),
            users: args.users.unwrap_or(GeneratorConfig::default().users),
            ..GeneratorConfig::default()
        };
        Some(generated_customers(config)?)
    } else {
        None
    };
    for &workers in &args.workers {
        let bench = PipelineBench {
            workers,
            events: args.events,
            epoch_records: args.epoch_records,
            rate: args.rate,
            set: set.clone(),
        };
        reset_peak_rss();
        let report = run_pipeline(customer_analytics::CustomerAnalytics, &bench)?;
        let mut line = format_report(&format!("customer-analytics w={workers}"), &report);
        if let (Some(customers), Some(peak)) = (customers, peak_rss_bytes()) {
            line.push_str(&format!(
                "  peak RSS {:.0} MiB, {customers} customers, {:.0} B/customer",
                peak as f64 / f64::from(1 << 20),
                peak as f64 / customers.max(1) as f64
            ));
        }
        println!("{line}");
    }
    Ok(())
}
