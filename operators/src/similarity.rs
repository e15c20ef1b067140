//! Item-item cosine similarity from user-item touches.
//!
//! Input: `(user, item)` touches, one update per event (duplicates and retractions allowed;
//! only whether a user touched an item matters). [`similar_items`] maintains, per item `a`,
//! its `top_k` most similar items:
//!
//! - users with more than `max_user_items` distinct items are left out entirely (bots);
//! - `n(x)` = distinct (kept) users who touched `x`;
//! - `co(a, b)` = distinct (kept) users who touched both `a` and `b`, for `a != b`;
//! - `score(a, b) = co / sqrt(n(a) n(b))`, only for pairs with `co >= 2`;
//! - per `a`, the `top_k` pairs by score descending, ties by `b` ascending, ranked `1..`.
//!
//! Scores are irrational, so they are never compared as floats: each output row carries the
//! exact integers ([`Cosine`]: `co`, `n(a)`, `n(b)`) and ranking compares
//! `co1² · n(b2)` with `co2² · n(b1)` in `u128` (the common `n(a)` cancels), so ties are
//! exact and the ranking is the same on any number of workers. [`Cosine::value`] is the
//! float for display (`sqrt(co² / (n(a) n(b)))` in IEEE `f64`: equal exact scores give equal
//! floats) and [`Cosine::fixed`] the fixed-point form recommendations add up.
//!
//! ```text
//!  touches (user, item)
//!   ─ exchange by user ─▶ UserItemPairs: per user, its items and counts; at each complete
//!        time, the change of its kept item set K (empty over the cap) as
//!        n deltas (item, ±1) and pair deltas ((a, b), ±1), a < b, both pre-summed per worker
//!   pair deltas ─ exchange by pair ─▶ Cooccurrence: co per pair (a < b) in a hash map;
//!        emits (a, b, co) and (b, a, co) when a pair's co changes and was or is >= 2
//!        (co 0 when it leaves the candidates)
//!   candidates ─ exchange by a ─┐
//!   n deltas ─ broadcast ───────┴▶ TopSimilar: per a, its candidates and its emitted list;
//!        re-ranks only the items whose list can have changed, emits the list's differences
//! ```
//!
//! This is three timely operators over hash maps, not differential arrangements: the old
//! formulation as joins and reduces re-joined and re-ranked every candidate pair of every
//! item whose `n` changed, which is nearly every popular item every epoch, through
//! differential's merge batchers (decision D14 in `docs/decisions.md`).
//!
//! Which lists are re-ranked at a time (everything else provably keeps its list):
//! - `a` gained, lost or changed a candidate (`co` of `(a, b)` changed);
//! - `n(a)` changed (the ranking cannot change, every row's `n(a)` does);
//! - `n(b)` changed for some `b` in `a`'s current list (its score moved);
//! - `n(b)` decreased for some candidate `b` of `a` (its score rose: it may enter the list).
//!
//! An increase of `n(b)` for a `b` outside `a`'s list lowers a score that already ranks
//! below the list, so it changes nothing. Re-ranking an item costs `O(candidates)`.
//!
//! Work: a user's new item `x` costs `O(|K|)` pair deltas (all of a user's pairs when the
//! user crosses the cap, at most `max_user_items²/2`); each pair delta one hash-map update;
//! each re-ranked item its candidate count. State: per user, their distinct items and counts;
//! per co-occurring pair `a < b` one entry of 12 bytes plus hash-map slack (items are
//! interned to `u32` on each worker); per candidate pair (`co >= 2`), an entry in both
//! items' candidate lists; `n` of every item on every worker (replicated, one entry per
//! item); per item its emitted list. [`PairStats`] reports the pairs, the candidates and
//! the bytes of the pair state, measured from the capacities of its maps and lists.
//!
//! Guarantees: after every epoch the output equals the definition above applied to the
//! accumulated input (checked against a brute-force oracle on 1 and 3 workers with
//! retractions). Non-guarantees: counts must stay below 2³² (they are counts of distinct
//! users); a worker can hold at most 2³² distinct items in its pair state.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use foldhash::fast::FixedState;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::timed::{by_time, fast_map, map_bytes, FastMap, FastSet, Stash};

