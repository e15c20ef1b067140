//! Aggregate operator benchmarks, one worker, printing records/s:
//! - `sum_by_key` over monoid counters (600 categories x 168 hours);
//! - `top_k` (flat, and hierarchical with fanout 64) fed by changing category counts;
//!   also one group of 200 000 values, where the hierarchical form pays off;
//! - `latest_by_key` over an upsert log of 100 000 keys;
//! - the four aggregate tables of customer-analytics over generated events.
//!
//! ```text
//! cargo bench -p cap-benches --bench aggregates -- [--events N] [--epoch N]
//! ```

use std::cmp::Reverse;
use std::time::Instant;

use cap_connectors::clickstream::Event;
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::job::NoCheckpoints;
use cap_engine::source::{Polled, Source, SourceRecord};
use cap_operators::aggregate::sum_by_key;
use cap_operators::topk::{top_k, top_k_hierarchical};
use cap_operators::upsert::latest_by_key;
use cap_operators::VecCollection;
use clap::Parser;
use customer_analytics::tables;
use differential_dataflow::input::Input;
use differential_dataflow::ExchangeData;

#[derive(Parser, Debug)]
#[command(about = "sum_by_key, top_k and the aggregate tables (one worker)")]
struct Args {
    /// Records (operator benches) and events (table benches) per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Records per epoch.
    #[arg(long, default_value_t = 100_000)]
    epoch: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

cap_operators::counters! {
    /// Bench counters, like the job's.
    pub struct Counts {
        /// Views.
        pub views,
        /// Purchases.
        pub purchases,
        /// Revenue.
        pub revenue,
    }
}

/// Feeds `updates` through `build` on one worker, `epoch` updates per epoch, and returns
/// the seconds until the output is complete.
fn time_dataflow<D, O>(
    updates: Vec<(D, isize)>,
    epoch: usize,
    build: impl for<'s> FnOnce(VecCollection<'s, u64, D>) -> VecCollection<'s, u64, O>
        + Send
        + Sync
        + 'static,
) -> f64
where
    D: ExchangeData + Sync,
    O: ExchangeData,
{
    timely::execute_directly(move |worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<D, isize>();
            let (probe, _) = build(coll).probe();
            (input, probe)
        });
        let started = Instant::now();
        for (i, chunk) in updates.chunks(epoch.max(1)).enumerate() {
            for (d, r) in chunk {
                input.update(d.clone(), *r);
            }
            input.advance_to(i as u64 + 1);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
        }
        started.elapsed().as_secs_f64()
    })
}

fn report(what: &str, n: usize, secs: f64) {
    println!(
        "{what:<52} {n:>9} records {secs:>7.3}s {:>7.2} M records/s",
        n as f64 / secs / 1e6
    );
}

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// A group's value `(count, id)` with its difference.
type CountUpdate = ((u32, (u64, u32)), isize);

/// `n` count changes as a top-k sees them: a value `(count, id)` of a group is retracted
/// and re-inserted with count + 1 (two updates per change).
fn count_changes(n: usize, groups: u64, ids: u64, seed: u64) -> Vec<CountUpdate> {
    let mut rng = Rng(seed);
    let mut counts = vec![0u64; (groups * ids) as usize];
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (g, id) = (rng.below(groups), rng.below(ids));
        let c = &mut counts[(g * ids + id) as usize];
        if *c > 0 {
            out.push(((g as u32, (*c, id as u32)), -1));
        }
        *c += 1;
        out.push(((g as u32, (*c, id as u32)), 1));
    }
    out
}

fn most_first(v: &(u64, u32)) -> Reverse<u64> {
    Reverse(v.0)
}

fn generate(n: usize) -> anyhow::Result<Vec<Event>> {
    let cfg = GeneratorConfig {
        partitions: 1,
        ..GeneratorConfig::default()
    };
    let source = GeneratorSource::try_new("bench", cfg)?;
    let mut part = source.open(0)?;
    let mut out: Vec<SourceRecord<Event>> = Vec::with_capacity(4096);
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        out.clear();
        if part.poll(4096.min(n - events.len()), &mut out)? == Polled::Exhausted {
            break;
        }
        events.extend(out.drain(..).filter_map(|r| r.item.ok()));
    }
    Ok(events)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.events;

    // sum_by_key: (hour, category) -> counters.
    let mut rng = Rng(7);
    let records: Vec<((u32, u32, u64), isize)> = (0..n)
        .map(|_| {
            let price = rng.below(100_000);
            ((rng.below(168) as u32, rng.below(600) as u32, price), 1)
        })
        .collect();
    let secs = time_dataflow(records, args.epoch, |c| {
        sum_by_key(c, "bench", |(hour, cat, price)| {
            let purchase = i64::from(price % 50 == 0);
            Some((
                (hour, cat),
                Counts {
                    views: 1 - purchase,
                    purchases: purchase,
                    revenue: purchase * price as i64,
                },
            ))
        })
    });
    report("sum_by_key (168 x 600 keys)", n, secs);

    // top_k over changing counts: 168 groups of 600 values.
    let changes = count_changes(n / 2, 168, 600, 11);
    let m = changes.len();
    let secs = time_dataflow(changes.clone(), args.epoch, |c| top_k(c, 10, most_first));
    report("top_k k=10 (168 groups x 600 values)", m, secs);
    let secs = time_dataflow(changes, args.epoch, |c| {
        top_k_hierarchical(c, 10, most_first, 64)
    });
    report("top_k_hierarchical fanout 64 (168 x 600)", m, secs);

    // One huge group.
    let changes = count_changes(n / 2, 1, 200_000, 13);
    let m = changes.len();
    let secs = time_dataflow(changes.clone(), args.epoch, |c| top_k(c, 10, most_first));
    report("top_k k=10 (1 group x 200000 values)", m, secs);
    let secs = time_dataflow(changes, args.epoch, |c| {
        top_k_hierarchical(c, 10, most_first, 64)
    });
    report("top_k_hierarchical fanout 64 (1 x 200000)", m, secs);

    // latest_by_key: an upsert log (user, offset, tier) over 100K users, a tenth deletions.
    let log: Vec<((u64, u64, Option<u8>), isize)> = (0..n)
        .map(|i| {
            let user = rng.below(100_000);
            let tier = (rng.below(10) > 0).then(|| rng.below(4) as u8);
            ((user, i as u64, tier), 1)
        })
        .collect();
    let secs = time_dataflow(log, args.epoch, latest_by_key);
    report("latest_by_key (100000 keys)", n, secs);

    // The job's aggregate tables over generated events.
    let events: Vec<(Event, isize)> = generate(n)?.into_iter().map(|e| (e, 1)).collect();
    let k = events.len();
    let secs = time_dataflow(events.clone(), args.epoch, |c| {
        tables::categories::category_hourly(&mut NoCheckpoints, &c).expect("builds")
    });
    report("category_hourly (events)", k, secs);
    let secs = time_dataflow(events.clone(), args.epoch, |c| {
        tables::categories::category_weekday(&mut NoCheckpoints, &c).expect("builds")
    });
    report("category_weekday (events)", k, secs);
    let secs = time_dataflow(events.clone(), args.epoch, |c| {
        tables::brands::brand_daily(&mut NoCheckpoints, &c).expect("builds")
    });
    report("brand_daily (events)", k, secs);
    let secs = time_dataflow(events, args.epoch, |c| {
        tables::abandonment::cart_abandonment_daily(&mut NoCheckpoints, &c).expect("builds")
    });
    report("cart_abandonment_daily (events)", k, secs);
    Ok(())
}
