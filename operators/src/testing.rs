//! Test support shared by the operator oracles: a seeded PRNG, random update streams with
//! retractions, a multi-worker runner and accumulation at an epoch.
//!
//! Public so job crates can test their own compositions the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::{ExchangeData, VecCollection};

/// SplitMix64: a tiny deterministic PRNG for tests.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// `n` random updates over `epochs` epochs: insertions, duplicate insertions, and
/// retractions of records inserted at an earlier or the same epoch (so every record's
/// accumulated multiplicity stays non-negative, as in a real collection).
pub fn random_updates<D: Clone + Ord>(
    rng: &mut Rng,
    n: usize,
    epochs: u64,
    mut gen: impl FnMut(&mut Rng) -> D,
) -> Vec<(D, u64, isize)> {
    let mut live: Vec<(D, u64)> = Vec::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let epoch = (i as u64 * epochs) / n as u64;
        let r = rng.below(10);
        if r < 3 && !live.is_empty() {
            let idx = rng.below(live.len() as u64) as usize;
            let (d, _) = live.swap_remove(idx);
            out.push((d, epoch, -1));
        } else if r < 4 && !live.is_empty() {
            // an exact duplicate of a live record
            let idx = rng.below(live.len() as u64) as usize;
            let d = live[idx].0.clone();
            live.push((d.clone(), epoch));
            out.push((d, epoch, 1));
        } else {
            let d = gen(rng);
            live.push((d.clone(), epoch));
            out.push((d, epoch, 1));
        }
    }
    out
}

/// Runs `build` over `updates` on `workers` threads (update `i` is fed by worker
/// `i % workers`, at its epoch) and returns every output update.
pub fn run_on_workers<D, O, F>(
    workers: usize,
    updates: Vec<(D, u64, isize)>,
    build: F,
) -> Vec<(O, u64, isize)>
where
    D: ExchangeData + Sync,
    O: ExchangeData,
    F: for<'s> Fn(VecCollection<'s, u64, D>) -> VecCollection<'s, u64, O> + Send + Sync + 'static,
{
    let results: Arc<Mutex<Vec<(O, u64, isize)>>> = Arc::default();
    let sink = Arc::clone(&results);
    let updates = Arc::new(updates);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let (index, peers) = (worker.index(), worker.peers());
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<D, isize>();
            let out = build(coll);
            let out = out.inspect(move |x: &(O, u64, isize)| {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(x.clone())
            });
            let (probe, _) = out.probe();
            (input, probe)
        });
        let max_epoch = updates.iter().map(|u| u.1).max().unwrap_or(0);
        for epoch in 0..=max_epoch {
            for (i, (d, t, r)) in updates.iter().enumerate() {
                if *t == epoch && i % peers == index {
                    input.update(d.clone(), *r);
                }
            }
            input.advance_to(epoch + 1);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
        }
    });
    match guards {
        Ok(g) => {
            for r in g.join() {
                if let Err(e) = r {
                    panic!("worker failed: {e}");
                }
            }
        }
        Err(e) => panic!("cannot start workers: {e}"),
    }
    let out = results.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out
}

/// The accumulated collection at `epoch`: records with nonzero total multiplicity over all
/// updates at times `<= epoch`.
pub fn accumulate_at<D: Ord + Clone>(
    updates: &[(D, u64, isize)],
    epoch: u64,
) -> BTreeMap<D, isize> {
    let mut acc: BTreeMap<D, isize> = BTreeMap::new();
    for (d, t, r) in updates {
        if *t <= epoch {
            *acc.entry(d.clone()).or_default() += *r;
        }
    }
    acc.retain(|_, r| *r != 0);
    acc
}