/// Fixed-point scale of [`Cosine::fixed`]: `2^40`.
pub const FIXED_SCALE: f64 = (1u64 << 40) as f64;

/// How similar items are computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimilarityConfig {
    /// Users with more distinct items than this are left out (default 500).
    pub max_user_items: usize,
    /// Similar items kept per item (default 10).
    pub top_k: usize,
}

impl Default for SimilarityConfig {
    fn default() -> Self {
        SimilarityConfig {
            max_user_items: 500,
            top_k: 10,
        }
    }
}

/// The exact cosine of two items: `co / sqrt(n_item · n_similar)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cosine {
    /// Distinct users who touched both items.
    pub co: u64,
    /// Distinct users who touched the item.
    pub n_item: u64,
    /// Distinct users who touched the similar item.
    pub n_similar: u64,
}

impl Cosine {
    /// `sqrt(co² / (n_item · n_similar))` in `f64`. Both the numerator and the denominator
    /// are exact integers in `f64` (below 2⁵³), and IEEE division and square root are
    /// correctly rounded, so two cosines with equal exact values give equal floats.
    pub fn value(&self) -> f64 {
        let num = (self.co as f64) * (self.co as f64);
        let den = (self.n_item as f64) * (self.n_similar as f64);
        if den == 0.0 {
            0.0
        } else {
            (num / den).sqrt()
        }
    }

    /// [`Cosine::value`] rounded to 6 decimals (half away from zero), as printed.
    pub fn rounded(&self) -> f64 {
        (self.value() * 1e6).round() / 1e6
    }

    /// `round(value · 2^40)`: the fixed-point similarity that recommendation scores sum
    /// exactly (integers add associatively, so sums do not depend on order or workers).
    pub fn fixed(&self) -> i64 {
        (self.value() * FIXED_SCALE).round() as i64
    }

    /// Compares the exact values: `co1² · n1' · n2'` against `co2² · n1 · n2` in `u128`.
    pub fn cmp_exact(&self, other: &Cosine) -> Ordering {
        let lhs =
            sq(self.co).saturating_mul(u128::from(other.n_item) * u128::from(other.n_similar));
        let rhs = sq(other.co).saturating_mul(u128::from(self.n_item) * u128::from(self.n_similar));
        lhs.cmp(&rhs)
    }
}

fn sq(x: u64) -> u128 {
    u128::from(x) * u128::from(x)
}

/// One entry of an item's similar-items list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SimilarItem<I> {
    /// 1-based rank in the item's list.
    pub rank: u32,
    /// The similar item.
    pub item: I,
    /// The exact cosine.
    pub cosine: Cosine,
}

/// Changes to the co-occurrence state, reported per worker at each completed time. Each
/// field is a delta; summed over all workers and times they give the current totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairStats {
    /// Distinct co-occurring pairs `a < b` (`co >= 1`).
    pub pairs: i64,
    /// Pairs `a < b` with `co >= 2` (the candidates ranked).
    pub candidates: i64,
    /// Bytes held by the pair state: the co-occurrence hash maps and item interners, and the
    /// candidate lists, measured from their capacities (not counted: the per-user item
    /// sets, `n`, the emitted lists and allocator overhead).
    pub bytes: i64,
}

impl PairStats {
    /// Adds a delta.
    pub fn add(&mut self, d: PairStats) {
        self.pairs += d.pairs;
        self.candidates += d.candidates;
        self.bytes += d.bytes;
    }
}

/// A change computed per user: an item's `n` or a pair's `co` moves by the difference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Delta<I> {
    Item(I),
    Pair(I, I),
}

/// The kept items of a user's sorted `(item, count)` list: those with a positive count,
/// none when there are more than `max`.
fn kept<I: Clone>(items: &[(I, i64)], max: usize) -> Vec<I> {
    let present = items.iter().filter(|(_, c)| *c > 0).count();
    if present > max {
        return Vec::new();
    }
    items
        .iter()
        .filter(|(_, c)| *c > 0)
        .map(|(i, _)| i.clone())
        .collect()
}

