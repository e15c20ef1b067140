//! customer_traits and segments: events/s through the traits dataflow (alone, and with the
//! default segment rules), and the state it keeps per customer.
//!
//! ```text
//! cargo bench -p cap-benches --bench customers -- [--users N] [--events N] [--workers 1] [--epoch-events N]
//! ```
//!
//! Events come from the calibrated generator (`users` customers, default 2.25M events per
//! simulated day), one partition per worker, generated *outside* the timed section: each
//! epoch's events are generated, then fed, then the workers step until the outputs have
//! caught up; only that stepping is timed. Memory is measured twice, after the last epoch
//! has been processed and before the dataflow is dropped, against a baseline taken after
//! the generator partitions were opened and before any event was fed:
//! - **live heap**: bytes allocated and not freed, counted by a global allocator wrapper
//!   around the system allocator. This is the dataflow's state (arrangements, operator
//!   buffers) exactly, without allocator slack;
//! - **RSS**: resident set size from `/proc/self/statm`, which adds allocator retention
//!   and fragmentation (what the machine actually pays).
//!
//! Both are divided by the number of customers (rows of customer_traits).

// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to the
// system allocator and adds atomic counters.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicIsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use cap_connectors::clickstream::Event;
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::differential_dataflow::input::Input;
use cap_engine::job::NoCheckpoints;
use cap_engine::timely;
use clap::Parser;
use customer_analytics::tables::customers::{customer_traits, segment_rules, segments};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

#[derive(Parser, Debug)]
#[command(about = "customer_traits (+ segments): events/s and bytes of state per customer")]
struct Args {
    /// Customers in the generated population.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Events per run.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Events per epoch (over all workers).
    #[arg(long, default_value_t = 100_000)]
    epoch_events: u64,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

struct Outcome {
    events: u64,
    busy: Duration,
    customers: i64,
    memberships: i64,
    live_bytes: i64,
    rss_bytes: i64,
}

fn run(args: &Args, with_segments: bool) -> anyhow::Result<Outcome> {
    let cfg = GeneratorConfig {
        users: args.users,
        events: Some(args.events),
        partitions: args.workers as u32,
        ..GeneratorConfig::default()
    };
    let source = GeneratorSource::try_new("bench", cfg)?;
    let partitions: Vec<_> = (0..args.workers as u32)
        .map(|k| source.partition(k).map(Some))
        .collect::<Result<_, _>>()?;
    let partitions = Arc::new(Mutex::new(partitions));
    let layers = cap_engine::config::Layers::from_defaults(customer_analytics::DEFAULT_CONFIG)?;
    let settings: customer_analytics::Settings = layers.typed("job")?;
    let rules = segment_rules(&settings.segments).map_err(|e| anyhow::anyhow!("{e}"))?;

    let customers = Arc::new(AtomicI64::new(0));
    let memberships = Arc::new(AtomicI64::new(0));
    let busy_max = Arc::new(Mutex::new(Duration::ZERO));
    let memory = Arc::new(Mutex::new((0i64, 0i64)));
    let barrier = Arc::new(Barrier::new(args.workers));
    let per_epoch = (args.epoch_events / args.workers as u64).max(1) as usize;

    let (live0, rss0) = (LIVE.load(Ordering::SeqCst) as i64, rss_bytes());
    let (c, m, b, mem) = (
        Arc::clone(&customers),
        Arc::clone(&memberships),
        Arc::clone(&busy_max),
        Arc::clone(&memory),
    );
    let guards = timely::execute(timely::Config::process(args.workers), move |worker| {
        let index = worker.index();
        let mut events = partitions
            .lock()
            .ok()
            .and_then(|mut p| p.get_mut(index).and_then(Option::take))
            .expect("one generator partition per worker");
        let (c, m, rules) = (Arc::clone(&c), Arc::clone(&m), rules.clone());
        let (mut input, probe) = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let traits = customer_traits(&mut NoCheckpoints, &events).expect("builds");
            let (probe, traits) = traits
                .inspect(move |(_, _, d)| {
                    c.fetch_add(*d as i64, Ordering::Relaxed);
                })
                .probe();
            if with_segments {
                segments(&mut NoCheckpoints, &traits, &events, &rules)
                    .expect("builds")
                    .inspect(move |(_, _, d)| {
                        m.fetch_add(*d as i64, Ordering::Relaxed);
                    })
                    .probe_with(&probe);
            }
            (input, probe)
        });
        let mut busy = Duration::ZERO;
        let mut batch: Vec<Event> = Vec::with_capacity(per_epoch);
        loop {
            batch.clear();
            batch.extend(events.by_ref().take(per_epoch));
            let fed = batch.len();
            for e in batch.drain(..) {
                input.insert(e);
            }
            let next = input.time() + 1;
            input.advance_to(next);
            input.flush();
            let started = Instant::now();
            worker.step_while(|| probe.less_than(input.time()));
            busy += started.elapsed();
            if fed == 0 {
                break;
            }
        }
        drop(batch);
        if let Ok(mut b) = b.lock() {
            *b = (*b).max(busy);
        }
        barrier.wait();
        if index == 0 {
            if let Ok(mut m) = mem.lock() {
                *m = (LIVE.load(Ordering::SeqCst) as i64, rss_bytes());
            }
        }
        barrier.wait();
        drop(input);
    })
    .map_err(|e| anyhow::anyhow!("cannot start workers: {e}"))?;
    for r in guards.join() {
        r.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
    }
    let (live1, rss1) = *memory.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let busy = *busy_max.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(Outcome {
        events: args.events,
        busy,
        customers: customers.load(Ordering::SeqCst),
        memberships: memberships.load(Ordering::SeqCst),
        live_bytes: live1 - live0,
        rss_bytes: rss1 - rss0,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "generator: {} users, {} events, {} worker(s), {} events per epoch",
        args.users, args.events, args.workers, args.epoch_events
    );
    for with_segments in [false, true] {
        let o = run(&args, with_segments)?;
        let name = if with_segments {
            "customer_traits + segments"
        } else {
            "customer_traits"
        };
        let per = |bytes: i64| bytes as f64 / o.customers.max(1) as f64;
        println!(
            "{name:<28} {:>10} events {:>7.2}s {:>10.0} events/s  customers {:>8}  memberships {:>8}  state: live heap {:>7.0} B/customer ({:.0} MiB), RSS {:>7.0} B/customer ({:.0} MiB)",
            o.events,
            o.busy.as_secs_f64(),
            o.events as f64 / o.busy.as_secs_f64(),
            o.customers,
            o.memberships,
            per(o.live_bytes),
            o.live_bytes as f64 / (1 << 20) as f64,
            per(o.rss_bytes),
            o.rss_bytes as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}
