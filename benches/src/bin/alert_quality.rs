//! Detection quality of the `alerts` table against the generator's ground truth.
//!
//! ```text
//! cargo run --release -p cap-benches --bin alert_quality -- --events N [--seed S[,S...]]
//!     [--workers W] [--out-of-order F] [--duplicates F] [--set KEY=VALUE]... [--verbose]
//! ```
//!
//! For each seed: generates the data set of `GeneratorConfig { events: N, seed: S, .. }`
//! (the generator's defaults otherwise: 5 bots, 2 DDoS bursts), runs the job's own `alerts`
//! dataflow in-process on the real operators (`customer_analytics::tables::alerts::alerts`,
//! the generator's partitions fed straight to timely workers; the engine's source, epochs
//! and sinks are not involved), and scores its final rows against
//! [`GroundTruth::for_config`].
//!
//! Scoring, per `(kind, subject, window)`:
//! - truth: each bot is two items, `(bot, user:<id>, window)` and `(bot, ip:<ip>, window)`;
//!   each DDoS burst is `(ddos, global, window)`;
//! - an alert is a true positive when its window overlaps (shares a millisecond with) the
//!   window of a truth item of the same kind and subject; precision = true-positive alerts
//!   / alerts;
//! - a truth item is found when some alert of its kind and subject overlaps it; recall =
//!   found / truth items;
//! - `traffic_spike` has no ground truth of its own (the generator injects no flash crowds):
//!   its precision counts a spike as explained when it overlaps any injected incident (bot
//!   or burst); its recall is not defined.
//!
//! The generator does not promise that every planned incident makes it into the data: with
//! few events, a partition can run out before an incident's window (see its docs). A
//! separate pass over the generated stream counts each incident's events; an incident with
//! none is reported and left out of the truth (it cannot be detected), one with fewer than
//! planned is reported and kept.

#[path = "../alerts_runner.rs"]
mod alerts_runner;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use cap_connectors::generator::{GeneratorConfig, GeneratorSource, GroundTruth};
use clap::Parser;
use customer_analytics::tables::alerts::{AlertKind, AlertRow, AlertSettings};

#[derive(Parser, Debug)]
#[command(about = "precision and recall of the alerts table against the generator's ground truth")]
struct Args {
    /// Events per data set.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Seeds, comma separated: one data set each.
    #[arg(long, default_value = "42", value_delimiter = ',')]
    seed: Vec<u64>,
    /// Timely worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Fraction of events delivered late (generator `out_of_order_fraction`).
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Fraction of events delivered twice (generator `duplicate_fraction`).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Alert setting `KEY=VALUE` (a key of `[job.alerts]`, e.g. `rate_multiplier=1.4`).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Print every alert and every missed truth item.
    #[arg(long)]
    verbose: bool,
}

/// One truth item or alert: kind, subject, window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    kind: &'static str,
    subject: String,
    start: i64,
    end: i64,
}

impl Item {
    fn overlaps(&self, o: &Item) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// True positives, alerts, found truth items, truth items.
#[derive(Clone, Copy, Debug, Default)]
struct Score {
    tp: u64,
    alerts: u64,
    found: u64,
    truth: u64,
}

impl Score {
    fn add(&mut self, o: Score) {
        self.tp += o.tp;
        self.alerts += o.alerts;
        self.found += o.found;
        self.truth += o.truth;
    }
    fn line(&self, kind: &str, recall_defined: bool) -> String {
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                "   n/a".to_owned()
            } else {
                format!("{:.4}", a as f64 / b as f64)
            }
        };
        let recall = if recall_defined {
            ratio(self.found, self.truth)
        } else {
            "   n/a".to_owned()
        };
        format!(
            "  {kind:<14} precision {} ({}/{})  recall {recall} ({}/{})",
            ratio(self.tp, self.alerts),
            self.tp,
            self.alerts,
            self.found,
            self.truth
        )
    }
}

fn truth_items(t: &GroundTruth) -> Vec<Item> {
    let mut items = Vec::new();
    for b in &t.bots {
        for subject in [format!("user:{}", b.user_id), format!("ip:{}", b.ip)] {
            items.push(Item {
                kind: "bot",
                subject,
                start: b.window_start_ms,
                end: b.window_end_ms,
            });
        }
    }
    for d in &t.ddos {
        items.push(Item {
            kind: "ddos",
            subject: "global".into(),
            start: d.window_start_ms,
            end: d.window_end_ms,
        });
    }
    items
}

/// Per bot and per burst, the incident's events actually in the generated stream.
fn present_events(cfg: &GeneratorConfig, truth: &GroundTruth) -> Result<(Vec<u64>, Vec<u64>)> {
    let source = GeneratorSource::try_new("truth", cfg.clone())?;
    let bots: HashMap<u64, usize> = truth
        .bots
        .iter()
        .enumerate()
        .map(|(i, b)| (b.user_id, i))
        .collect();
    let mut bot_events = vec![0u64; truth.bots.len()];
    let mut ddos_events = vec![0u64; truth.ddos.len()];
    for p in 0..cfg.partitions {
        for e in source.partition(p)? {
            if let Some(i) = bots.get(&e.user_id) {
                bot_events[*i] += 1;
            }
            for (i, d) in truth.ddos.iter().enumerate() {
                if (d.first_user_id..d.first_user_id + d.ips as u64).contains(&e.user_id) {
                    ddos_events[i] += 1;
                }
            }
        }
    }
    Ok((bot_events, ddos_events))
}