/// Adds to `n` and `pairs` the change from kept set `old` to `new` (both sorted):
/// with `C = old ∩ new`, `A = new \ old`, `R = old \ new`, the pairs change by
/// `C×A + pairs(A) - C×R - pairs(R)`.
fn kept_change<I: Clone + Ord + Hash>(
    old: &[I],
    new: &[I],
    n: &mut FastMap<I, isize>,
    pairs: &mut FastMap<(I, I), isize>,
) {
    let (mut common, mut added, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(w)) if o == w => {
                common.push(o);
                i += 1;
                j += 1;
            }
            (Some(o), Some(w)) if o < w => {
                removed.push(o);
                i += 1;
            }
            (Some(o), None) => {
                removed.push(o);
                i += 1;
            }
            (_, Some(w)) => {
                added.push(w);
                j += 1;
            }
            (None, None) => break,
        }
    }
    let mut pair = |a: &I, b: &I, d: isize| {
        let key = if a < b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        *pairs.entry(key).or_insert(0) += d;
    };
    for (set, d) in [(&added, 1isize), (&removed, -1isize)] {
        for (k, x) in set.iter().enumerate() {
            *n.entry((*x).clone()).or_insert(0) += d;
            for c in &common {
                pair(x, c, d);
            }
            for y in &set[k + 1..] {
                pair(x, y, d);
            }
        }
    }
}

/// Per user, their items and counts (sorted by item).
struct UserItems<U, I> {
    users: FastMap<U, Vec<(I, i64)>>,
    max_user_items: usize,
}

impl<U: Clone + Ord + Hash, I: Clone + Ord + Hash> UserItems<U, I> {
    /// Applies one complete time's updates; adds the `n` and pair deltas of the users'
    /// kept sets to `n` and `pairs`.
    #[inline(never)]
    fn complete_time(
        &mut self,
        mut ups: Vec<((U, I), isize)>,
        n: &mut FastMap<I, isize>,
        pairs: &mut FastMap<(I, I), isize>,
    ) {
        ups.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        let mut k = 0;
        while k < ups.len() {
            let user = ups[k].0 .0.clone();
            let items = self.users.entry(user.clone()).or_default();
            let old = kept(items, self.max_user_items);
            while k < ups.len() && ups[k].0 .0 == user {
                let ((_, item), d) = &ups[k];
                match items.binary_search_by(|(i, _)| i.cmp(item)) {
                    Ok(p) => {
                        items[p].1 += *d as i64;
                        if items[p].1 == 0 {
                            items.remove(p);
                        }
                    }
                    Err(p) => items.insert(p, (item.clone(), *d as i64)),
                }
                k += 1;
            }
            let new = kept(items, self.max_user_items);
            if items.is_empty() {
                self.users.remove(&user);
            }
            kept_change(&old, &new, n, pairs);
        }
    }
}

