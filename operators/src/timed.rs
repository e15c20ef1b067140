//! Building blocks of the hand-written timely operators (similarity, recommendations):
//! updates held per time until the frontier passes it, and fast hash maps.
//!
//! The operators built on these process each time once it is complete (no input can still
//! arrive at or before it), in time order, so they can keep plain mutable state instead of
//! differential's arrangements: they need totally ordered times.

use std::collections::{BTreeMap, HashMap, HashSet};

use foldhash::fast::FixedState;
use timely::dataflow::operators::{Capability, InputCapability};
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

/// Updates held per time until the input frontier passes it, with a capability to emit
/// their results at that time.
pub(crate) struct Stash<T: Timestamp, D> {
    pending: BTreeMap<T, (Capability<T>, Vec<D>)>,
}

impl<T: Timestamp + TotalOrder, D> Stash<T, D> {
    pub(crate) fn new() -> Self {
        Stash {
            pending: BTreeMap::new(),
        }
    }

    /// Holds `d` for `time`, which is at or after the time of `cap`.
    pub(crate) fn push(&mut self, cap: &InputCapability<T>, time: &T, d: D) {
        if let Some((_, v)) = self.pending.get_mut(time) {
            v.push(d);
            return;
        }
        // Messages always carry a stamp here (differential sends under capabilities).
        if let Some(c) = cap.retain_least(0) {
            self.pending
                .insert(time.clone(), (c.delayed(time), vec![d]));
        }
    }

    /// The earliest held time that `open` no longer admits, with its updates.
    pub(crate) fn pop_complete(
        &mut self,
        open: impl Fn(&T) -> bool,
    ) -> Option<(T, Capability<T>, Vec<D>)> {
        let t = self.pending.keys().next()?.clone();
        if open(&t) {
            return None;
        }
        let (cap, v) = self.pending.remove(&t)?;
        Some((t, cap, v))
    }
}
