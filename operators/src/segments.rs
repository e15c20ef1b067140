//! Rule-based segments: which keys satisfy which named predicates, maintained incrementally.
//!
//! A [`RuleSet`] is compiled from `(name, rule text)` pairs in the language of
//! [`crate::predicate`] against a [`Schema`] of traits. [`segments`] then maps a collection
//! of `(key, traits)` and a single-row collection holding the watermark's UTC day to the
//! collection of `(key, rule index)` memberships. Memberships change as their inputs do:
//! when a key's traits, the watermark day or a quantile threshold change, the affected
//! memberships are retracted or inserted in the same epoch (downstream, a keyed sink turns
//! them into upserts and tombstones).
//!
//! ```text
//!  traits (key, V) ─┬─ rules reading traits only ─────── filter ─────────────────────────┐
//!                   ├─ guard ─ by bucket ─┐                                              │
//!                   │                     join ─ evaluate rules reading the watermark ───┤
//!  watermark day ───┼──── × buckets ──────┘                                              ├─▶ (key, rule)
//!                   ├─ quantile populations ─ per quantile: nearest rank ─┐              │
//!                   │                                     globals (day, thresholds)      │
//!                   └─ guard ─ by bucket ──────────── join ─ × buckets ──┘ ─ evaluate ───┘
//! ```
//!
//! Rules are split by what they read, so that a change of a global value re-evaluates only
//! the rules (and keys) that can depend on it:
//! - rules that read traits only are a stateless filter;
//! - rules that read the watermark (and no quantile) join the keys with the watermark day,
//!   which changes once per UTC day of event time;
//! - rules that read a quantile join with the watermark day and every threshold, which may
//!   change at every epoch; when one does, every key in that join is re-evaluated.
//!
//! Before each join, keys are filtered by the rules' *guards* (the top-level `and` terms
//! that read traits only: `purchases >= 1` in the default `high_value`), which are
//! necessary conditions; so the quantile join holds and re-reads purchasers, not every
//! user. A join is keyed by a hash bucket of the key (0..[`BUCKETS`]) with the globals row
//! replicated per bucket, so that its state is spread over the workers.
//!
//! State: each join arranges one `(bucket, (key, traits))` per key passing its guard; each
//! quantile keeps one entry per distinct value in its population (on one worker), and
//! re-reads them when any changes; the globals are one row per bucket. Non-guarantees: the
//! order of output updates within an epoch.

use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::local::pre_aggregate;
use crate::predicate::{
    compile_rule, Globals, Pred, Quantile, Rational, RuleError, Schema, TraitValues,
};

/// Number of hash buckets the evaluation joins are keyed by.
pub const BUCKETS: u32 = 64;

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The segment's name.
    pub name: String,
    /// The rule text as configured.
    pub text: String,
    /// The compiled predicate.
    pub pred: Pred,
}

/// Named rules compiled against one schema, with the quantiles they share.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    quantiles: Vec<Quantile>,
}