/// Per user, their items; at each complete time the `n` and pair deltas of the change of
/// their kept set, summed over the worker's users (see the module docs).
fn user_pair_deltas<'s, T, U, I>(
    touches: VecCollection<'s, T, (U, I)>,
    max_user_items: usize,
) -> VecCollection<'s, T, Delta<I>>
where
    T: Timestamp + Lattice + TotalOrder,
    U: ExchangeData + Hash,
    I: ExchangeData + Hash,
{
    let mut state = UserItems {
        users: fast_map(),
        max_user_items,
    };
    let mut stash: Stash<T, ((U, I), isize)> = Stash::new();
    touches
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(Delta<I>, T, isize)>>, _, _, _>(
            Exchange::new(|((u, _), _, _): &((U, I), T, isize)| u.hashed()),
            "UserItemPairs",
            move |_cap, _info| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (ui, t, d) in data.drain(..) {
                            stash.push(&cap, &t, (ui, d));
                        }
                    });
                    while let Some((t, cap, ups, _)) =
                        stash.pop_complete(|t| frontier.less_equal(t))
                    {
                        let (mut n, mut pairs) = (fast_map(), fast_map());
                        state.complete_time(ups, &mut n, &mut pairs);
                        let mut out = output.session(&cap);
                        for (item, d) in n {
                            if d != 0 {
                                out.give((Delta::Item(item), t.clone(), d));
                            }
                        }
                        for ((a, b), d) in pairs {
                            if d != 0 {
                                out.give((Delta::Pair(a, b), t.clone(), d));
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// `co` per pair `a < b`, with items interned to `u32` on this worker: a pair is one `u64`
/// key and a `u32` count.
struct PairCounts<I> {
    ids: FastMap<I, u32>,
    names: Vec<I>,
    co: FastMap<u64, u32>,
    bytes: i64,
}

impl<I: Clone + Eq + Hash> PairCounts<I> {
    fn intern(&mut self, i: &I) -> u64 {
        if let Some(id) = self.ids.get(i) {
            return u64::from(*id);
        }
        let id = self.names.len() as u32;
        self.names.push(i.clone());
        self.ids.insert(i.clone(), id);
        u64::from(id)
    }

    /// Applies one complete time's pair deltas; `emit` gets `(a, b, co)` in both directions
    /// for each candidate change. Returns the change of the state.
    #[inline(never)]
    fn complete_time(
        &mut self,
        ups: Vec<((I, I), isize)>,
        mut emit: impl FnMut((I, I, u32)),
    ) -> PairStats {
        let mut summed: FastMap<(I, I), isize> =
            HashMap::with_capacity_and_hasher(ups.len(), FixedState::default());
        for (p, d) in ups {
            *summed.entry(p).or_insert(0) += d;
        }
        let mut delta = PairStats::default();
        for ((a, b), d) in summed {
            if d == 0 {
                continue;
            }
            let key = (self.intern(&a) << 32) | self.intern(&b);
            let old = self.co.get(&key).copied().unwrap_or(0);
            let new = (i64::from(old) + d as i64).max(0) as u32;
            if new == 0 {
                self.co.remove(&key);
            } else {
                self.co.insert(key, new);
            }
            delta.pairs += i64::from(new > 0) - i64::from(old > 0);
            delta.candidates += i64::from(new >= 2) - i64::from(old >= 2);
            if old != new && (old >= 2 || new >= 2) {
                let shown = if new >= 2 { new } else { 0 };
                emit((b.clone(), a.clone(), shown));
                emit((a, b, shown));
            }
        }
        let now = (map_bytes(&self.co)
            + map_bytes(&self.ids)
            + self.names.capacity() * std::mem::size_of::<I>()) as i64;
        delta.bytes = now - self.bytes;
        self.bytes = now;
        delta
    }
}

/// `co` per pair `a < b`: emits `((a, b, co), t, 1)` and `((b, a, co), t, 1)` at each time
/// a pair's `co` changes and was or is `>= 2`, with `co = 0` when it drops below 2.
fn cooccurrence<'s, T, I>(
    pair_deltas: VecCollection<'s, T, (I, I)>,
    stats: Rc<RefCell<dyn FnMut(PairStats)>>,
) -> VecCollection<'s, T, (I, I, u32)>
where
    T: Timestamp + Lattice + TotalOrder,
    I: ExchangeData + Hash,
{
    let mut state = PairCounts {
        ids: fast_map(),
        names: Vec::new(),
        co: fast_map(),
        bytes: 0,
    };
    let mut stash: Stash<T, ((I, I), isize)> = Stash::new();
    pair_deltas
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<((I, I, u32), T, isize)>>, _, _, _>(
            Exchange::new(|(p, _, _): &((I, I), T, isize)| p.hashed()),
            "Cooccurrence",
            move |_cap, _info| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (p, t, d) in data.drain(..) {
                            stash.push(&cap, &t, (p, d));
                        }
                    });
                    while let Some((t, cap, ups, _)) =
                        stash.pop_complete(|t| frontier.less_equal(t))
                    {
                        let mut out = output.session(&cap);
                        let delta = state.complete_time(ups, |c| out.give((c, t.clone(), 1)));
                        (stats.borrow_mut())(delta);
                    }
                }
            },
        )
        .as_collection()
}

/// One item's candidates and the list last emitted for it.
struct ItemLists<I> {
    /// `(b, co)` for every `b` with `co(a, b) >= 2`, sorted by `b`.
    candidates: Vec<(I, u32)>,
    /// The rows last emitted, by rank.
    top: Vec<SimilarItem<I>>,
}

/// The similar-items lists of the items owned by this worker, with `n` of every item.
struct TopLists<I> {
    top_k: usize,
    n: FastMap<I, u64>,
    items: FastMap<I, ItemLists<I>>,
    /// For each `b`, the items (on this worker) whose emitted list contains `b`.
    listed_in: FastMap<I, Vec<I>>,
    candidate_bytes: i64,
}

