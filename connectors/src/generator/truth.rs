//! Injected incidents (bots and DDoS bursts): their plan, derived from the configuration
//! alone, and the ground truth written beside the data.
//!
//! The plan fixes, before any event is generated, each incident's window, ips, user ids
//! and exact number of events. The partitions then generate exactly those events (merged
//! by time into their background stream), so [`GroundTruth`] is exact as long as each
//! incident's partition reaches its window before its share of `events` runs out.

use std::collections::HashSet;

use cap_engine::time::MS_PER_DAY;
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::clock::Cycle;
use super::profile;
use super::rng::{hash, tag, unit, Rng};
use super::users::{ip_text, user_id, Population};
use super::{GeneratorConfig, GeneratorError};

/// One scraping bot, as planned.
#[derive(Clone, Debug)]
pub(crate) struct BotPlan {
    pub index: u32,
    pub user_index: u64,
    pub partition: u32,
    pub ip: [u8; 4],
    pub country: u8,
    pub agent: &'static str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub mean_gap_ms: u64,
    pub events: u64,
}

impl BotPlan {
    /// The stream of gaps between this bot's events.
    pub(crate) fn gap_rng(&self, seed: u64) -> Rng {
        Rng::new(hash(&[seed, tag::BOT_GAPS, u64::from(self.index)]))
    }

    /// The gap after an event (milliseconds, at least 1).
    #[inline]
    pub(crate) fn gap(&self, r: &mut Rng) -> i64 {
        ((self.mean_gap_ms as f64 * (0.5 + r.f64())) as i64).max(1)
    }
}

/// One DDoS burst, as planned.
#[derive(Clone, Debug)]
pub(crate) struct DdosPlan {
    pub burst: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    /// User index of the first ip's pseudo-user (ip `i` is user `first_user_index + i`).
    pub first_user_index: u64,
    pub ips: Vec<[u8; 4]>,
    pub ip_country: Vec<u8>,
    /// Product indices hit.
    pub targets: Vec<u32>,
    pub events: u64,
}

impl DdosPlan {
    /// The time of slot `j` (slots are evenly spread over the window with jitter, so
    /// they are in time order and their number is exact).
    #[inline]
    pub(crate) fn slot_time(&self, seed: u64, j: u64) -> i64 {
        let u = unit(hash(&[seed, tag::DDOS_SLOT, u64::from(self.burst), j]));
        let len = (self.end_ms - self.start_ms) as f64;
        self.start_ms + ((j as f64 + u) * len / self.events as f64) as i64
    }

    /// The ip of slot `j`.
    #[inline]
    pub(crate) fn slot_ip(&self, j: u64) -> usize {
        (j % self.ips.len() as u64) as usize
    }
}

/// All incidents, and the simulated span they were placed in.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Expected simulated span of the data (one day when unbounded).
    pub horizon_ms: i64,
    pub bots: Vec<BotPlan>,
    pub ddos: Vec<DdosPlan>,
    /// Total planned incident events.
    pub injected: u64,
}