impl RuleSet {
    /// Compiles `(name, text)` rules, in the given order (a rule's index is its position).
    /// Names must be non-empty and made of ASCII letters, digits, `_` and `-`, and unique.
    /// The first invalid rule fails the whole set, naming the rule, the column, the token
    /// and the reason.
    pub fn compile<'a>(
        schema: &Schema,
        rules: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet {
            rules: Vec::new(),
            quantiles: Vec::new(),
        };
        for (name, text) in rules {
            let bad_name = |reason: &str| RuleError {
                rule: name.to_owned(),
                column: None,
                token: None,
                reason: reason.to_owned(),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad_name(
                    "a segment name must be ASCII letters, digits, `_` or `-`",
                ));
            }
            if set.rules.iter().any(|r| r.name == name) {
                return Err(bad_name("is defined twice"));
            }
            if set.rules.len() >= usize::from(u16::MAX) {
                return Err(bad_name("too many rules (at most 65535)"));
            }
            let pred = compile_rule(name, text, schema, &mut set.quantiles)?;
            set.rules.push(Rule {
                name: name.to_owned(),
                text: text.to_owned(),
                pred,
            });
        }
        Ok(set)
    }

    /// The rules, by index.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The quantiles the rules refer to, by index.
    pub fn quantiles(&self) -> &[Quantile] {
        &self.quantiles
    }

    /// The name of rule `index` (empty when out of range).
    pub fn name(&self, index: u16) -> &str {
        self.rules
            .get(usize::from(index))
            .map(|r| r.name.as_str())
            .unwrap_or("")
    }

    /// The indexes of the rules `v` satisfies under `globals`: the plain, sequential
    /// evaluation that [`segments`] maintains incrementally.
    pub fn memberships<V: TraitValues + ?Sized>(&self, v: &V, globals: &Globals) -> Vec<u16> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pred.eval(v, globals))
            .map(|(i, _)| i as u16)
            .collect()
    }

    /// The globals of a whole population: the watermark day and every quantile's
    /// nearest-rank value over `population` (a sequential oracle for tests).
    pub fn globals_of<'v, V: TraitValues + 'v>(
        &self,
        population: impl IntoIterator<Item = &'v V> + Clone,
        watermark_day: Option<i64>,
    ) -> Globals {
        let thresholds = self
            .quantiles
            .iter()
            .map(|q| {
                let mut values: Vec<Rational> = population
                    .clone()
                    .into_iter()
                    .filter_map(|v| q.member_value(v))
                    .collect();
                values.sort();
                q.nearest_rank(values.into_iter().map(|v| (v, 1)))
            })
            .collect();
        Globals {
            watermark_day,
            thresholds,
        }
    }
}

/// A part of the globals row, gathered under one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum GlobalPart {
    Watermark(i64),
    Threshold(u16, Rational),
}

/// Which globals a group of rules reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    TraitsOnly,
    Watermark,
    Quantiles,
}

fn reads(pred: &Pred) -> Reads {
    match pred.dependencies() {
        (_, true) => Reads::Quantiles,
        (true, false) => Reads::Watermark,
        (false, false) => Reads::TraitsOnly,
    }
}

/// The `(key, rule index)` memberships of `traits` under `rules` (see the module docs).
///
/// `watermark_day` should hold at most one record: the watermark's UTC day (days since
/// 1970-01-01). With none, rules that read the watermark or a quantile hold for no key.
pub fn segments<'s, T, K, V>(
    traits: VecCollection<'s, T, (K, V), isize>,
    watermark_day: VecCollection<'s, T, i64, isize>,
    rules: &RuleSet,
) -> VecCollection<'s, T, (K, u16), isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash + TraitValues,
{
    let rules = Rc::new(rules.clone());
    let group = |which: Reads| -> Vec<u16> {
        (0..rules.rules.len() as u16)
            .filter(|i| reads(&rules.rules[usize::from(*i)].pred) == which)
            .collect()
    };
    let (plain, dated, ranked) = (
        group(Reads::TraitsOnly),
        group(Reads::Watermark),
        group(Reads::Quantiles),
    );

    // Rules reading traits only: a stateless filter.
    let r = Rc::clone(&rules);
    let mut out = traits.clone().flat_map(move |(k, v)| {
        let g = Globals::default();
        plain
            .iter()
            .filter(|i| r.rules[usize::from(**i)].pred.eval(&v, &g))
            .map(|i| (k.clone(), *i))
            .collect::<Vec<_>>()
    });

    let watermark_part = watermark_day.map(|d| ((), GlobalPart::Watermark(d)));
    if !dated.is_empty() {
        let globals = gather_globals(watermark_part.clone(), 0, "SegmentWatermark");
        out = out.concat(evaluate(&traits, globals, &rules, dated));
    }
    if !ranked.is_empty() {
        let thresholds = quantile_thresholds(&traits, &rules);
        let parts = watermark_part.concat(thresholds);
        let globals = gather_globals(parts, rules.quantiles.len(), "SegmentGlobals");
        out = out.concat(evaluate(&traits, globals, &rules, ranked));
    }
    out
}

