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
    let mut set = vec![format!("engine.max_events={}", bench.events)];
    if let Some(rate) = bench.rate {
        set.push(format!("sources.clickstream.rate={rate}"));
    }
    set.extend(bench.set.iter().cloned());
    run_pipeline_with(job, bench.workers, bench.epoch_records, set)
}

/// Runs `job` with `workers` workers, `epoch_records`-record epochs, null sinks and the
/// settings `set` (`key=value`, e.g. a Kafka source): for sources other than the generator.
pub fn run_pipeline_with<J: Job>(
    job: J,
    workers: usize,
    epoch_records: u64,
    set: Vec<String>,
) -> anyhow::Result<RunReport> {
    let mut layers = Layers::from_defaults(job.default_config())?;
    layers.set("engine.workers", &workers.to_string())?;
    layers.set("engine.epoch_records", &epoch_records.to_string())?;
    layers.set("engine.console", "false")?;
    layers.set("engine.log_level", "warn")?;
    layers.set("sinks.kind", "\"null\"")?;
    layers.set("engine.state_dir", "\"target/bench-state\"")?;
    for kv in &set {
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

/// Resets this process's peak resident set size (`VmHWM`) so that the next
/// [`peak_rss_bytes`] measures one run; a no-op where `/proc/self/clear_refs` is missing.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Distinct users among the first `events` events the generator produces with `config`
/// (all partitions): the customers a run over the same events holds state for.
pub fn generated_customers(
    config: cap_connectors::generator::GeneratorConfig,
) -> anyhow::Result<u64> {
    let source = cap_connectors::generator::GeneratorSource::try_new("customers", config)?;
    let mut users = std::collections::HashSet::new();
    for k in 0..source.config().partitions {
        for e in source.partition(k)? {
            users.insert(e.user_id);
        }
    }
    Ok(users.len() as u64)
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
