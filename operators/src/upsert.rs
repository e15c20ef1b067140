//! Keyed upserts: a log of `(key, sequence, Option<value>)` records kept as the collection
//! of each key's latest value (CRM profiles, a compacted Kafka topic).
//!
//! ```text
//!  log (key, seq, Some(v) | None)  ──exchange by key──▶ per complete epoch: per key the
//!                                                        record with the greatest seq
//!                                  ──▶ differential's arrange_from_upsert: retracts the
//!                                      key's previous value, inserts the new one
//!                                  ──▶ collection (key, value)
//! ```
//!
//! Semantics: after every epoch the output holds, for each key, the value of the key's
//! record with the greatest `seq` among all records up to that epoch, when that value is
//! `Some`; a `None` (a tombstone) removes the key until a later record sets it again. The
//! sequence orders the records of one key: for a Kafka topic, the record's offset, which
//! is the topic's own "last one wins" order (a producer keying by the key keeps a key on
//! one partition). Within an epoch the greatest `seq` wins, whatever order the records
//! arrive in; across epochs a later epoch wins, so epochs must be cut in log order (a
//! source yields a partition's records in offset order, which they are).
//!
//! Guarantees: state is one value per live key (the arrangement), not the history of the
//! log; a repeated value or a tombstone of an absent key changes nothing.
//!
//! Non-guarantees: the input is an append-only log, as a source yields it. A record whose
//! multiplicities within its epoch sum to zero or less is not an upsert and is ignored;
//! the retraction of a record of an earlier epoch cannot undo it (the previous value is no
//! longer kept). Records with equal keys and equal `seq` in one epoch are a producer error;
//! the greatest value then wins, deterministically.
//!
//! ```
//! use differential_dataflow::input::Input;
//! use cap_operators::upsert::latest_by_key;
//!
//! timely::execute_directly(|worker| {
//!     let mut log = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, log) = scope.new_collection::<(u64, u64, Option<String>), isize>();
//!         latest_by_key(log).inspect(|x| println!("{x:?}"));
//!         input
//!     });
//!     log.insert((42, 0, Some("bronze".to_string())));
//!     log.insert((42, 1, Some("gold".to_string()))); // (42, "gold") at epoch 0
//!     log.advance_to(1);
//!     log.insert((42, 2, None)); // retracts (42, "gold") at epoch 1
//!     log.advance_to(2);
//! });
//! ```

