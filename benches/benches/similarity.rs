//! Throughput of `similar_items` + `recommendations` (the job's own dataflow for the two
//! tables, nothing else) over generator events fed in epochs, with the co-occurrence state
//! it ends with.
//!
//! ```text
//! cargo bench -p cap-benches --bench similarity -- [--events N] [--workers 1,2]
//!     [--epoch-records N] [--refresh-epochs R] [--similar-only]
//! ```
//! Events are generated up front (not timed); each worker then feeds its share, one epoch of
//! `--epoch-records` per worker at a time, waiting for the outputs to complete the epoch.
//! Prints records/s, epoch latency, the pairs kept and the bytes of the pair state
//! ([`PairStats`]), and the process's resident memory growth over the run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_connectors::clickstream::Event;
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::job::NoCheckpoints;
use cap_operators::local::pre_aggregate;
use cap_operators::similarity::{similar_items, PairStats, SimilarityConfig};
use clap::Parser;
use customer_analytics::tables::recommendations::{
    similarity_tables, top_category, RecommendationSettings, TOP_K,
};
use differential_dataflow::input::Input;

#[derive(Parser, Debug)]
#[command(about = "similar_items + recommendations: records/s and co-occurrence state")]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Worker counts to run, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Records per epoch per worker.
    #[arg(long, default_value_t = 50_000)]
    epoch_records: usize,
    /// `job.recommendations.refresh_epochs`.
    #[arg(long, default_value_t = 1)]
    refresh_epochs: u64,
    /// Leave recommendations out (similar_items alone), to see what each part costs.
    #[arg(long)]
    similar_only: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// Resident set size of this process in bytes (Linux), 0 when unknown.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

struct Outcome {
    elapsed: Duration,
    epochs: usize,
    epoch_ms: Vec<f64>,
    stats: PairStats,
    rss_growth: u64,
}

fn run(events: Arc<Vec<Event>>, workers: usize, args: &Args) -> anyhow::Result<Outcome> {
    let settings = RecommendationSettings {
        refresh_epochs: args.refresh_epochs,
        ..RecommendationSettings::default()
    };
    let stats: Arc<Mutex<PairStats>> = Arc::default();
    let epoch_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let rss_growth: Arc<Mutex<u64>> = Arc::default();
    let epoch_records = args.epoch_records.max(1);
    let similar_only = args.similar_only;
    let (w_stats, w_epoch_ms, w_rss) = (
        Arc::clone(&stats),
        Arc::clone(&epoch_ms),
        Arc::clone(&rss_growth),
    );
    let rss_before = rss_bytes();
    let started = Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let stats = Arc::clone(&w_stats);
        let settings = settings.clone();
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let report = move |d| stats.lock().unwrap_or_else(|p| p.into_inner()).add(d);
            let outputs = if similar_only {
                let config = SimilarityConfig {
                    max_user_items: settings.max_user_items,
                    top_k: TOP_K,
                };
                let touches = pre_aggregate(events.map(|e| (e.user_id, e.product_id)), "touches");
                similar_items(touches, &config, report).map(|_| ())
            } else {
                let ck = &mut NoCheckpoints;
                let top = top_category(ck, &events).expect("builds");
                let (similar, recs) =
                    similarity_tables(ck, &events, top, &settings, report).expect("builds");
                similar.map(|_| ()).concat(recs.map(|_| ()))
            };
            let (probe, _) = outputs.probe();
            (input, probe)
        });
        let mine: Vec<&Event> = events.iter().skip(index).step_by(peers).collect();
        for (epoch, chunk) in mine.chunks(epoch_records).enumerate() {
            let t0 = Instant::now();
            for e in chunk {
                input.insert((*e).clone());
            }
            input.advance_to(epoch as u64 + 1);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
            if index == 0 {
                w_epoch_ms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        // Measured before the dataflow is dropped, once every worker is done.
        input.close();
        worker.step_while(|| !probe.done());
        if index == 0 {
            *w_rss.lock().unwrap_or_else(|p| p.into_inner()) =
                rss_bytes().saturating_sub(rss_before);
        }
    })
    .map_err(anyhow::Error::msg)?;
    for r in guards.join() {
        r.map_err(anyhow::Error::msg)?;
    }
    let elapsed = started.elapsed();
    let epoch_ms = std::mem::take(&mut *epoch_ms.lock().unwrap_or_else(|p| p.into_inner()));
    let stats = *stats.lock().unwrap_or_else(|p| p.into_inner());
    let rss_growth = *rss_growth.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Outcome {
        elapsed,
        epochs: epoch_ms.len(),
        epoch_ms,
        stats,
        rss_growth,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = GeneratorConfig {
        events: Some(args.events),
        ..GeneratorConfig::default()
    };
    let source = GeneratorSource::try_new("similarity-bench", cfg.clone())?;
    let mut events = Vec::with_capacity(args.events as usize);
    for k in 0..cfg.partitions {
        events.extend(source.partition(k)?);
    }
    let events = Arc::new(events);
    for &workers in &args.workers {
        let o = run(Arc::clone(&events), workers, &args)?;
        let mut ms = o.epoch_ms.clone();
        ms.sort_by(f64::total_cmp);
        let q = |f: f64| {
            ms.get(((ms.len() as f64 - 1.0) * f) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "{} w={workers} refresh={}  {} events {:.2}s {:>9.0} records/s  epochs {}  epoch p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            if args.similar_only {
                "similarity"
            } else {
                "similarity+recommendations"
            },
            args.refresh_epochs,
            events.len(),
            o.elapsed.as_secs_f64(),
            events.len() as f64 / o.elapsed.as_secs_f64(),
            o.epochs,
            q(0.5),
            q(0.99),
            q(1.0),
        );
        println!(
            "  co-occurrence state: {} pairs kept ({} with co >= 2), {:.1} MiB; process RSS grew {:.1} MiB",
            o.stats.pairs,
            o.stats.candidates,
            o.stats.bytes as f64 / (1 << 20) as f64,
            o.rss_growth as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}