impl<I: Clone + Ord + Hash> TopLists<I> {
    /// Applies one complete time's `n` deltas and candidate changes, re-ranks the lists
    /// that can have changed and emits their differences. Returns the change of the
    /// candidate lists' bytes.
    #[inline(never)]
    fn complete_time(
        &mut self,
        n_deltas: FastMap<I, isize>,
        mut changes: Vec<(I, I, u32)>,
        mut emit: impl FnMut((I, SimilarItem<I>), isize),
    ) -> PairStats {
        let mut dirty: FastSet<I> = HashSet::with_hasher(FixedState::default());
        let mut decreased: FastSet<I> = HashSet::with_hasher(FixedState::default());
        for (i, d) in n_deltas {
            if d == 0 {
                continue;
            }
            let old = self.n.get(&i).copied().unwrap_or(0);
            let new = (old as i64 + d as i64).max(0) as u64;
            if new == 0 {
                self.n.remove(&i);
            } else {
                self.n.insert(i.clone(), new);
            }
            if let Some(holders) = self.listed_in.get(&i) {
                dirty.extend(holders.iter().cloned());
            }
            if self.items.contains_key(&i) {
                dirty.insert(i.clone());
            }
            if new < old {
                decreased.insert(i);
            }
        }
        if !decreased.is_empty() {
            for (a, lists) in &self.items {
                if lists.candidates.iter().any(|(b, _)| decreased.contains(b)) {
                    dirty.insert(a.clone());
                }
            }
        }
        let bytes_before = self.candidate_bytes;
        let entry_bytes = std::mem::size_of::<(I, u32)>() as i64;
        // Grouped by item and sorted by candidate, so each list is walked once, in order.
        changes.sort_unstable_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        let mut k = 0;
        while k < changes.len() {
            let a = changes[k].0.clone();
            let end = k + changes[k..].iter().take_while(|c| c.0 == a).count();
            let lists = self.items.entry(a.clone()).or_insert_with(|| ItemLists {
                candidates: Vec::new(),
                top: Vec::new(),
            });
            let before = lists.candidates.capacity() as i64;
            merge_candidates(&mut lists.candidates, &changes[k..end]);
            self.candidate_bytes += (lists.candidates.capacity() as i64 - before) * entry_bytes;
            dirty.insert(a);
            k = end;
        }
        for a in dirty {
            let Some(lists) = self.items.get_mut(&a) else {
                continue;
            };
            let n_item = self.n.get(&a).copied().unwrap_or(0);
            let new_top = rank(&lists.candidates, &self.n, n_item, self.top_k);
            if new_top != lists.top {
                for row in &lists.top {
                    if !new_top.contains(row) {
                        emit((a.clone(), row.clone()), -1);
                    }
                    if !new_top.iter().any(|r| r.item == row.item) {
                        unlist(&mut self.listed_in, &row.item, &a);
                    }
                }
                for row in &new_top {
                    if !lists.top.contains(row) {
                        emit((a.clone(), row.clone()), 1);
                    }
                    if !lists.top.iter().any(|r| r.item == row.item) {
                        self.listed_in
                            .entry(row.item.clone())
                            .or_default()
                            .push(a.clone());
                    }
                }
                lists.top = new_top;
            }
            if lists.candidates.is_empty() {
                self.items.remove(&a);
            }
        }
        PairStats {
            bytes: self.candidate_bytes - bytes_before,
            ..PairStats::default()
        }
    }
}

/// Per item, the `top_k` candidates by exact cosine, as list differences.
fn top_similar<'s, T, I>(
    candidates: VecCollection<'s, T, (I, I, u32)>,
    n_deltas: VecCollection<'s, T, I>,
    top_k: usize,
    stats: Rc<RefCell<dyn FnMut(PairStats)>>,
) -> VecCollection<'s, T, (I, SimilarItem<I>)>
where
    T: Timestamp + Lattice + TotalOrder,
    I: ExchangeData + Hash,
{
    let mut state = TopLists {
        top_k,
        n: fast_map(),
        items: fast_map(),
        listed_in: fast_map(),
        candidate_bytes: 0,
    };
    let item_of = |(a, _, _): &(I, I, u32)| a.hashed();
    by_time(
        candidates,
        n_deltas.inner,
        item_of,
        "TopSimilar",
        move |changes, n_updates, emit| {
            let mut n_deltas: FastMap<I, isize> = fast_map();
            for (i, d) in n_updates {
                *n_deltas.entry(i).or_insert(0) += d;
            }
            // A candidate change carries its new co; its difference is not needed.
            let changes = changes.into_iter().map(|(c, _)| c).collect();
            let delta = state.complete_time(n_deltas, changes, emit);
            (stats.borrow_mut())(delta);
        },
    )
}

