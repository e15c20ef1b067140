//! Building blocks of the hand-written timely operators (similarity, recommendations):
//! updates held per time until the frontier passes it, and fast hash maps.
//!
//! The operators built on these process each time once it is complete (no input can still
//! arrive at or before it), in time order, so they can keep plain mutable state instead of
//! differential's arrangements: they need totally ordered times.

use std::collections::{BTreeMap, HashMap, HashSet};

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use foldhash::fast::FixedState;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::dataflow::StreamVec;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

pub(crate) type FastMap<K, V> = HashMap<K, V, FixedState>;
pub(crate) type FastSet<K> = HashSet<K, FixedState>;

pub(crate) fn fast_map<K, V>() -> FastMap<K, V> {
    HashMap::with_hasher(FixedState::default())
}

/// Bytes a hash map's table allocates for its capacity (hashbrown: a power of two of
/// buckets at most 7/8 full, one control byte per bucket).
pub(crate) fn map_bytes<K, V>(map: &FastMap<K, V>) -> usize {
    let cap = map.capacity();
    if cap == 0 {
        return 0;
    }
    let buckets = if cap < 8 {
        (cap + 1).next_power_of_two()
    } else {
        (cap * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<(K, V)>() + 1)
}

/// Updates held per time until the input frontiers pass it, with a capability to emit
/// their results at that time. Two kinds of update (`A` from a first input, `B` from a
/// second one) are held side by side; one-input operators leave `B` as `()`.
pub(crate) struct Stash<T: Timestamp, A, B = ()> {
    pending: BTreeMap<T, Held<T, A, B>>,
}

type Held<T, A, B> = (Capability<T>, Vec<A>, Vec<B>);

/// A completed time: the time, a capability for it and the updates of both kinds.
pub(crate) type Complete<T, A, B> = (T, Capability<T>, Vec<A>, Vec<B>);

impl<T: Timestamp + TotalOrder, A, B> Stash<T, A, B> {
    pub(crate) fn new() -> Self {
        Stash {
            pending: BTreeMap::new(),
        }
    }

    /// The updates held for `time`, which is at or after the time of `cap`.
    fn at(&mut self, cap: &InputCapability<T>, time: &T) -> Option<&mut Held<T, A, B>> {
        if !self.pending.contains_key(time) {
            // Messages always carry a stamp here (differential sends under capabilities).
            let c = cap.retain_least(0)?;
            self.pending
                .insert(time.clone(), (c.delayed(time), Vec::new(), Vec::new()));
        }
        self.pending.get_mut(time)
    }

    /// Holds `a` (of the first kind) for `time`, which is at or after the time of `cap`.
    pub(crate) fn push(&mut self, cap: &InputCapability<T>, time: &T, a: A) {
        if let Some(held) = self.at(cap, time) {
            held.1.push(a);
        }
    }

    /// Holds `b` (of the second kind) for `time`, which is at or after the time of `cap`.
    pub(crate) fn push_second(&mut self, cap: &InputCapability<T>, time: &T, b: B) {
        if let Some(held) = self.at(cap, time) {
            held.2.push(b);
        }
    }

    /// The earliest held time that `open` no longer admits, with its updates.
    pub(crate) fn pop_complete(&mut self, open: impl Fn(&T) -> bool) -> Option<Complete<T, A, B>> {
        let t = self.pending.keys().next()?.clone();
        if open(&t) {
            return None;
        }
        let (cap, a, b) = self.pending.remove(&t)?;
        Some((t, cap, a, b))
    }
}

/// The shell of the two-input operators: `first` is exchanged by `route`, `shared` is sent
/// to every worker, and `complete` runs on each worker once per complete time, in time
/// order, with that time's updates of both; what it emits is output at that time.
pub(crate) fn by_time<'s, T, A, B, O>(
    first: VecCollection<'s, T, A, isize>,
    shared: StreamVec<'s, T, (B, T, isize)>,
    route: impl Fn(&A) -> u64 + 'static,
    name: &str,
    mut complete: impl FnMut(Vec<(A, isize)>, Vec<(B, isize)>, &mut dyn FnMut(O, isize)) + 'static,
) -> VecCollection<'s, T, O, isize>
where
    T: Timestamp + TotalOrder,
    A: ExchangeData,
    B: ExchangeData,
    O: ExchangeData,
{
    let mut stash: Stash<T, (A, isize), (B, isize)> = Stash::new();
    first
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<(O, T, isize)>>, _, _, _, _>(
            shared.broadcast(),
            Exchange::new(move |(a, _, _): &(A, T, isize)| route(a)),
            Pipeline,
            name,
            move |_cap, _info| {
                move |(first_in, first_frontier), (shared_in, shared_frontier), output| {
                    first_in.for_each(|cap, data| {
                        for (a, t, d) in data.drain(..) {
                            stash.push(&cap, &t, (a, d));
                        }
                    });
                    shared_in.for_each(|cap, data| {
                        for (b, t, d) in data.drain(..) {
                            stash.push_second(&cap, &t, (b, d));
                        }
                    });
                    while let Some((t, cap, firsts, shareds)) = stash.pop_complete(|t| {
                        first_frontier.less_equal(t) || shared_frontier.less_equal(t)
                    }) {
                        let mut out = output.session(&cap);
                        complete(firsts, shareds, &mut |row, d| out.give((row, t.clone(), d)));
                    }
                }
            },
        )
        .as_collection()
}