fn floor_sec(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

impl Plan {
    /// Plans the incidents of `cfg` (validated) over its simulated span.
    pub(crate) fn build(
        cfg: &GeneratorConfig,
        start_ms: i64,
        cycle: &Cycle,
        catalog: &Catalog,
        population: &Population,
    ) -> Plan {
        match cfg.events {
            None => Plan::place(cfg, start_ms, MS_PER_DAY, catalog, population),
            Some(n) => {
                // The span depends on how many events are background, which depends on the
                // incidents' sizes, which depend on the span: a few fixed-point rounds.
                let mut injected = 0;
                let mut plan = None;
                for _ in 0..3 {
                    let background = n.saturating_sub(injected).max(1);
                    let horizon = cycle
                        .span_ms(start_ms, cfg.events_per_day, background as f64)
                        .max(1000);
                    let p = Plan::place(cfg, start_ms, horizon, catalog, population);
                    injected = p.injected;
                    plan = Some(p);
                }
                plan.unwrap_or_else(|| Plan::place(cfg, start_ms, MS_PER_DAY, catalog, population))
            }
        }
    }

    fn place(
        cfg: &GeneratorConfig,
        start_ms: i64,
        horizon: i64,
        catalog: &Catalog,
        population: &Population,
    ) -> Plan {
        let seed = cfg.seed;
        let parts = u64::from(cfg.partitions);
        let place_at =
            |h: u64| start_ms + floor_sec((horizon as f64 * (0.1 + 0.75 * unit(h))) as i64);
        let cap = |len: u64| floor_sec((len as i64).min(horizon / 10)).max(1000);

        let mut bots = Vec::with_capacity(cfg.bots as usize);
        let bot_len = cap(cfg.bot_window_ms);
        for i in 0..cfg.bots {
            let h = hash(&[seed, tag::BOT, u64::from(i)]);
            let mut r = Rng::new(h);
            let user_index = cfg.users + u64::from(i);
            let country = population.country(&mut r);
            let ip = population.random_ip(country, &mut r);
            let (lo, hi) = profile::BOT_MEAN_GAP_MS;
            let mean_gap_ms = lo + r.below(hi - lo + 1);
            let agent = profile::BOT_AGENTS[r.index(profile::BOT_AGENTS.len())];
            let start = place_at(r.next_u64());
            let mut bot = BotPlan {
                index: i,
                user_index,
                partition: (user_index % parts) as u32,
                ip,
                country,
                agent,
                start_ms: start,
                end_ms: start + bot_len,
                mean_gap_ms,
                events: 0,
            };
            let mut g = bot.gap_rng(seed);
            let mut t = bot.start_ms;
            while t < bot.end_ms {
                bot.events += 1;
                t += bot.gap(&mut g);
            }
            bots.push(bot);
        }

        let mut ddos = Vec::with_capacity(cfg.ddos_bursts as usize);
        let ddos_len = cap(cfg.ddos_window_ms);
        for b in 0..cfg.ddos_bursts {
            let mut r = Rng::new(hash(&[seed, tag::DDOS, u64::from(b)]));
            let start = place_at(r.next_u64());
            let mut seen = HashSet::with_capacity(cfg.ddos_ips as usize);
            let mut ips = Vec::with_capacity(cfg.ddos_ips as usize);
            let mut ip_country = Vec::with_capacity(cfg.ddos_ips as usize);
            let mut ip_rng = Rng::new(hash(&[seed, tag::DDOS_IP, u64::from(b)]));
            while ips.len() < cfg.ddos_ips as usize {
                let c = population.country(&mut ip_rng);
                let ip = population.random_ip(c, &mut ip_rng);
                if seen.insert(ip) {
                    ips.push(ip);
                    ip_country.push(c);
                }
            }
            let n_targets = 1 + r.index(3);
            let mut targets = Vec::with_capacity(n_targets);
            while targets.len() < n_targets.min(catalog.products.len()) {
                let p = catalog.sample_product(&mut r);
                if !targets.contains(&p) {
                    targets.push(p);
                }
            }
            ddos.push(DdosPlan {
                burst: b,
                start_ms: start,
                end_ms: start + ddos_len,
                first_user_index: cfg.users
                    + u64::from(cfg.bots)
                    + u64::from(b) * u64::from(cfg.ddos_ips),
                ips,
                ip_country,
                targets,
                events: cfg.ddos_events,
            });
        }
        let injected =
            bots.iter().map(|b| b.events).sum::<u64>() + ddos.iter().map(|d| d.events).sum::<u64>();
        Plan {
            horizon_ms: horizon,
            bots,
            ddos,
            injected,
        }
    }
}

/// What was injected into the data: the answer key for bot and DDoS detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The seed of the data set.
    pub seed: u64,
    /// Expected simulated span of the data set (ms from `start`; one day when unbounded).
    pub horizon_ms: i64,
    /// The injected scraping bots.
    pub bots: Vec<BotTruth>,
    /// The injected DDoS bursts.
    pub ddos: Vec<DdosTruth>,
}

/// One scraping bot: a single user and ip viewing many products at a very high rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotTruth {
    /// The bot's user id.
    pub user_id: u64,
    /// Its single ip.
    pub ip: String,
    /// Event time of its first event (UTC milliseconds).
    pub window_start_ms: i64,
    /// End of its activity (exclusive; its events are strictly before).
    pub window_end_ms: i64,
    /// Its number of (view) events.
    pub events: u64,
    /// Mean gap between two of its events, in milliseconds.
    pub mean_gap_ms: u64,
    /// The partition that generates it.
    pub partition: u32,
}

/// One DDoS burst: many ips hitting a few products within a short window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdosTruth {
    /// Start of the burst (UTC milliseconds, inclusive).
    pub window_start_ms: i64,
    /// End of the burst (exclusive).
    pub window_end_ms: i64,
    /// Number of distinct source ips.
    pub ips: usize,
    /// The products hit (product ids).
    pub target_products: Vec<u64>,
    /// Number of (view) events over all partitions.
    pub events: u64,
    /// User id of the first ip's pseudo-user; ip `i` of the burst is user `first_user_id + i`.
    pub first_user_id: u64,
}

impl GroundTruth {
    /// The ground truth of the data `cfg` generates (builds the catalog to name products).
    pub fn for_config(cfg: &GeneratorConfig) -> Result<GroundTruth, GeneratorError> {
        let model = super::sim::Model::build(cfg)?;
        Ok(GroundTruth::from_model(&model))
    }

    pub(crate) fn from_model(model: &super::sim::Model) -> GroundTruth {
        let plan = &model.plan;
        GroundTruth {
            seed: model.cfg.seed,
            horizon_ms: plan.horizon_ms,
            bots: plan
                .bots
                .iter()
                .map(|b| BotTruth {
                    user_id: user_id(b.user_index),
                    ip: ip_text(b.ip).to_string(),
                    window_start_ms: b.start_ms,
                    window_end_ms: b.end_ms,
                    events: b.events,
                    mean_gap_ms: b.mean_gap_ms,
                    partition: b.partition,
                })
                .collect(),
            ddos: plan
                .ddos
                .iter()
                .map(|d| DdosTruth {
                    window_start_ms: d.start_ms,
                    window_end_ms: d.end_ms,
                    ips: d.ips.len(),
                    target_products: d
                        .targets
                        .iter()
                        .map(|&p| model.catalog.products[p as usize].id)
                        .collect(),
                    events: d.events,
                    first_user_id: user_id(d.first_user_index),
                })
                .collect(),
        }
    }
}
