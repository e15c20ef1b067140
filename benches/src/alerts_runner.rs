//! Runs the `alerts` table's dataflow (the job's own `tables::alerts::alerts`, on the real
//! operators) in-process over the generator's partitions, and returns its final rows.
//!
//! Shared by the `alert_quality` command and the `alerts` benchmark through `#[path]`
//! (each is its own crate target).

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use cap_connectors::clickstream::Event;
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::job::NoCheckpoints;
use customer_analytics::tables::alerts::{alerts, AlertRow, AlertRules};
use differential_dataflow::input::Input;

/// What a run produced.
pub struct AlertsRun {
    /// The table after all input: rows with a positive accumulated multiplicity.
    pub rows: Vec<AlertRow>,
    /// Events fed.
    pub events: u64,
    /// Wall time of feeding and computing (generation included unless pregenerated).
    pub elapsed: Duration,
}

/// Feeds the generator's partitions to `workers` timely workers (partition `p` to worker
/// `p % workers`), `chunk` events per partition per epoch, and accumulates `alerts`.
/// With `pregenerate`, each worker first generates its events into memory and the clock
/// starts when all have, so `elapsed` is the detectors' time alone.
pub fn run_alerts(
    cfg: &GeneratorConfig,
    rules: AlertRules,
    workers: usize,
    chunk: usize,
    pregenerate: bool,
) -> Result<AlertsRun> {
    let source = Arc::new(GeneratorSource::try_new("alerts", cfg.clone())?);
    let parts = cfg.partitions;
    let out: Arc<Mutex<Vec<(AlertRow, isize)>>> = Arc::default();
    let fed: Arc<Mutex<u64>> = Arc::default();
    let started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(workers));
    let (sink, fed_total, start) = (Arc::clone(&out), Arc::clone(&fed), Arc::clone(&started));
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let sink = Arc::clone(&sink);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let rows = alerts(&mut NoCheckpoints, &events, &rules, |_| {})
                .expect("builds")
                .inspect(move |(row, _t, d)| {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((row.clone(), *d));
                });
            let (probe, _) = rows.probe();
            (input, probe)
        });
        let mut mine: Vec<Box<dyn Iterator<Item = Event>>> = (0..parts)
            .filter(|p| *p as usize % peers == index)
            .filter_map(|p| source.partition(p).ok())
            .map(|part| -> Box<dyn Iterator<Item = Event>> {
                if pregenerate {
                    Box::new(part.collect::<Vec<_>>().into_iter())
                } else {
                    Box::new(part)
                }
            })
            .collect();
        barrier.wait();
        start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        let mut count = 0u64;
        let mut epoch = 0u64;
        while !mine.is_empty() {
            mine.retain_mut(|part| {
                for _ in 0..chunk {
                    match part.next() {
                        Some(e) => {
                            input.insert(e);
                            count += 1;
                        }
                        None => return false,
                    }
                }
                true
            });
            epoch += 1;
            input.advance_to(epoch);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
        }
        *fed_total.lock().unwrap_or_else(|p| p.into_inner()) += count;
    })
    .map_err(|e| anyhow::anyhow!("cannot start workers: {e}"))?;
    for r in guards.join() {
        r.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
    }
    let elapsed = started
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|t| t.elapsed())
        .unwrap_or_default();
    let mut acc: std::collections::BTreeMap<AlertRow, isize> = Default::default();
    for (row, d) in out.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        *acc.entry(row).or_default() += d;
    }
    let events = *fed.lock().unwrap_or_else(|p| p.into_inner());
    Ok(AlertsRun {
        rows: acc
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(r, _)| r)
            .collect(),
        events,
        elapsed,
    })
}