use std::hash::Hash;

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{ExchangeData, Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::timed::{fast_map, Stash};

/// An upsert with its difference: `((key, sequence, value or tombstone), diff)`.
type Upsert<K, S, V> = ((K, S, Option<V>), isize);

/// The collection of each key's latest value in the upsert log `log` (see the module docs).
pub fn latest_by_key<'s, K, S, V>(
    log: VecCollection<'s, u64, (K, S, Option<V>), isize>,
) -> VecCollection<'s, u64, (K, V), isize>
where
    K: ExchangeData + Hashable<Output = u64> + Hash,
    S: ExchangeData,
    V: ExchangeData,
{
    let mut stash: Stash<u64, Upsert<K, S, V>> = Stash::new();
    // Routed as arrange_from_upsert routes (by `hashed()`), so its exchange stays local.
    let latest = log
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(K, Option<V>, u64)>>, _, _, _>(
            Exchange::new(|((k, _, _), _, _): &((K, S, Option<V>), u64, isize)| k.hashed()),
            "UpsertLatestPerEpoch",
            move |_cap, _info| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (record, t, d) in data.drain(..) {
                            stash.push(&cap, &t, (record, d));
                        }
                    });
                    while let Some((t, cap, mut records, _)) =
                        stash.pop_complete(|t| frontier.less_equal(t))
                    {
                        differential_dataflow::consolidation::consolidate(&mut records);
                        let mut last = fast_map::<K, (S, Option<V>)>();
                        for ((k, s, v), d) in records {
                            if d <= 0 {
                                continue;
                            }
                            // Consolidated order is (k, s, v) ascending: a later record
                            // of `k` has a greater (s, v) and replaces the one held.
                            last.insert(k, (s, v));
                        }
                        let mut out = output.session(&cap);
                        for (k, (_, v)) in last {
                            out.give((k, v, t));
                        }
                    }
                }
            },
        );
    arrange_from_upsert::<ValBuilder<K, V, u64, isize>, ValSpine<K, V, u64, isize>, K, V>(
        latest,
        "UpsertLatest",
    )
    .as_collection(|k, v| (k.clone(), v.clone()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{accumulate_at, run_on_workers, Rng};

    type Log = (u32, u64, Option<u16>);

    /// A random upsert log: keys updated several times per epoch and across epochs,
    /// tombstones, repeated values, exact duplicates, and records inserted and retracted
    /// within their own epoch (which are no upserts). Each record gets a unique sequence
    /// number, shuffled within its epoch so arrival order differs from log order.
    fn random_log(seed: u64, n: usize, epochs: u64, keys: u64) -> Vec<(Log, u64, isize)> {
        let mut rng = Rng::new(seed);
        let mut out: Vec<(Log, u64, isize)> = Vec::with_capacity(n + n / 10);
        for i in 0..n {
            let epoch = (i as u64 * epochs) / n as u64;
            let key = rng.below(keys) as u32;
            let value = match rng.below(10) {
                0 | 1 => None,
                2 => Some(7), // a frequently repeated value
                _ => Some(rng.below(50) as u16),
            };
            let record = (key, i as u64, value);
            out.push((record, epoch, 1));
            match rng.below(20) {
                0 => out.push((record, epoch, 1)),  // delivered twice
                1 => out.push((record, epoch, -1)), // cancelled within the epoch
                _ => {}
            }
        }
        // Shuffle within each epoch (a Fisher-Yates pass over each epoch's run).
        let mut start = 0;
        while start < out.len() {
            let epoch = out[start].1;
            let end = start + out[start..].iter().take_while(|u| u.1 == epoch).count();
            for i in (start + 1..end).rev() {
                let j = start + rng.below((i - start + 1) as u64) as usize;
                out.swap(i, j);
            }
            start = end;
        }
        out
    }

    /// The oracle: replay the log in (epoch, seq) order, keeping records whose
    /// multiplicities within their epoch sum to more than zero.
    fn oracle(log: &[(Log, u64, isize)], upto: u64) -> BTreeMap<(u32, u16), isize> {
        let mut sums: BTreeMap<(u64, u64, u32, Option<u16>), isize> = BTreeMap::new();
        for &((k, s, v), t, d) in log.iter().filter(|u| u.1 <= upto) {
            *sums.entry((t, s, k, v)).or_default() += d;
        }
        let mut current: BTreeMap<u32, u16> = BTreeMap::new();
        for ((_, _, k, v), d) in sums {
            if d <= 0 {
                continue;
            }
            match v {
                Some(v) => current.insert(k, v),
                None => current.remove(&k),
            };
        }
        current.into_iter().map(|kv| (kv, 1)).collect()
    }

    #[test]
    fn matches_a_sequential_replay_of_the_log_at_every_epoch() {
        for (seed, workers) in [(1, 1), (2, 3), (3, 2), (4, 3)] {
            let epochs = 12;
            let log = random_log(seed, 3_000, epochs, 150);
            let out = run_on_workers(workers, log.clone(), latest_by_key);
            for t in 0..epochs {
                let got = accumulate_at(&out, t);
                let want = oracle(&log, t);
                assert_eq!(got, want, "seed {seed}, {workers} workers, epoch {t}");
            }
            assert!(
                out.iter().any(|u| u.2 < 0),
                "seed {seed}: the log should change some key's value (a retraction)"
            );
        }
    }

    #[test]
    fn a_tombstone_removes_the_key_and_a_repeat_changes_nothing() {
        let log = vec![
            ((1, 0, Some(5)), 0, 1),
            ((1, 1, Some(5)), 1, 1), // the same value again: no change
            ((2, 2, None), 1, 1),    // a tombstone of an absent key: no change
            ((1, 3, None), 2, 1),
            ((1, 4, Some(6)), 3, 1),
        ];
        let mut out = run_on_workers(2, log, latest_by_key::<u32, u64, u16>);
        out.sort();
        assert_eq!(
            out,
            vec![((1, 5), 0, 1), ((1, 5), 2, -1), ((1, 6), 3, 1)],
            "exactly one insert, one retraction, one insert"
        );
    }
}