/// The current value of every quantile, as globals parts.
fn quantile_thresholds<'s, T, K, V>(
    traits: &VecCollection<'s, T, (K, V), isize>,
    rules: &Rc<RuleSet>,
) -> VecCollection<'s, T, ((), GlobalPart), isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash + TraitValues,
{
    let r = Rc::clone(rules);
    let members = traits.clone().flat_map(move |(_k, v)| {
        r.quantiles
            .iter()
            .enumerate()
            .filter_map(|(q, spec)| spec.member_value(&v).map(|x| (q as u16, x)))
            .collect::<Vec<_>>()
    });
    let r = Rc::clone(rules);
    pre_aggregate(members, "QuantilePopulation")
        .reduce_named("QuantileNearestRank", move |q: &u16, input, output| {
            let Some(spec) = r.quantiles.get(usize::from(*q)) else {
                return;
            };
            let sorted = input
                .iter()
                .filter(|(_, d)| *d > 0)
                .map(|(v, d)| (**v, *d as u64));
            if let Some(t) = spec.nearest_rank(sorted) {
                output.push((t, 1isize));
            }
        })
        .map(|(q, t)| ((), GlobalPart::Threshold(q, t)))
}

/// Gathers globals parts into one [`Globals`] row, replicated once per bucket.
fn gather_globals<'s, T>(
    parts: VecCollection<'s, T, ((), GlobalPart), isize>,
    quantiles: usize,
    name: &str,
) -> VecCollection<'s, T, (u32, Globals), isize>
where
    T: Timestamp + Lattice,
{
    parts
        .reduce_named(name, move |_unit, input, output| {
            let mut g = Globals {
                watermark_day: None,
                thresholds: vec![None; quantiles],
            };
            for (part, d) in input {
                if *d <= 0 {
                    continue;
                }
                match part {
                    GlobalPart::Watermark(day) => g.watermark_day = Some(*day),
                    GlobalPart::Threshold(q, t) => {
                        if let Some(slot) = g.thresholds.get_mut(usize::from(*q)) {
                            *slot = Some(*t);
                        }
                    }
                }
            }
            // Without a watermark no key has traits yet: emit nothing.
            if g.watermark_day.is_some() {
                output.push((g, 1isize));
            }
        })
        .flat_map(|((), g)| (0..BUCKETS).map(move |b| (b, g.clone())))
}