/// The truth items of the incidents present in the data, reporting the absent and the cut.
fn present_truth(cfg: &GeneratorConfig, truth: &GroundTruth) -> Result<GroundTruth> {
    let (bot_events, ddos_events) = present_events(cfg, truth)?;
    let mut kept = truth.clone();
    kept.bots.clear();
    kept.ddos.clear();
    for (b, n) in truth.bots.iter().zip(bot_events) {
        if n < b.events {
            println!(
                "  note: bot user:{} has {n} of its {} planned events in the data{}",
                b.user_id,
                b.events,
                if n == 0 {
                    ": left out of the truth"
                } else {
                    ""
                }
            );
        }
        if n > 0 {
            kept.bots.push(b.clone());
        }
    }
    for (d, n) in truth.ddos.iter().zip(ddos_events) {
        if n < d.events {
            println!(
                "  note: DDoS burst at {} ms has {n} of its {} planned events in the data{}",
                d.window_start_ms,
                d.events,
                if n == 0 {
                    ": left out of the truth"
                } else {
                    ""
                }
            );
        }
        if n > 0 {
            kept.ddos.push(d.clone());
        }
    }
    Ok(kept)
}

fn alert_item(r: &AlertRow) -> Item {
    Item {
        kind: r.kind.name(),
        subject: r.subject.clone(),
        start: r.window_start.0,
        end: r.window_end.0,
    }
}

/// Scores alerts of one kind against truth items (same kind and subject, overlapping).
fn score(kind: &str, alerts: &[Item], truth: &[Item], verbose: bool) -> Score {
    let alerts: Vec<&Item> = alerts.iter().filter(|a| a.kind == kind).collect();
    let truth: Vec<&Item> = truth.iter().filter(|t| t.kind == kind).collect();
    let matches = |a: &Item, t: &Item| a.subject == t.subject && a.overlaps(t);
    let tp = alerts
        .iter()
        .filter(|a| truth.iter().any(|t| matches(a, t)))
        .count() as u64;
    let found = truth
        .iter()
        .filter(|t| alerts.iter().any(|a| matches(a, t)))
        .count() as u64;
    if verbose {
        for a in &alerts {
            if !truth.iter().any(|t| matches(a, t)) {
                println!("    false positive: {a:?}");
            }
        }
        for t in &truth {
            if !alerts.iter().any(|a| matches(a, t)) {
                println!("    missed: {t:?}");
            }
        }
    }
    Score {
        tp,
        alerts: alerts.len() as u64,
        found,
        truth: truth.len() as u64,
    }
}

/// Traffic spikes explained by any injected incident (bot or burst) they overlap.
fn score_spikes(alerts: &[Item], truth: &[Item], verbose: bool) -> Score {
    let spikes: Vec<&Item> = alerts
        .iter()
        .filter(|a| a.kind == "traffic_spike")
        .collect();
    let tp = spikes
        .iter()
        .filter(|a| {
            let explained = truth.iter().any(|t| a.overlaps(t));
            if verbose && !explained {
                println!("    unexplained traffic_spike: {a:?}");
            }
            explained
        })
        .count() as u64;
    Score {
        tp,
        alerts: spikes.len() as u64,
        found: 0,
        truth: 0,
    }
}

fn settings(set: &[String]) -> Result<AlertSettings> {
    let mut layers = cap_engine::config::Layers::from_defaults("")?;
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set takes KEY=VALUE, got {kv}"))?;
        let key = format!("job.alerts.{}", k.trim_start_matches("job.alerts."));
        layers.set(&key, v)?;
    }
    Ok(layers.typed("job.alerts")?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rules = settings(&args.set)?.rules()?;
    let kinds = [AlertKind::Bot, AlertKind::Ddos];
    let mut totals: BTreeMap<&str, Score> = BTreeMap::new();
    println!(
        "alert quality: {} events per data set, seeds {:?}, {} workers, settings {:?}",
        args.events, args.seed, args.workers, args.set
    );
    for &seed in &args.seed {
        let cfg = GeneratorConfig {
            seed,
            events: Some(args.events),
            out_of_order_fraction: args.out_of_order,
            duplicate_fraction: args.duplicates,
            ..GeneratorConfig::default()
        };
        let truth = present_truth(&cfg, &GroundTruth::for_config(&cfg)?)?;
        let run = alerts_runner::run_alerts(&cfg, rules, args.workers, 20_000, false)?;
        if run.events != args.events {
            bail!("fed {} events, expected {}", run.events, args.events);
        }
        let alerts: Vec<Item> = run.rows.iter().map(alert_item).collect();
        let items = truth_items(&truth);
        println!(
            "seed {seed}: {} alerts, {} truth items, {:.1}s",
            alerts.len(),
            items.len(),
            run.elapsed.as_secs_f64()
        );
        if args.verbose {
            for r in &run.rows {
                println!(
                    "    alert {} {} {}..{} observed {} threshold {} {:?} {:?}",
                    r.kind.name(),
                    r.subject,
                    r.window_start.0,
                    r.window_end.0,
                    r.observed,
                    r.threshold,
                    r.rule,
                    r.severity
                );
            }
        }
        for kind in kinds {
            let s = score(kind.name(), &alerts, &items, args.verbose);
            println!("{}", s.line(kind.name(), true));
            totals.entry(kind.name()).or_default().add(s);
        }
        let s = score_spikes(&alerts, &items, args.verbose);
        println!("{}", s.line("traffic_spike", false));
        totals.entry("traffic_spike").or_default().add(s);
    }
    if args.seed.len() > 1 {
        println!("all seeds:");
        for kind in kinds {
            println!("{}", totals[kind.name()].line(kind.name(), true));
        }
        println!("{}", totals["traffic_spike"].line("traffic_spike", false));
    }
    Ok(())
}
