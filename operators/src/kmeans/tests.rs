//! Oracle tests of [`kmeans_segments`] on 1 and 3 workers: consistent at every epoch,
//! identical across worker counts, and equal to the batch computation after the input ends;
//! and of [`kmeans_segments_with_state`]: a run restored from its state at an epoch goes on
//! exactly as the run that never stopped.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};

type Traits = [u64; 6];

/// The three outputs in one collection, so the test harness can collect them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Out {
    Row(u32, Assignment),
    Centroid(ClusterCentroid),
    Model(Model),
    State(FitState),
}

fn config() -> SegmentConfig {
    SegmentConfig {
        kmeans: KMeansParams {
            k: 3,
            n_init: 3,
            ..KMeansParams::default()
        },
        scales: vec![1.0, 1.0, 1.0, 100.0, 1.0, 1.0],
        min_users: 6,
        refit_change_ratio: 0.5,
        drift_factor: 1.2,
        drift_min_change_ratio: 0.1,
    }
}

fn build(c: crate::VecCollection<'_, u64, (u32, Traits)>) -> crate::VecCollection<'_, u64, Out> {
    let s = kmeans_segments(c, config());
    s.assignments
        .map(|(k, a)| Out::Row(k, a))
        .concat(s.centroids.map(Out::Centroid))
        .concat(s.models.map(Out::Model))
}

fn random_traits(r: &mut Rng) -> Traits {
    // Two rough populations (browsers and buyers), so clusters exist.
    if r.below(3) == 0 {
        [
            5 + r.below(40),
            r.below(10),
            1 + r.below(4),
            r.below(200_000),
            3 + r.below(20),
            1 + r.below(6),
        ]
    } else {
        [r.below(8), r.below(2), 0, 0, 1 + r.below(5), r.below(3)]
    }
}

/// A well-formed traits stream: one record per user; a change retracts the old record.
fn traits_stream(rng: &mut Rng, steps: usize, epochs: u64) -> Vec<((u32, Traits), u64, isize)> {
    let mut current: BTreeMap<u32, Traits> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..steps {
        let epoch = (i as u64 * epochs) / steps as u64;
        let user = rng.below(40) as u32;
        if let Some(old) = current.remove(&user) {
            out.push(((user, old), epoch, -1));
            if rng.below(6) == 0 {
                continue; // the user leaves (e.g. erased)
            }
        }
        let t = random_traits(rng);
        current.insert(user, t);
        out.push(((user, t), epoch, 1));
    }
    out
}

/// The users' traits at an epoch: the greatest record with positive multiplicity.
fn effective(acc: &BTreeMap<(u32, Traits), isize>) -> BTreeMap<u32, Traits> {
    let mut out = BTreeMap::new();
    for ((u, t), r) in acc {
        if *r > 0 {
            out.insert(*u, *t); // keys ascend, so the last (greatest) record wins
        }
    }
    out
}

/// Checks the outputs at one epoch against the live traits; returns the live model.
fn check_consistent(
    acc: &BTreeMap<Out, isize>,
    traits: &BTreeMap<u32, Traits>,
    min_users: usize,
    what: &str,
) -> Option<Model> {
    assert!(
        acc.values().all(|r| *r == 1),
        "{what}: multiplicities {acc:?}"
    );
    let models: Vec<&Model> = acc
        .keys()
        .filter_map(|o| match o {
            Out::Model(m) => Some(m),
            _ => None,
        })
        .collect();
    assert!(models.len() <= 1, "{what}: {} live models", models.len());
    let rows: BTreeMap<u32, Assignment> = acc
        .keys()
        .filter_map(|o| match o {
            Out::Row(k, a) => Some((*k, *a)),
            _ => None,
        })
        .collect();
    let row_count = acc.keys().filter(|o| matches!(o, Out::Row(..))).count();
    assert_eq!(row_count, rows.len(), "{what}: two rows for a user");
    let centroids: Vec<&ClusterCentroid> = acc
        .keys()
        .filter_map(|o| match o {
            Out::Centroid(c) => Some(c),
            _ => None,
        })
        .collect();
    let Some(model) = models.first() else {
        assert!(
            rows.is_empty() && centroids.is_empty(),
            "{what}: rows without a model"
        );
        assert!(
            traits.len() < min_users,
            "{what}: no model with {} users",
            traits.len()
        );
        return None;
    };
    // Exactly one row per user with traits, the nearest centroid of the live model.
    let expected: BTreeMap<u32, Assignment> =
        traits.iter().map(|(u, t)| (*u, model.assign(t))).collect();
    assert_eq!(rows, expected, "{what}: rows");
    // One centroid row per cluster, sizes = assignment counts.
    assert_eq!(centroids.len(), model.k(), "{what}: centroid rows");
    for c in centroids {
        let coords: Vec<i64> = model
            .centroid(c.cluster as usize)
            .iter()
            .map(|x| to_micros(*x))
            .collect();
        assert_eq!(c.coordinates_micros, coords, "{what}: coordinates");
        let size = rows.values().filter(|a| a.cluster == c.cluster).count() as u64;
        assert_eq!(c.size, size, "{what}: size of cluster {}", c.cluster);
    }
    Some((*model).clone())
}

fn restamp(
    updates: &[((u32, Traits), u64, isize)],
    epochs: u64,
) -> Vec<((u32, Traits), u64, isize)> {
    let n = updates.len() as u64;
    updates
        .iter()
        .enumerate()
        .map(|(i, (d, _, r))| (*d, (i as u64 * epochs) / n, *r))
        .collect()
}

fn check_stream(updates: Vec<((u32, Traits), u64, isize)>, epochs: u64, what: &str) {
    let mut finals = Vec::new();
    for stamped in [updates.clone(), restamp(&updates, 2)] {
        let max_epoch = stamped.iter().map(|u| u.1).max().unwrap_or(0);
        let mut per_workers = Vec::new();
        for workers in [1, 3] {
            let out = run_on_workers(workers, stamped.clone(), build);
            let mut models = 0;
            for epoch in 0..=max_epoch {
                let traits = effective(&accumulate_at(&stamped, epoch));
                let acc = accumulate_at(&out, epoch);
                let what = format!("{what} w{workers} e{epoch}");
                let m = check_consistent(&acc, &traits, config().min_users, &what);
                models = models.max(m.map(|m| m.version).unwrap_or(0));
            }
            assert!(models >= 1, "{what}: never fitted");
            per_workers.push(out);
        }
        // Deterministic given the epochs: the same outputs on 1 and 3 workers.
        for epoch in 0..=max_epoch + 1 {
            assert_eq!(
                accumulate_at(&per_workers[0], epoch),
                accumulate_at(&per_workers[1], epoch),
                "{what}: 1 vs 3 workers differ at epoch {epoch}"
            );
        }
        // After the end: the batch computation over the final traits.
        let traits = effective(&accumulate_at(&stamped, u64::MAX));
        let acc = accumulate_at(&per_workers[1], u64::MAX);
        let model =
            check_consistent(&acc, &traits, config().min_users, &format!("{what} final")).unwrap();
        let (batch, rows) = segments_batch(&traits, &config());
        let batch = Model {
            version: model.version,
            ..batch.unwrap()
        };
        assert_eq!(model, batch, "{what}: final model is not the batch fit");
        let got: BTreeMap<u32, Assignment> = acc
            .keys()
            .filter_map(|o| match o {
                Out::Row(k, a) => Some((*k, *a)),
                _ => None,
            })
            .collect();
        assert_eq!(got, rows, "{what}: final rows");
        let without_model: BTreeMap<Out, isize> = acc
            .into_iter()
            .filter(|(o, _)| !matches!(o, Out::Model(_)))
            .collect();
        finals.push(without_model);
    }
    // Different epoch boundaries (epochs vs 2), same final tables.
    assert_eq!(
        finals[0], finals[1],
        "{what}: final output depends on epochs ({epochs} vs 2)"
    );
}

#[test]
fn well_formed_traits_match_the_oracle_on_1_and_3_workers() {
    for seed in 0..4u64 {
        let mut rng = Rng::new(seed);
        let updates = traits_stream(&mut rng, 300, 10);
        check_stream(updates, 10, &format!("seed {seed}"));
    }
}

#[test]
fn duplicates_and_several_records_per_user_match_the_oracle() {
    for seed in 10..13u64 {
        let mut rng = Rng::new(seed);
        let updates = random_updates(&mut rng, 300, 8, |r| (r.below(25) as u32, random_traits(r)));
        check_stream(updates, 8, &format!("seed {seed}"));
    }
}

#[test]
fn the_model_is_refit_on_schedule_and_every_user_follows_it() {
    // 60 users arrive over 6 epochs; then 60 changes over 6 more.
    let mut rng = Rng::new(99);
    let mut updates = Vec::new();
    let mut current = BTreeMap::new();
    for i in 0..120u64 {
        let user = (i % 60) as u32;
        let epoch = i / 10;
        if let Some(old) = current.remove(&user) {
            updates.push(((user, old), epoch, -1));
        }
        let t = random_traits(&mut rng);
        current.insert(user, t);
        updates.push(((user, t), epoch, 1isize));
    }
    let out = run_on_workers(1, updates.clone(), build);
    let versions: Vec<(u64, u64)> = out
        .iter()
        .filter_map(|(o, t, r)| match o {
            Out::Model(m) if *r > 0 => Some((*t, m.version)),
            _ => None,
        })
        .collect();
    // First fit at 6 users (epoch 0: 10 users); later refits as changes accumulate.
    assert_eq!(versions.first(), Some(&(0, 1)), "{versions:?}");
    assert!(versions.len() >= 3, "too few refits: {versions:?}");
    // A model change re-assigns users: rows change at every refit epoch.
    for (t, _) in &versions {
        assert!(
            out.iter()
                .any(|(o, ot, r)| matches!(o, Out::Row(..)) && ot == t && *r < 0)
                || *t == 0,
            "no re-assignment at refit epoch {t}"
        );
    }
}

#[test]
fn fewer_users_than_min_users_get_a_model_only_at_the_end() {
    let updates: Vec<((u32, Traits), u64, isize)> = (0..4u32)
        .map(|u| ((u, [u as u64, 0, 0, 0, 1, 1]), u as u64, 1))
        .collect();
    let out = run_on_workers(3, updates.clone(), build);
    for epoch in 0..4 {
        assert!(
            accumulate_at(&out, epoch).is_empty(),
            "output before the end"
        );
    }
    let acc = accumulate_at(&out, u64::MAX);
    let traits = effective(&accumulate_at(&updates, u64::MAX));
    let m = check_consistent(&acc, &traits, config().min_users, "end").unwrap();
    assert_eq!(m.k(), 3);
    // The end-of-input model goes out at the last time seen (the input's final frontier).
    assert!(out.iter().all(|(_, t, _)| *t == 4), "{out:?}");
}

#[test]
fn all_users_leaving_retracts_the_model() {
    let mut updates = Vec::new();
    for u in 0..10u32 {
        updates.push(((u, [u as u64, 1, 0, 0, 1, 1]), 0u64, 1isize));
        updates.push(((u, [u as u64, 1, 0, 0, 1, 1]), 2, -1));
    }
    let out = run_on_workers(3, updates, build);
    assert!(!accumulate_at(&out, 0).is_empty());
    assert!(
        accumulate_at(&out, u64::MAX).is_empty(),
        "{:?}",
        accumulate_at(&out, u64::MAX)
    );
}

// ---- Restore: a run restored from its state at epoch C goes on as the uninterrupted run.

/// The restore tests' input: traits changes, and the state to restore.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum In {
    Traits(u32, Traits),
    State(FitState),
}