/// Evaluates the rules `which` for the keys passing any of their guards, joined with
/// `globals` by bucket.
fn evaluate<'s, T, K, V>(
    traits: &VecCollection<'s, T, (K, V), isize>,
    globals: VecCollection<'s, T, (u32, Globals), isize>,
    rules: &Rc<RuleSet>,
    which: Vec<u16>,
) -> VecCollection<'s, T, (K, u16), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash + TraitValues,
{
    let guards: Vec<Pred> = which
        .iter()
        .map(|i| rules.rules[usize::from(*i)].pred.trait_only_guard())
        .collect();
    let keyed = traits
        .clone()
        .filter(move |(_k, v)| {
            let g = Globals::default();
            guards.iter().any(|p| p.eval(v, &g))
        })
        .map(|(k, v)| ((k.hashed() % u64::from(BUCKETS)) as u32, (k, v)));
    let r = Rc::clone(rules);
    keyed.join(globals).flat_map(move |(_b, ((k, v), g))| {
        which
            .iter()
            .filter(|i| r.rules[usize::from(**i)].pred.eval(&v, &g))
            .map(|i| (k.clone(), *i))
            .collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicate::TraitKind;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::BTreeMap;

    const DAY: i64 = 86_400_000;

    /// (views, purchases, revenue cents, last_seen ms)
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    struct T4([i64; 4]);
    impl TraitValues for T4 {
        fn trait_value(&self, i: usize) -> i64 {
            self.0[i]
        }
    }

    fn schema() -> Schema {
        Schema::new(&[
            ("views", TraitKind::Count),
            ("purchases", TraitKind::Count),
            ("revenue", TraitKind::Money),
            ("last_seen", TraitKind::Time),
        ])
    }

    const RULES: [(&str, &str); 6] = [
        ("viewer", "views >= 3"),
        ("recent", "days_since_last_seen <= 2"),
        (
            "buyer_recent",
            "purchases >= 1 and days_since_last_seen < 4",
        ),
        (
            "high_value",
            "purchases >= 1 and revenue >= quantile(revenue, 0.75 among purchases >= 1)",
        ),
        (
            "median_views",
            "views > quantile(views, 0.5) or days_since_last_seen == 0",
        ),
        ("nobody", "false"),
    ];

    fn rule_set() -> RuleSet {
        match RuleSet::compile(&schema(), RULES) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Input records: per-key traits (a key has at most one live row at a time in a real
    /// traits table, but the operator must not care) and watermark days, mixed as
    /// `Err(day)` so one random stream drives both.
    type In = Result<(u8, T4), i64>;

    fn gen(r: &mut Rng) -> In {
        if r.below(8) == 0 {
            Err(100 + r.below(6) as i64)
        } else {
            let t = T4([
                r.below(6) as i64,
                r.below(3) as i64,
                r.below(5) as i64 * 250,
                (100 + r.below(6) as i64) * DAY + r.below(DAY as u64) as i64,
            ]);
            Ok((r.below(20) as u8, t))
        }
    }

    fn oracle(input: &BTreeMap<In, isize>, rules: &RuleSet) -> BTreeMap<(u8, u16), isize> {
        // Multiset semantics: each live copy of a (key, traits) row is evaluated.
        let mut rows: Vec<(u8, T4)> = Vec::new();
        let mut days = Vec::new();
        for (rec, d) in input {
            for _ in 0..*d {
                match rec {
                    Ok(row) => rows.push(row.clone()),
                    Err(day) => days.push(*day),
                }
            }
        }
        let watermark = days.iter().copied().max();
        let g = rules.globals_of(rows.iter().map(|(_, t)| t), watermark);
        let mut out = BTreeMap::new();
        for (k, t) in &rows {
            for i in rules.memberships(t, &g) {
                // Rules reading the watermark or a quantile need a watermark row.
                let (w, q) = rules.rules()[usize::from(i)].pred.dependencies();
                if (w || q) && watermark.is_none() {
                    continue;
                }
                *out.entry((*k, i)).or_default() += 1;
            }
        }
        out
    }

    #[test]
    fn memberships_match_oracle_with_retractions_on_1_and_3_workers() {
        let rules = rule_set();
        for seed in 0..5u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 300, 6, gen);
            for workers in [1, 3] {
                let rs = rules.clone();
                let out = run_on_workers(workers, updates.clone(), move |c| {
                    let traits = c.clone().flat_map(|r| r.ok());
                    let days = crate::traits::max_of(c.flat_map(|r| r.err()));
                    segments(traits, days, &rs)
                });
                for epoch in 0..6u64 {
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        oracle(&accumulate_at(&updates, epoch), &rules),
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_rule_sets_name_the_rule() {
        let s = schema();
        let e = RuleSet::compile(&s, [("ok", "views > 1"), ("bad", "views >")]);
        assert!(matches!(e, Err(ref e) if e.rule == "bad"), "{e:?}");
        let e = RuleSet::compile(&s, [("a", "views > 1"), ("a", "views > 2")]);
        assert!(
            matches!(e, Err(ref e) if e.reason.contains("twice")),
            "{e:?}"
        );
        let e = RuleSet::compile(&s, [("a b", "views > 1")]);
        assert!(
            matches!(e, Err(ref e) if e.reason.contains("segment name")),
            "{e:?}"
        );
    }
}
