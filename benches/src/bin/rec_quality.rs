//! Offline quality of `recommendations` on generator data: hit rate at 10 for each user's
//! next purchase, against a most-popular baseline.
//!
//! ```text
//! cargo run --release -p cap-benches --bin rec_quality -- --events 2000000 [--seed 42] [--workers 2]
//! ```
//!
//! Protocol (leave-last-out): generate `--events` events with the generator API; for each
//! user with a purchase, the *target* is the product of their last purchase (latest event
//! time, ties by the later generated event) and their training events are those strictly
//! before it in event time; users without a purchase keep all their events. The job's own
//! `similar_items` + `recommendations` dataflow (`customer_analytics::tables::recommendations`,
//! the real operators, not a re-implementation) runs in-process over the training events in
//! one epoch. A user is evaluated when they have a target and at least one training event.
//!
//! - model: hit when the target is among the user's (up to) 10 recommendations;
//! - baseline: the 10 most purchased products in training (ties by product id), skipping
//!   products the user purchased in training;
//! - printed: both hit rates, their ratio (the goal is >= 2), and diagnostics (how often the
//!   target was already touched in training, hits of scored rows vs fill rows).
//!
//! A purchase always follows a view of the same product in the same session, so with the
//! split above the target is always among the user's training touches. A second, stricter
//! split (`session`, also printed) cuts each evaluated user's training at the start of the
//! session of their last purchase (the first event of that session; the purchase time when
//! the session is null), so the model must predict the product before the session that
//! bought it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use cap_connectors::clickstream::{Event, EventType, SessionId};
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::job::NoCheckpoints;
use clap::Parser;
use customer_analytics::tables::recommendations::{
    similarity_tables, top_category, RecommendationRow, RecommendationSettings,
};
use differential_dataflow::input::Input;

#[derive(Parser, Debug)]
#[command(
    about = "hit rate at 10 of recommendations vs a most-popular baseline, on generator data"
)]
struct Args {
    /// Events to generate.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Generator users (default: the generator's 200 000).
    #[arg(long)]
    users: Option<u64>,
    /// Generator products (default: the generator's 50 000).
    #[arg(long)]
    products: Option<u64>,
    /// Worker threads of the dataflow.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Which splits to evaluate: `purchase` (train = before the last purchase), `session`
    /// (train = before that purchase's session), or both.
    #[arg(long, default_value = "purchase,session", value_delimiter = ',')]
    split: Vec<String>,
}

/// Runs the job's recommendation dataflow over `train` in one epoch.
fn recommend(
    train: Vec<Event>,
    workers: usize,
) -> anyhow::Result<BTreeMap<u64, Vec<RecommendationRow>>> {
    let rows: Arc<Mutex<Vec<(RecommendationRow, isize)>>> = Arc::default();
    let sink = Arc::clone(&rows);
    let train = Arc::new(train);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let (index, peers) = (worker.index(), worker.peers());
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let settings = RecommendationSettings::default();
            let ck = &mut NoCheckpoints;
            let top = top_category(ck, &events).expect("builds");
            let (_similar, recs) =
                similarity_tables(ck, &events, top, &settings, |_| {}).expect("builds");
            let (probe, _) = recs
                .inspect(move |(row, _t, d)| {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((row.clone(), *d))
                })
                .probe();
            (input, probe)
        });
        for (i, e) in train.iter().enumerate() {
            if i % peers == index {
                input.insert(e.clone());
            }
        }
        input.advance_to(1);
        input.flush();
        worker.step_while(|| probe.less_than(input.time()));
    })
    .map_err(anyhow::Error::msg)?;
    for r in guards.join() {
        r.map_err(anyhow::Error::msg)?;
    }
    let mut acc: BTreeMap<RecommendationRow, isize> = BTreeMap::new();
    for (row, d) in rows.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        *acc.entry(row).or_default() += d;
    }
    let mut per_user: BTreeMap<u64, Vec<RecommendationRow>> = BTreeMap::new();
    for (row, d) in acc {
        if d > 0 {
            per_user.entry(row.user_id).or_default().push(row);
        }
    }
    for rows in per_user.values_mut() {
        rows.sort_by_key(|r| r.rank);
    }
    Ok(per_user)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = GeneratorConfig {
        events: Some(args.events),
        seed: args.seed,
        ..GeneratorConfig::default()
    };
    if let Some(u) = args.users {
        cfg.users = u;
    }
    if let Some(p) = args.products {
        cfg.products = p;
    }
    let source = GeneratorSource::try_new("rec_quality", cfg.clone()).context("generator")?;
    let started = Instant::now();
    let mut events: Vec<Event> = Vec::new();
    for k in 0..cfg.partitions {
        events.extend(source.partition(k).context("partition")?);
    }
    eprintln!(
        "generated {} events in {:.1}s",
        events.len(),
        started.elapsed().as_secs_f64()
    );

    // Each user's last purchase: (time, index) is a total order.
    let mut last: HashMap<u64, (i64, usize)> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if e.event_type == EventType::Purchase {
            let entry = last.entry(e.user_id).or_insert((e.event_time, i));
            if (e.event_time, i) > *entry {
                *entry = (e.event_time, i);
            }
        }
    }
    for split in &args.split {
        let cut: HashMap<u64, i64> = match split.as_str() {
            "purchase" => last.iter().map(|(u, (t, _))| (*u, *t)).collect(),
            "session" => session_starts(&events, &last),
            other => anyhow::bail!("--split: unknown split `{other}` (purchase or session)"),
        };
        let target: HashMap<u64, u64> = last
            .iter()
            .map(|(u, (_, i))| (*u, events[*i].product_id))
            .collect();
        evaluate(split, &events, &cut, &target, args.workers)?;
    }
    Ok(())
}