/// A smaller-than-usual population threshold reached only after the first epochs, so a
/// restore can fall before the first fit as well as after several refits.
fn restore_config() -> SegmentConfig {
    SegmentConfig {
        min_users: 15,
        ..config()
    }
}

/// The four outputs of [`kmeans_segments_with_state`]; `state` includes the restored
/// records, as a caller checkpoints it.
fn build_stateful<'s>(
    input: crate::VecCollection<'s, u64, In>,
    restore: bool,
) -> crate::VecCollection<'s, u64, Out> {
    let traits = input.clone().flat_map(|i| match i {
        In::Traits(k, t) => Some((k, t)),
        In::State(_) => None,
    });
    let restored = restore.then(|| {
        input.flat_map(|i| match i {
            In::State(s) => Some(s),
            In::Traits(..) => None,
        })
    });
    let s = kmeans_segments_with_state(traits, restored.clone(), restore_config());
    let state = match restored {
        Some(r) => s.state.concat(r),
        None => s.state,
    };
    s.segments
        .assignments
        .map(|(k, a)| Out::Row(k, a))
        .concat(s.segments.centroids.map(Out::Centroid))
        .concat(s.segments.models.map(Out::Model))
        .concat(state.map(Out::State))
}

fn build_fresh(input: crate::VecCollection<'_, u64, In>) -> crate::VecCollection<'_, u64, Out> {
    build_stateful(input, false)
}

fn build_restoring(input: crate::VecCollection<'_, u64, In>) -> crate::VecCollection<'_, u64, Out> {
    build_stateful(input, true)
}

/// [`kmeans_segments`] (the stateless wrapper) with the restore tests' configuration.
fn build_plain(
    c: crate::VecCollection<'_, u64, (u32, Traits)>,
) -> crate::VecCollection<'_, u64, Out> {
    let s = kmeans_segments(c, restore_config());
    s.assignments
        .map(|(k, a)| Out::Row(k, a))
        .concat(s.centroids.map(Out::Centroid))
        .concat(s.models.map(Out::Model))
}

fn as_input(updates: &[((u32, Traits), u64, isize)]) -> Vec<(In, u64, isize)> {
    updates
        .iter()
        .map(|((k, t), e, r)| (In::Traits(*k, *t), *e, *r))
        .collect()
}

/// The one live state record at `epoch`, checked to be exactly one with multiplicity 1.
fn state_at(out: &[(Out, u64, isize)], epoch: u64, what: &str) -> FitState {
    let states: Vec<(FitState, isize)> = accumulate_at(out, epoch)
        .into_iter()
        .filter_map(|(o, r)| match o {
            Out::State(s) => Some((s, r)),
            _ => None,
        })
        .collect();
    match states.as_slice() {
        [(s, 1)] => s.clone(),
        _ => panic!("{what}: state at epoch {epoch} is not one record: {states:?}"),
    }
}

/// The assignments, centroids and models; and the state.
fn split_states(acc: BTreeMap<Out, isize>) -> (BTreeMap<Out, isize>, BTreeMap<Out, isize>) {
    acc.into_iter()
        .partition(|(o, _)| !matches!(o, Out::State(_)))
}

/// Runs A (uninterrupted) once, then for every restored epoch C: B1 over the epochs up to C,
/// B2 restored from B1's state at C; B2 must accumulate to A at every epoch from C on.
/// Returns, per C, the version of the model restored (0: none yet).
fn check_restores(updates: Vec<((u32, Traits), u64, isize)>, what: &str) -> Vec<u64> {
    let last = updates.iter().map(|u| u.1).max().unwrap_or(0);
    let end = last + 1; // the end-of-input refit goes out at the input's final frontier
    let a = run_on_workers(1, as_input(&updates), build_fresh);
    let a3 = run_on_workers(3, as_input(&updates), build_fresh);
    let plain = run_on_workers(1, updates.clone(), build_plain);
    for epoch in (0..=end).chain([u64::MAX]) {
        let acc = accumulate_at(&a, epoch);
        assert_eq!(
            accumulate_at(&a3, epoch),
            acc,
            "{what}: A on 1 vs 3 workers, e{epoch}"
        );
        assert_eq!(
            accumulate_at(&plain, epoch),
            split_states(acc).0,
            "{what}: kmeans_segments differs from kmeans_segments_with_state at e{epoch}"
        );
    }
    // A itself: consistent at every epoch, one state record whose model is the live model.
    for epoch in 0..=end {
        let traits = effective(&accumulate_at(&updates, epoch));
        let acc: BTreeMap<Out, isize> = accumulate_at(&a, epoch)
            .into_iter()
            .filter(|(o, _)| !matches!(o, Out::State(_)))
            .collect();
        let w = format!("{what} A e{epoch}");
        let model = check_consistent(&acc, &traits, restore_config().min_users, &w);
        assert_eq!(state_at(&a, epoch, &w).model(), model.as_ref(), "{w}");
    }
    assert!(
        state_at(&a, end, what).version() >= 4,
        "{what}: too few refits to test restores: {:?}",
        state_at(&a, end, what)
    );
    let worker_pairs = [(1, 1), (3, 3), (1, 3), (3, 1)];
    let mut restored_versions = Vec::new();
    for c in 0..last {
        let (w1, w2) = worker_pairs[c as usize % worker_pairs.len()];
        let w = format!("{what} C={c} B1 w{w1} B2 w{w2}");
        let before: Vec<_> = updates.iter().filter(|u| u.1 <= c).cloned().collect();
        let b1 = run_on_workers(w1, as_input(&before), build_fresh);
        assert_eq!(
            accumulate_at(&b1, c),
            accumulate_at(&a, c),
            "{w}: B1 differs from A at C"
        );
        let state = state_at(&b1, c, &w);
        restored_versions.push(state.version());
        // B2's input: the state second (fed by worker 1 of 3, so it must travel to worker 0),
        // the traits as of C, then A's changes after C.
        let mut input: Vec<(In, u64, isize)> = accumulate_at(&updates, c)
            .into_iter()
            .map(|((k, t), r)| (In::Traits(k, t), c, r))
            .collect();
        input.insert(input.len().min(1), (In::State(state), c, 1));
        input.extend(as_input(&updates).into_iter().filter(|u| u.1 > c));
        let b2 = run_on_workers(w2, input, build_restoring);
        // The segments at every epoch first (the guarantee), then the state (what a next
        // restore needs).
        let epochs = || (c..=end).chain([u64::MAX]);
        for epoch in epochs() {
            assert_eq!(
                split_states(accumulate_at(&b2, epoch)).0,
                split_states(accumulate_at(&a, epoch)).0,
                "{w}: the restored run's segments differ from A's at epoch {epoch}"
            );
        }
        for epoch in epochs() {
            assert_eq!(
                split_states(accumulate_at(&b2, epoch)).1,
                split_states(accumulate_at(&a, epoch)).1,
                "{w}: the restored run's state differs from A's at epoch {epoch}"
            );
        }
    }
    restored_versions
}

#[test]
fn a_restored_run_goes_on_as_the_uninterrupted_one() {
    // Every epoch is a restore point: before the first fit, at fits, after several refits.
    let mut rng = Rng::new(20);
    let updates = traits_stream(&mut rng, 300, 30);
    let versions = check_restores(updates, "well-formed");
    assert!(versions.contains(&0), "no restore before the first fit");
    assert!(
        versions.iter().any(|v| *v >= 3),
        "no restore after several refits: {versions:?}"
    );
}

#[test]
fn a_restored_run_with_several_records_per_user_goes_on_as_the_uninterrupted_one() {
    let mut rng = Rng::new(30);
    let updates = random_updates(&mut rng, 300, 30, |r| {
        (r.below(25) as u32, random_traits(r))
    });
    let versions = check_restores(updates, "duplicates");
    assert!(
        versions.contains(&0) && versions.iter().any(|v| *v >= 3),
        "{versions:?}"
    );
}
