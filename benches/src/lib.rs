//! Benchmark support: run a job in-process on the generator with null sinks and report
//! throughput and epoch-latency percentiles.

use std::sync::Arc;

use cap_engine::config::Layers;
use cap_engine::job::Job;
use cap_engine::runtime::{run_job, RunReport};

/// One benchmark configuration.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    /// Worker threads.
    pub workers: usize,
    /// Events to generate.
    pub events: u64,
    /// Records per epoch per worker.
    pub epoch_records: u64,
    /// Generator rate limit (events/s), or as fast as possible.
    pub rate: Option<u64>,
    /// Extra `key=value` settings.
    pub set: Vec<String>,
}

/// Runs `job` on the generator with null sinks.
pub fn run_pipeline<J: Job>(job: J, bench: &PipelineBench) -> anyhow::Result<RunReport> {
    let mut layers = Layers::from_defaults(job.default_config())?;
    layers.set("engine.workers", &bench.workers.to_string())?;
    layers.set("engine.max_events", &bench.events.to_string())?;
    layers.set("engine.epoch_records", &bench.epoch_records.to_string())?;
    layers.set("engine.console", "false")?;
    layers.set("engine.log_level", "warn")?;
    layers.set("sinks.kind", "\"null\"")?;
    layers.set("engine.state_dir", "\"target/bench-state\"")?;
    if let Some(rate) = bench.rate {
        layers.set("sources.clickstream.rate", &rate.to_string())?;
    }
    for kv in &bench.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set takes KEY=VALUE: {kv}"))?;
        layers.set(k, v)?;
    }
    Ok(run_job(
        Arc::new(job),
        layers,
        Arc::new(cap_connectors::Connectors),
    )?)
}

/// One line of results: events/s and latency percentiles in milliseconds.
pub fn format_report(name: &str, r: &RunReport) -> String {
    let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{name:<28} {:>11} events {:>8.2}s {:>12.0} events/s  epochs {:>5}  epoch latency p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
        r.records,
        r.elapsed.as_secs_f64(),
        r.rate(),
        r.epochs,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        r.latency.max() as f64 / 1000.0
    )
}