/// Per evaluated user, the time their training ends: the first event of the session of
/// their last purchase (the purchase time when the session is null).
fn session_starts(events: &[Event], last: &HashMap<u64, (i64, usize)>) -> HashMap<u64, i64> {
    let mut first: HashMap<(u64, &SessionId), i64> = HashMap::new();
    for e in events {
        if let Some(s) = &e.user_session {
            let t = first.entry((e.user_id, s)).or_insert(e.event_time);
            *t = (*t).min(e.event_time);
        }
    }
    last.iter()
        .map(|(u, (t, i))| {
            let start = events[*i]
                .user_session
                .as_ref()
                .and_then(|s| first.get(&(*u, s)))
                .copied()
                .unwrap_or(*t);
            (*u, start.min(*t))
        })
        .collect()
}

/// Trains on the events before each user's cut and prints hit rates at 10.
fn evaluate(
    split: &str,
    events: &[Event],
    cut: &HashMap<u64, i64>,
    target: &HashMap<u64, u64>,
    workers: usize,
) -> anyhow::Result<()> {
    let train: Vec<Event> = events
        .iter()
        .filter(|e| cut.get(&e.user_id).is_none_or(|t| e.event_time < *t))
        .cloned()
        .collect();

    // Per user in training: purchased and touched products.
    let mut bought: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    let mut touched: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    let mut sales: HashMap<u64, u64> = HashMap::new();
    for e in &train {
        touched.entry(e.user_id).or_default().insert(e.product_id);
        if e.event_type == EventType::Purchase {
            bought.entry(e.user_id).or_default().insert(e.product_id);
            *sales.entry(e.product_id).or_default() += 1;
        }
    }
    let mut popular: Vec<(u64, u64)> = sales.into_iter().collect();
    popular.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));

    let started = Instant::now();
    let train_len = train.len();
    let recs = recommend(train, workers)?;
    let model_secs = started.elapsed().as_secs_f64();

    let none = BTreeSet::new();
    let (mut evaluated, mut model_hits, mut base_hits) = (0u64, 0u64, 0u64);
    let (mut target_touched, mut hits_scored, mut hits_fill, mut with_scored) = (0u64, 0, 0, 0);
    let mut target_bought_before = 0u64;
    for (user, product) in target {
        let Some(seen) = touched.get(user) else {
            continue; // no training events
        };
        evaluated += 1;
        let bought = bought.get(user).unwrap_or(&none);
        target_touched += u64::from(seen.contains(product));
        target_bought_before += u64::from(bought.contains(product));
        let rows = recs.get(user).map(Vec::as_slice).unwrap_or(&[]);
        with_scored += u64::from(rows.iter().any(|r| r.score > 0));
        if let Some(r) = rows.iter().find(|r| r.product_id == *product) {
            model_hits += 1;
            if r.score > 0 {
                hits_scored += 1;
            } else {
                hits_fill += 1;
            }
        }
        let baseline = popular
            .iter()
            .filter(|(p, _)| !bought.contains(p))
            .take(10)
            .any(|(p, _)| p == product);
        base_hits += u64::from(baseline);
    }
    let rate = |n: u64| n as f64 / evaluated.max(1) as f64;
    println!(
        "split {split:<8} events {}  train {}  users evaluated {}  (model built in {:.1}s on {} workers)",
        events.len(),
        train_len,
        evaluated,
        model_secs,
        workers
    );
    println!(
        "split {split:<8} hit rate@10  model {:.4}  most-popular {:.4}  ratio {:.2}x",
        rate(model_hits),
        rate(base_hits),
        rate(model_hits) / rate(base_hits).max(f64::MIN_POSITIVE)
    );
    println!(
        "split {split:<8} diagnostics  target touched in train {:.4}  target bought before {:.4}  users with scored rows {:.4}  hits from scored rows {}  from fill rows {}",
        rate(target_touched),
        rate(target_bought_before),
        rate(with_scored),
        hits_scored,
        hits_fill
    );
    Ok(())
}
