//! k-means segmentation benchmark: refit time for N users, and incremental assignment
//! throughput of the dataflow operator.
//!
//! ```text
//! cargo bench -p cap-benches --bench kmeans -- [--users 10000,100000] [--changes N] [--epochs E] [--workers 1,2]
//! ```
//! - `refit`: `fit_model` (log1p, standardize, k-means++ x n_init, Lloyd) over N users'
//!   synthetic traits; prints seconds, users/s and the SSE.
//! - `assign`: `kmeans_segments` loaded with N users (first fit), then `--changes` trait
//!   changes (a retraction and an insertion each) over `--epochs` epochs, with scheduled
//!   refits off (pure incremental assignment) and with the default schedule (amortized
//!   refits included); prints changes/s.

use std::time::Instant;

use cap_operators::kmeans::{fit_model, kmeans_segments, KMeansParams, SegmentConfig, SplitMix64};
use clap::Parser;
use differential_dataflow::input::Input;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

#[derive(Parser, Debug)]
#[command(about = "k-means segmentation: refit time and assignment updates/s")]
struct Args {
    /// User counts, comma separated.
    #[arg(long, default_value = "10000,100000,1000000", value_delimiter = ',')]
    users: Vec<usize>,
    /// Trait changes streamed in the assignment benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    changes: usize,
    /// Epochs the changes are spread over.
    #[arg(long, default_value_t = 100)]
    epochs: u64,
    /// Worker counts for the assignment benchmark.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Users for the assignment benchmark.
    #[arg(long, default_value_t = 100_000)]
    assign_users: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

type Traits = [u64; 6];

/// Synthetic traits of a customer base: mostly browsers, some carters, few buyers.
fn traits(rng: &mut SplitMix64) -> Traits {
    let views = 1 + rng.below(30) as u64;
    match rng.below(10) {
        0 => {
            let purchases = 1 + rng.below(3) as u64;
            [
                views + 10,
                1 + rng.below(5) as u64,
                purchases,
                purchases * (1000 + rng.below(100_000) as u64),
                3 + rng.below(15) as u64,
                1 + rng.below(8) as u64,
            ]
        }
        1 | 2 => [
            views,
            1 + rng.below(3) as u64,
            0,
            0,
            1 + rng.below(10) as u64,
            1 + rng.below(4) as u64,
        ],
        _ => [
            views / 3,
            0,
            0,
            0,
            1 + rng.below(4) as u64,
            1 + rng.below(2) as u64,
        ],
    }
}

fn config(schedule: bool) -> SegmentConfig {
    SegmentConfig {
        kmeans: KMeansParams::default(),
        scales: vec![1.0, 1.0, 1.0, 100.0, 1.0, 1.0],
        min_users: 100,
        refit_change_ratio: if schedule { 1.0 } else { 0.0 },
        drift_factor: if schedule { 1.5 } else { 0.0 },
        drift_min_change_ratio: 0.1,
    }
}

fn bench_refit(users: usize) {
    let mut rng = SplitMix64::new(1);
    let all: Vec<Traits> = (0..users).map(|_| traits(&mut rng)).collect();
    let started = Instant::now();
    let model = fit_model(all.iter(), 1, &config(true));
    let secs = started.elapsed().as_secs_f64();
    let sse = model.as_ref().map(|m| m.sse).unwrap_or(0.0);
    println!(
        "refit   users {users:>9}  k 5 n_init 10  {secs:>8.3} s  {:>12.0} users/s  sse/user {:.4}",
        users as f64 / secs,
        sse / users as f64
    );
}

fn bench_assign(workers: usize, users: usize, changes: usize, epochs: u64, schedule: bool) {
    // Worker 0's clock: when the first fit was done and when the last change was assigned.
    let marks = std::sync::Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    let marks_w = std::sync::Arc::clone(&marks);
    let load_started = Instant::now();
    let result = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, traits) = scope.new_collection::<(u64, Traits), isize>();
            let s = kmeans_segments(traits, config(schedule));
            s.assignments.inner.probe_with(&probe);
            s.centroids.inner.probe_with(&probe);
            input
        });
        // Epoch 0: every user's first traits (worker i feeds users i, i + peers, ...).
        let mut rng = SplitMix64::new(index as u64 + 10);
        let mut current: Vec<Traits> = Vec::new();
        for u in (index..users).step_by(peers) {
            let t = traits(&mut rng);
            input.insert((u as u64, t));
            current.push(t);
        }
        input.advance_to(1);
        input.flush();
        worker.step_while(|| probe.less_than(input.time()));
        if index == 0 {
            marks_w.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(Instant::now());
        }
        // Then the changes, spread over the epochs.
        let mine = changes / peers;
        let per_epoch = (mine as u64 / epochs).max(1) as usize;
        let mut done = 0;
        let mut epoch = 1;
        while done < mine && !current.is_empty() {
            for _ in 0..per_epoch.min(mine - done) {
                let slot = rng.below(current.len());
                let user = (index + slot * peers) as u64;
                let t = traits(&mut rng);
                input.remove((user, current[slot]));
                input.insert((user, t));
                current[slot] = t;
                done += 1;
            }
            epoch += 1;
            input.advance_to(epoch);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
        }
        if index == 0 {
            marks_w.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(Instant::now());
        }
        // Dropping the input ends it: the end-of-input refit runs as the workers finish.
    });
    match result {
        Ok(guards) => {
            for r in guards.join() {
                if let Err(e) = r {
                    eprintln!("worker failed: {e}");
                }
            }
        }
        Err(e) => {
            eprintln!("cannot start workers: {e}");
            return;
        }
    }
    let finished = Instant::now();
    let (first, last) = *marks.lock().unwrap_or_else(|p| p.into_inner());
    let (Some(first), Some(last)) = (first, last) else {
        eprintln!("worker 0 recorded no times");
        return;
    };
    let load = first.duration_since(load_started).as_secs_f64();
    let secs = last.duration_since(first).as_secs_f64();
    let end = finished.duration_since(last).as_secs_f64();
    println!(
        "assign  w={workers} users {users:>8}  load+first fit {load:>7.3} s  {changes:>8} changes over {epochs} epochs {secs:>7.3} s = {:>9.0} changes/s  end-of-input refit {end:>6.3} s  ({})",
        changes as f64 / secs,
        if schedule { "default refit schedule" } else { "no scheduled refits" }
    );
}

fn main() {
    let args = Args::parse();
    for &users in &args.users {
        bench_refit(users);
    }
    for &workers in &args.workers {
        for schedule in [false, true] {
            bench_assign(
                workers,
                args.assign_users,
                args.changes,
                args.epochs,
                schedule,
            );
        }
    }
}
