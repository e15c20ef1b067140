//! Funnel operator benchmark: events/s through `funnel_units` + `funnel_step_stats` on
//! synthetic sessions, for several funnel configurations.
//!
//! ```text
//! cargo bench -p cap-benches --bench funnel -- [--units N] [--events-per-unit N] [--workers 1,2] [--epoch-events N]
//! ```
//!
//! Each unit (session) gets a random number of events around `--events-per-unit`
//! (views, carts, purchases and remove-from-carts, the last one an exclusion), spread over
//! up to an hour, with a random channel as breakdown. Events are fed in time order, in
//! epochs of `--epoch-events` per worker, and the clock runs until the output is complete.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cap_operators::funnel::{
    funnel_step_stats, funnel_units, step_bit, FunnelEvent, FunnelOrder, FunnelSpec, UnitFunnel,
};
use clap::Parser;
use differential_dataflow::input::Input;

#[derive(Parser, Debug)]
#[command(about = "funnel operator throughput: events/s per configuration")]
struct Args {
    /// Units (sessions).
    #[arg(long, default_value_t = 200_000)]
    units: u64,
    /// Mean events per unit.
    #[arg(long, default_value_t = 8)]
    events_per_unit: u64,
    /// Worker counts to run, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Events per epoch per worker.
    #[arg(long, default_value_t = 100_000)]
    epoch_events: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

type Event = (u64, FunnelEvent<u8>);

/// SplitMix64, so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

fn generate(args: &Args) -> Vec<Event> {
    let mut rng = Rng(42);
    let mut events = Vec::with_capacity((args.units * args.events_per_unit) as usize);
    for unit in 0..args.units {
        // Sessions start over ten days; each lasts up to an hour.
        let start = 1_572_566_400_000 + rng.below(10 * 86_400_000) as i64;
        let channel = rng.below(3) as u8;
        for _ in 0..1 + rng.below(2 * args.events_per_unit) {
            let time = start + rng.below(3_600_000) as i64;
            let (steps, exclusions) = match rng.below(100) {
                0..=69 => (step_bit(0), 0),
                70..=87 => (step_bit(1), 0),
                88..=94 => (step_bit(2), 0),
                _ => (0, 1),
            };
            events.push((
                unit,
                FunnelEvent {
                    time,
                    steps,
                    exclusions,
                    breakdown: channel,
                },
            ));
        }
    }
    events.sort_by_key(|(_, e)| e.time);
    events
}

fn day_of_entry(u: &UnitFunnel<u8>) -> i64 {
    u.entered().div_euclid(86_400_000)
}

/// Runs one configuration; returns (seconds, output rows).
fn run(
    spec: &FunnelSpec,
    events: Arc<Vec<Event>>,
    workers: usize,
    epoch_events: usize,
) -> anyhow::Result<(f64, usize)> {
    let rows = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let spec = spec.clone();
    let sink = Arc::clone(&rows);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let spec = spec.clone();
        let sink = Arc::clone(&sink);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let stats = funnel_step_stats(funnel_units(events, &spec), day_of_entry);
            let stats = stats.inspect(move |(_, _, r)| {
                let mut n = sink.lock().unwrap_or_else(|p| p.into_inner());
                *n = n.wrapping_add_signed(*r);
            });
            let (probe, _) = stats.probe();
            (input, probe)
        });
        let mine = events.iter().skip(index).step_by(peers);
        let mut in_epoch = 0;
        for e in mine {
            input.insert(e.clone());
            in_epoch += 1;
            if in_epoch == epoch_events {
                in_epoch = 0;
                let next = input.time() + 1;
                input.advance_to(next);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
        }
        input.close();
        while worker.step() {}
    })
    .map_err(|e| anyhow::anyhow!("cannot start workers: {e}"))?;
    for r in guards.join() {
        r.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = *rows.lock().unwrap_or_else(|p| p.into_inner());
    Ok((secs, n))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let events = Arc::new(generate(&args));
    let hour = 3_600_000;
    let configs = [
        ("ordered (session_funnel_daily)", FunnelSpec::new(3)?),
        (
            "ordered, 30 min window, exclusion 2-3",
            FunnelSpec::new(3)?
                .with_window_ms(hour / 2)?
                .with_exclusion(2, 3)?,
        ),
        (
            "strict, 30 min window",
            FunnelSpec::new(3)?
                .with_order(FunnelOrder::Strict)
                .with_window_ms(hour / 2)?,
        ),
        (
            "unordered, 30 min window",
            FunnelSpec::new(3)?
                .with_order(FunnelOrder::Unordered)
                .with_window_ms(hour / 2)?,
        ),
    ];
    for &workers in &args.workers {
        for (name, spec) in &configs {
            let (secs, rows) = run(spec, Arc::clone(&events), workers, args.epoch_events)?;
            println!(
                "{name:<40} w={workers} {:>10} events {secs:>7.2}s {:>7.3} M events/s  ({rows} output rows)",
                events.len(),
                events.len() as f64 / secs / 1e6,
            );
        }
    }
    Ok(())
}