/// Sets `candidates[b] = co` for each `(_, b, co)` of `changes` (sorted by `b`), removing
/// `b` when `co` is 0. Few changes to a long list are binary searched; otherwise the list is
/// merged with the changes in one pass.
fn merge_candidates<I: Clone + Ord>(candidates: &mut Vec<(I, u32)>, changes: &[(I, I, u32)]) {
    if changes.len() * 16 < candidates.len() {
        for (_, b, co) in changes {
            match candidates.binary_search_by(|(x, _)| x.cmp(b)) {
                Ok(p) if *co == 0 => {
                    candidates.remove(p);
                }
                Ok(p) => candidates[p].1 = *co,
                Err(p) if *co > 0 => candidates.insert(p, (b.clone(), *co)),
                Err(_) => {}
            }
        }
    } else {
        let old = std::mem::take(candidates);
        let mut merged = Vec::with_capacity(old.len() + changes.len());
        let mut changes = changes.iter().peekable();
        for (b, co) in old {
            while let Some((_, c, _)) = changes.peek() {
                if *c >= b {
                    break;
                }
                let (_, c, new) = changes.next().expect("peeked");
                if *new > 0 {
                    merged.push((c.clone(), *new));
                }
            }
            match changes.peek() {
                Some((_, c, new)) if *c == b => {
                    if *new > 0 {
                        merged.push((b, *new));
                    }
                    changes.next();
                }
                _ => merged.push((b, co)),
            }
        }
        for (_, c, new) in changes {
            if *new > 0 {
                merged.push((c.clone(), *new));
            }
        }
        *candidates = merged;
    }
    if candidates.is_empty() {
        candidates.shrink_to_fit();
    }
}

/// Removes `a` from the items listing `b`.
fn unlist<I: Eq + Hash>(listed_in: &mut FastMap<I, Vec<I>>, b: &I, a: &I) {
    if let Some(holders) = listed_in.get_mut(b) {
        if let Some(p) = holders.iter().position(|x| x == a) {
            holders.swap_remove(p);
        }
        if holders.is_empty() {
            listed_in.remove(b);
        }
    }
}

/// The `top_k` of `candidates` by exact cosine, ties by item.
fn rank<I: Clone + Ord + Hash>(
    candidates: &[(I, u32)],
    n: &FastMap<I, u64>,
    n_item: u64,
    top_k: usize,
) -> Vec<SimilarItem<I>> {
    let mut scored: Vec<(&I, u64, u64)> = candidates
        .iter()
        .map(|(b, co)| (b, u64::from(*co), n.get(b).copied().unwrap_or(0)))
        .collect();
    // n(item) is common to every candidate: co² / n(b) orders them.
    let order = |x: &(&I, u64, u64), y: &(&I, u64, u64)| -> Ordering {
        let lhs = sq(y.1).saturating_mul(u128::from(x.2));
        let rhs = sq(x.1).saturating_mul(u128::from(y.2));
        lhs.cmp(&rhs).then_with(|| x.0.cmp(y.0))
    };
    if top_k == 0 {
        return Vec::new();
    }
    if scored.len() > top_k {
        scored.select_nth_unstable_by(top_k - 1, order);
        scored.truncate(top_k);
    }
    scored.sort_unstable_by(order);
    scored
        .into_iter()
        .enumerate()
        .map(|(r, (b, co, n_similar))| SimilarItem {
            rank: r as u32 + 1,
            item: b.clone(),
            cosine: Cosine {
                co,
                n_item,
                n_similar,
            },
        })
        .collect()
}

/// Per item, its `top_k` most similar items by exact cosine (see the module docs).
/// `stats` receives the changes to the pair state at each completed time.
pub fn similar_items<'s, T, U, I>(
    touches: VecCollection<'s, T, (U, I)>,
    config: &SimilarityConfig,
    stats: impl FnMut(PairStats) + 'static,
) -> VecCollection<'s, T, (I, SimilarItem<I>)>
where
    T: Timestamp + Lattice + TotalOrder,
    U: ExchangeData + Hash,
    I: ExchangeData + Hash,
{
    let stats: Rc<RefCell<dyn FnMut(PairStats)>> = Rc::new(RefCell::new(stats));
    let deltas = user_pair_deltas(touches, config.max_user_items);
    let n_deltas = deltas.clone().flat_map(|d| match d {
        Delta::Item(i) => Some(i),
        Delta::Pair(..) => None,
    });
    let pair_deltas = deltas.flat_map(|d| match d {
        Delta::Pair(a, b) => Some((a, b)),
        Delta::Item(_) => None,
    });
    let candidates = cooccurrence(pair_deltas, Rc::clone(&stats));
    top_similar(candidates, n_deltas, config.top_k, stats)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    /// Brute force, straight from the definition.
    pub(crate) fn oracle(
        input: &BTreeMap<(u8, u8), isize>,
        max_user_items: usize,
        top_k: usize,
    ) -> BTreeMap<(u8, SimilarItem<u8>), isize> {
        let mut items_of: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
        for ((u, i), d) in input {
            if *d > 0 {
                items_of.entry(*u).or_default().insert(*i);
            }
        }
        items_of.retain(|_, s| s.len() <= max_user_items);
        let users_of = |x: u8| -> BTreeSet<u8> {
            items_of
                .iter()
                .filter(|(_, s)| s.contains(&x))
                .map(|(u, _)| *u)
                .collect()
        };
        let items: BTreeSet<u8> = items_of.values().flatten().copied().collect();
        let mut out = BTreeMap::new();
        for &a in &items {
            let ua = users_of(a);
            let mut list: Vec<(u8, Cosine)> = Vec::new();
            for &b in &items {
                let ub = users_of(b);
                let co = ua.intersection(&ub).count() as u64;
                if a != b && co >= 2 {
                    list.push((
                        b,
                        Cosine {
                            co,
                            n_item: ua.len() as u64,
                            n_similar: ub.len() as u64,
                        },
                    ));
                }
            }
            list.sort_by(|x, y| y.1.cmp_exact(&x.1).then(x.0.cmp(&y.0)));
            for (r, (b, cosine)) in list.into_iter().take(top_k).enumerate() {
                out.insert(
                    (
                        a,
                        SimilarItem {
                            rank: r as u32 + 1,
                            item: b,
                            cosine,
                        },
                    ),
                    1,
                );
            }
        }
        out
    }

    #[test]
    fn matches_oracle_with_retractions_on_1_and_3_workers() {
        let mut rows = 0;
        for seed in 0..8u64 {
            let mut rng = Rng::new(seed);
            // Few users and items so that pairs share users, ties happen and the cap bites.
            let updates =
                random_updates(&mut rng, 500, 6, |r| (r.below(14) as u8, r.below(12) as u8));
            let config = SimilarityConfig {
                max_user_items: 7,
                top_k: 3,
            };
            for workers in [1, 3] {
                let cfg = config.clone();
                let out = run_on_workers(workers, updates.clone(), move |c| {
                    similar_items(c, &cfg, |_| {})
                });
                for epoch in 0..6u64 {
                    let expected = oracle(&accumulate_at(&updates, epoch), 7, 3);
                    rows += expected.len();
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        expected,
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
        assert!(
            rows > 1000,
            "the random data should give similar items: {rows}"
        );
    }

    /// Sparser data than above: most items are untouched by most users, so a score can rise
    /// (a retraction lowers `n(b)`) without the item's own pairs changing.
    #[test]
    fn matches_oracle_on_sparse_data_where_scores_rise() {
        for seed in 40..43u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 900, 90, |r| {
                (r.below(60) as u8, r.below(25) as u8)
            });
            let config = SimilarityConfig {
                max_user_items: 12,
                top_k: 2,
            };
            for workers in [1, 3] {
                let cfg = config.clone();
                let out = run_on_workers(workers, updates.clone(), move |c| {
                    similar_items(c, &cfg, |_| {})
                });
                for epoch in 0..90u64 {
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        oracle(&accumulate_at(&updates, epoch), 12, 2),
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn pair_stats_count_pairs_and_candidates_exactly() {
        for seed in 20..24u64 {
            let mut rng = Rng::new(seed);
            let updates =
                random_updates(&mut rng, 400, 4, |r| (r.below(10) as u8, r.below(15) as u8));
            // Distinct pairs a < b with any shared (kept) user, by brute force.
            let acc = accumulate_at(&updates, 3);
            let mut items_of: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
            for ((u, i), d) in &acc {
                if *d > 0 {
                    items_of.entry(*u).or_default().insert(*i);
                }
            }
            items_of.retain(|_, s| s.len() <= 9);
            let mut pairs: BTreeMap<(u8, u8), u64> = BTreeMap::new();
            for s in items_of.values() {
                for a in s {
                    for b in s {
                        if a < b {
                            *pairs.entry((*a, *b)).or_insert(0) += 1;
                        }
                    }
                }
            }
            let candidates = pairs.values().filter(|co| **co >= 2).count() as i64;
            for workers in [1, 3] {
                let total = Arc::new(Mutex::new(PairStats::default()));
                let sink = Arc::clone(&total);
                run_on_workers(workers, updates.clone(), move |c| {
                    let sink = Arc::clone(&sink);
                    let config = SimilarityConfig {
                        max_user_items: 9,
                        top_k: 3,
                    };
                    similar_items(c, &config, move |d| {
                        sink.lock().unwrap_or_else(|p| p.into_inner()).add(d);
                    })
                });
                let stats = *total.lock().unwrap_or_else(|p| p.into_inner());
                assert_eq!(
                    (stats.pairs, stats.candidates),
                    (pairs.len() as i64, candidates),
                    "seed {seed} workers {workers}"
                );
                assert!(
                    candidates > 0,
                    "seed {seed}: the data should have candidates"
                );
                assert!(stats.bytes > 0, "seed {seed}: the pair state has bytes");
            }
        }
    }

    /// Both ways of applying candidate changes (binary search for a few changes to a long
    /// list, a merge otherwise) against a map.
    #[test]
    fn candidate_changes_apply_like_a_map() {
        let mut rng = Rng::new(7);
        for round in 0..400 {
            let len = rng.below(60) as usize;
            let mut map: BTreeMap<u16, u32> = BTreeMap::new();
            while map.len() < len {
                map.insert(rng.below(200) as u16, 2 + rng.below(5) as u32);
            }
            let mut list: Vec<(u16, u32)> = map.iter().map(|(b, co)| (*b, *co)).collect();
            let n_changes = if round % 2 == 0 {
                1 + rng.below(3)
            } else {
                rng.below(80)
            };
            let mut changes: BTreeMap<u16, u32> = BTreeMap::new();
            for _ in 0..n_changes {
                let co = if rng.below(3) == 0 {
                    0
                } else {
                    2 + rng.below(5) as u32
                };
                changes.insert(rng.below(200) as u16, co);
            }
            for (b, co) in &changes {
                if *co == 0 {
                    map.remove(b);
                } else {
                    map.insert(*b, *co);
                }
            }
            let changes: Vec<(u16, u16, u32)> =
                changes.into_iter().map(|(b, co)| (0, b, co)).collect();
            merge_candidates(&mut list, &changes);
            let expected: Vec<(u16, u32)> = map.into_iter().collect();
            assert_eq!(list, expected, "round {round}");
        }
    }

    #[test]
    fn exact_ties_rank_by_item_and_equal_values_give_equal_floats() {
        // 2/sqrt(4·n) and 3/sqrt(9·n): equal exactly.
        let a = Cosine {
            co: 2,
            n_item: 7,
            n_similar: 4,
        };
        let b = Cosine {
            co: 3,
            n_item: 7,
            n_similar: 9,
        };
        assert_eq!(a.cmp_exact(&b), Ordering::Equal);
        assert_eq!(a.value().to_bits(), b.value().to_bits());
        assert_eq!(a.fixed(), b.fixed());
        let c = Cosine {
            co: 3,
            n_item: 7,
            n_similar: 10,
        };
        assert_eq!(b.cmp_exact(&c), Ordering::Greater);
    }
}
