//! The in-order event stream of one partition: background sessions merged by time with
//! the partition's injected incidents.
//!
//! Background: the partition keeps a pool of concurrent sessions whose size follows the
//! traffic cycle (about `rate x 40 s` sessions). Each step advances the partition clock by
//! `mean_dt * e / c(t)` (`e` uniform-sum jitter with mean 1, `c` the cycle), picks a session
//! of the pool at random and emits its next event at the clock's time; a session that ends
//! leaves the pool and new ones start to keep it at its target size. So all partitions
//! together run at `events_per_day * c(t)`, and a session's events are about
//! `pool size x dt` = 40 s apart whatever the time of day.
//!
//! Incidents (the bots and DDoS pseudo-users this partition owns) have precomputed event
//! times; the next event of the partition is whichever is due first (background on ties).

use std::sync::Arc;

use compact_str::CompactString;

use crate::clickstream::{Channel, Event, EventType, SessionId};

use super::catalog::{Catalog, NO_BRAND};
use super::clock::Cycle;
use super::profile;
use super::rng::{hash, tag, uuid_v4, Prob, Rng};
use super::truth::Plan;
use super::users::{agent, ip_text, user_id, Population, UserSampler};
use super::{GeneratorConfig, GeneratorError};

/// Largest session pool of one partition at cycle 1: beyond it (huge `events_per_day`)
/// sessions get denser in time instead of more numerous, which keeps memory bounded.
const MAX_POOL: f64 = 50_000.0;

/// Everything derived from the configuration alone, shared by all partitions.
#[derive(Debug)]
pub(crate) struct Model {
    pub cfg: GeneratorConfig,
    pub start_ms: i64,
    pub catalog: Catalog,
    pub population: Population,
    pub cycle: Cycle,
    pub plan: Plan,
    pub trans: Transitions,
    /// Mean clock advance per background event of one partition, at cycle 1 (ms).
    pub mean_dt_ms: f64,
    /// Target pool size of one partition at cycle 1.
    pub pool_k0: f64,
}

impl Model {
    /// Validates `cfg` and derives the model.
    pub(crate) fn build(cfg: &GeneratorConfig) -> Result<Model, GeneratorError> {
        cfg.validate().map_err(GeneratorError::Config)?;
        let start_ms = cfg.start_ms()?;
        let catalog = Catalog::build(cfg.seed, cfg.categories, cfg.brands, cfg.products);
        let population = Population::new();
        let cycle = Cycle::new();
        let plan = Plan::build(cfg, start_ms, &cycle, &catalog, &population);
        let trans = Transitions::new(cfg.events, plan.injected);
        let parts = f64::from(cfg.partitions);
        let per_ms = cfg.events_per_day as f64 / cap_engine::time::MS_PER_DAY as f64;
        Ok(Model {
            cfg: cfg.clone(),
            start_ms,
            catalog,
            population,
            cycle,
            plan,
            trans,
            mean_dt_ms: parts / per_ms,
            pool_k0: (per_ms / parts * profile::MEAN_SESSION_GAP_MS).min(MAX_POOL),
        })
    }
}

/// The session Markov chain, as cumulative `u64` thresholds.
#[derive(Clone, Debug)]
pub(crate) struct Transitions {
    /// After a view: [cart, cart+end].
    view: [Prob; 2],
    /// After a cart: [purchase, +remove, +view].
    cart: [Prob; 3],
    /// After a purchase: [view].
    purchase: Prob,
    /// After a removal: [view].
    remove: Prob,
    /// The background event shares the chain was solved for (view, cart, purchase, remove);
    /// read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub shares: [f64; 4],
}

impl Transitions {
    /// Solves the chain so that background events have the profile's type shares, after
    /// making room for the incidents' `injected` views when `events` is bounded.
    pub(crate) fn new(events: Option<u64>, injected: u64) -> Transitions {
        let (mut v, mut c, mut p, mut r) = (
            profile::VIEW_SHARE,
            profile::CART_SHARE,
            profile::PURCHASE_SHARE,
            profile::REMOVE_SHARE,
        );
        if let Some(n) = events.filter(|&n| n > 0) {
            let (n, inj) = (n as f64, injected.min(n) as f64);
            let bg = n - inj;
            if bg > 0.0 {
                v = (v * n - inj) / bg;
                c = c * n / bg;
                p = p * n / bg;
                r = r * n / bg;
                if v < 0.5 {
                    // Incidents dominate a tiny data set: keep the sessions sane instead.
                    let k = 0.5 / (c + p + r);
                    (v, c, p, r) = (0.5, c * k, p * k, r * k);
                }
            }
        }
        let vc = c / v;
        let cp = p / c;
        let cr = r / c;
        let cv = profile::CART_THEN_VIEW.min(1.0 - cp - cr).max(0.0);
        let ce = 1.0 - cp - cr - cv;
        let pe = 1.0 - profile::PURCHASE_THEN_VIEW;
        let re = 1.0 - profile::REMOVE_THEN_VIEW;
        let ve = (1.0 / profile::MEAN_VIEWS_PER_SESSION - vc * (ce + cp * pe + cr * re))
            .clamp(0.01, 1.0 - vc);
        Transitions {
            view: [Prob::new(vc), Prob::new(vc + ve)],
            cart: [Prob::new(cp), Prob::new(cp + cr), Prob::new(cp + cr + cv)],
            purchase: Prob::new(profile::PURCHASE_THEN_VIEW),
            remove: Prob::new(profile::REMOVE_THEN_VIEW),
            shares: [v, c, p, r],
        }
    }

    /// The event that follows `prev` in a session, or `None` when the session ends.
    #[inline]
    fn next(&self, prev: EventType, x: u64) -> Option<EventType> {
        let lt = |p: Prob| x < p.threshold();
        match prev {
            EventType::View => {
                if lt(self.view[0]) {
                    Some(EventType::Cart)
                } else if lt(self.view[1]) {
                    None
                } else {
                    Some(EventType::View)
                }
            }
            EventType::Cart => {
                if lt(self.cart[0]) {
                    Some(EventType::Purchase)
                } else if lt(self.cart[1]) {
                    Some(EventType::RemoveFromCart)
                } else if lt(self.cart[2]) {
                    Some(EventType::View)
                } else {
                    None
                }
            }
            EventType::Purchase => lt(self.purchase).then_some(EventType::View),
            EventType::RemoveFromCart => lt(self.remove).then_some(EventType::View),
        }
    }
}

const NONE: u32 = u32::MAX;

/// One live session.
#[derive(Clone, Debug)]
struct Session {
    user_id: u64,
    session: Option<u128>,
    ip: CompactString,
    agent: &'static str,
    country: &'static str,
    channel: Channel,
    focus: u32,
    favourites: [u32; 3],
    n_favourites: u8,
    /// Last viewed product.
    last: u32,
    /// Product in the cart.
    cart: u32,
    /// The event the session emits next.
    next: EventType,
}

struct BotStream {
    plan: usize,
    t: i64,
    left: u64,
    gaps: Rng,
    content: Rng,
    session: u128,
    ip: CompactString,
}

struct DdosStream {
    plan: usize,
    /// Next slot owned by this partition (== events when done).
    j: u64,
    t: i64,
    ips: Vec<CompactString>,
}

/// Which stream the next injected event comes from.
#[derive(Clone, Copy)]
enum Injected {
    Bot(usize),
    Ddos(usize),
}

/// The in-order stream of one partition.
pub(crate) struct Sim {
    model: Arc<Model>,
    st: State,
}

/// The mutable state of a [`Sim`] (kept apart so the per-event path borrows the model
/// instead of cloning its `Arc`).
struct State {
    partition: u32,
    rng: Rng,
    /// Background clock, ms since start.
    clock: f64,
    /// Absolute time of the next background event.
    next_bg: i64,
    pool: Vec<Session>,
    users: UserSampler,
    bots: Vec<BotStream>,
    ddos: Vec<DdosStream>,
    next_inj: i64,
    next_src: Injected,
    ext: bool,
    p_null: Prob,
    p_channel: Prob,
    p_home: Prob,
    p_favourite: Prob,
    p_same: Prob,
    p_revisit: Prob,
}

impl Sim {
    /// The stream of `partition` from its beginning.
    pub(crate) fn new(model: Arc<Model>, partition: u32) -> Sim {
        let cfg = &model.cfg;
        let seed = cfg.seed;
        let parts = u64::from(cfg.partitions);
        let users = UserSampler::new(seed, cfg.users, parts, u64::from(partition));
        let bots = model
            .plan
            .bots
            .iter()
            .enumerate()
            .filter(|(_, b)| b.partition == partition)
            .map(|(i, b)| BotStream {
                plan: i,
                t: b.start_ms,
                left: b.events,
                gaps: b.gap_rng(seed),
                content: Rng::new(hash(&[seed, tag::BOT_EVENTS, u64::from(b.index)])),
                session: {
                    let h = hash(&[seed, tag::BOT_EVENTS, u64::from(b.index), 1]);
                    uuid_v4(h, hash(&[h]))
                },
                ip: ip_text(b.ip),
            })
            .collect();
        let ddos = model
            .plan
            .ddos
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut s = DdosStream {
                    plan: i,
                    j: 0,
                    t: i64::MAX,
                    ips: d.ips.iter().map(|ip| ip_text(*ip)).collect(),
                };
                State::ddos_seek(&model, partition, &mut s, 0);
                s
            })
            .collect();
        let mut st = State {
            rng: Rng::new(hash(&[seed, tag::PARTITION, u64::from(partition)])),
            partition,
            clock: 0.0,
            next_bg: model.start_ms,
            pool: Vec::with_capacity(model.pool_k0 as usize * 2 + 4),
            users,
            bots,
            ddos,
            next_inj: i64::MAX,
            next_src: Injected::Bot(0),
            ext: cfg.extensions,
            p_null: Prob::new(profile::NULL_SESSION_SHARE),
            p_channel: Prob::new(profile::USUAL_CHANNEL),
            p_home: Prob::new(profile::HOME_IP),
            p_favourite: Prob::new(profile::FAVOURITE_FOCUS),
            p_same: Prob::new(profile::VIEW_SAME_CATEGORY),
            p_revisit: Prob::new(profile::VIEW_SAME_CATEGORY + profile::VIEW_REVISIT),
        };
        st.find_next_injected();
        Sim { model, st }
    }

    /// The (millisecond) time of the next event.
    #[inline]
    pub(crate) fn peek_time(&self) -> i64 {
        self.st.next_bg.min(self.st.next_inj)
    }

    /// The next event in time order.
    #[inline]
    pub(crate) fn next_event(&mut self) -> Event {
        let model = &*self.model;
        if self.st.next_inj < self.st.next_bg {
            self.st.next_injected(model)
        } else {
            self.st.next_background(model)
        }
    }
}

impl State {
    /// Moves a DDoS stream to its first slot `>= j` owned by this partition.
    fn ddos_seek(model: &Model, partition: u32, s: &mut DdosStream, mut j: u64) {
        let d = &model.plan.ddos[s.plan];
        let parts = u64::from(model.cfg.partitions);
        while j < d.events
            && (d.first_user_index + d.slot_ip(j) as u64) % parts != u64::from(partition)
        {
            j += 1;
        }
        s.j = j;
        s.t = if j < d.events {
            d.slot_time(model.cfg.seed, j)
        } else {
            i64::MAX
        };
    }

    fn find_next_injected(&mut self) {
        self.next_inj = i64::MAX;
        for (i, b) in self.bots.iter().enumerate() {
            if b.left > 0 && b.t < self.next_inj {
                self.next_inj = b.t;
                self.next_src = Injected::Bot(i);
            }
        }
        for (i, d) in self.ddos.iter().enumerate() {
            if d.t < self.next_inj {
                self.next_inj = d.t;
                self.next_src = Injected::Ddos(i);
            }
        }
    }

    fn next_background(&mut self, model: &Model) -> Event {
        let t = self.next_bg;
        let c = model.cycle.at(t);
        let target = ((model.pool_k0 * c + 0.5) as usize).max(1);
        while self.pool.len() < target {
            let s = self.new_session(model);
            self.pool.push(s);
        }
        let i = self.rng.index(self.pool.len());
        let kind = self.pool[i].next;
        let product = self.pick_product(&model.catalog, i, kind);
        let event = self.session_event(model, &self.pool[i], kind, product, t);
        match model.trans.next(kind, self.rng.next_u64()) {
            Some(next) => self.pool[i].next = next,
            None => {
                self.pool.swap_remove(i);
            }
        }
        let x = self.rng.next_u64();
        let e = ((x >> 32) + (x & 0xffff_ffff)) as f64 * (1.0 / 4_294_967_296.0);
        self.clock += model.mean_dt_ms * e / c;
        self.next_bg = model.start_ms + self.clock as i64;
        event
    }

    fn new_session(&mut self, model: &Model) -> Session {
        let r = &mut self.rng;
        let u = self.users.sample(r);
        let prof = model.population.profile(model.cfg.seed, u, &model.catalog);
        let session = if r.hit(self.p_null) {
            None
        } else {
            Some(uuid_v4(r.next_u64(), r.next_u64()))
        };
        let channel = if r.hit(self.p_channel) {
            prof.channel
        } else {
            model.population.channel(r)
        };
        let ip = if r.hit(self.p_home) {
            prof.home_ip
        } else {
            model.population.random_ip(prof.country, r)
        };
        let mut s = Session {
            user_id: user_id(u),
            session,
            ip: if self.ext {
                ip_text(ip)
            } else {
                CompactString::default()
            },
            agent: agent(channel, prof.device),
            country: profile::COUNTRIES[prof.country as usize].0,
            channel,
            focus: 0,
            favourites: prof.favourites,
            n_favourites: prof.n_favourites,
            last: NONE,
            cart: NONE,
            next: EventType::View,
        };
        s.focus = self.pick_focus(&model.catalog, s.favourites, s.n_favourites);
        s
    }

    fn pick_focus(&mut self, catalog: &Catalog, favourites: [u32; 3], n: u8) -> u32 {
        if self.rng.hit(self.p_favourite) {
            favourites[self.rng.index(usize::from(n))]
        } else {
            catalog.sample_category(&mut self.rng)
        }
    }

    /// The product of the next event of session `i`, updating its view/cart state.
    #[inline]
    fn pick_product(&mut self, catalog: &Catalog, i: usize, kind: EventType) -> u32 {
        match kind {
            EventType::View => {
                let last = self.pool[i].last;
                let p = if last == NONE {
                    catalog.sample_product_in(self.pool[i].focus, &mut self.rng)
                } else {
                    let x = self.rng.next_u64();
                    if x < self.p_same.threshold() {
                        catalog.sample_product_in(self.pool[i].focus, &mut self.rng)
                    } else if x < self.p_revisit.threshold() {
                        last
                    } else {
                        let (fav, n) = (self.pool[i].favourites, self.pool[i].n_favourites);
                        let focus = self.pick_focus(catalog, fav, n);
                        self.pool[i].focus = focus;
                        catalog.sample_product_in(focus, &mut self.rng)
                    }
                };
                self.pool[i].last = p;
                p
            }
            EventType::Cart => {
                let s = &mut self.pool[i];
                s.cart = s.last;
                s.cart
            }
            EventType::Purchase | EventType::RemoveFromCart => {
                let s = &mut self.pool[i];
                let p = if s.cart == NONE { s.last } else { s.cart };
                s.cart = NONE;
                p
            }
        }
    }

    #[inline]
    fn session_event(
        &self,
        model: &Model,
        s: &Session,
        kind: EventType,
        product: u32,
        t: i64,
    ) -> Event {
        let mut e = product_event(&model.catalog, product, kind, s.user_id, t);
        e.user_session = s.session.map(SessionId::Uuid);
        if self.ext {
            e.ip = Some(s.ip.clone());
            e.user_agent = Some(CompactString::const_new(s.agent));
            e.channel = Some(s.channel);
            e.country = Some(CompactString::const_new(s.country));
        }
        e
    }

    fn next_injected(&mut self, model: &Model) -> Event {
        let t = self.next_inj;
        let event = match self.next_src {
            Injected::Bot(i) => {
                let b = &mut self.bots[i];
                let plan = &model.plan.bots[b.plan];
                let product = b.content.index(model.catalog.products.len()) as u32;
                let mut e = product_event(
                    &model.catalog,
                    product,
                    EventType::View,
                    user_id(plan.user_index),
                    t,
                );
                e.user_session = Some(SessionId::Uuid(b.session));
                if self.ext {
                    e.ip = Some(b.ip.clone());
                    e.user_agent = Some(CompactString::const_new(plan.agent));
                    e.channel = Some(Channel::Web);
                    e.country = Some(CompactString::const_new(
                        profile::COUNTRIES[plan.country as usize].0,
                    ));
                }
                b.left -= 1;
                b.t += plan.gap(&mut b.gaps);
                e
            }
            Injected::Ddos(i) => {
                let seed = model.cfg.seed;
                let d = &mut self.ddos[i];
                let plan = &model.plan.ddos[d.plan];
                let ip = plan.slot_ip(d.j);
                let h = hash(&[seed, tag::DDOS_SLOT, u64::from(plan.burst), d.j, 1]);
                let product = plan.targets[(h % plan.targets.len() as u64) as usize];
                let user = plan.first_user_index + ip as u64;
                let mut e =
                    product_event(&model.catalog, product, EventType::View, user_id(user), t);
                let sh = hash(&[seed, tag::DDOS_IP, u64::from(plan.burst), ip as u64]);
                e.user_session = Some(SessionId::Uuid(uuid_v4(sh, hash(&[sh]))));
                if self.ext {
                    e.ip = Some(d.ips[ip].clone());
                    e.user_agent = Some(CompactString::const_new(
                        profile::DDOS_AGENTS[(sh >> 60) as usize % profile::DDOS_AGENTS.len()],
                    ));
                    e.channel = Some(Channel::Web);
                    e.country = Some(CompactString::const_new(
                        profile::COUNTRIES[plan.ip_country[ip] as usize].0,
                    ));
                }
                let next = d.j + 1;
                State::ddos_seek(model, self.partition, d, next);
                e
            }
        };
        self.find_next_injected();
        event
    }
}

/// An event on `product` with the catalog fields filled, no session and no extensions.
#[inline]
fn product_event(catalog: &Catalog, product: u32, kind: EventType, user: u64, t: i64) -> Event {
    let p = &catalog.products[product as usize];
    let c = &catalog.categories[p.category as usize];
    Event {
        event_time: t - t.rem_euclid(1000),
        event_type: kind,
        product_id: p.id,
        category_id: c.id,
        category_code: c.code.clone(),
        brand: if p.brand == NO_BRAND {
            None
        } else {
            Some(catalog.brands[p.brand as usize].clone())
        },
        price_cents: p.price_cents,
        user_id: user,
        user_session: None,
        ip: None,
        user_agent: None,
        channel: None,
        country: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_make_room_for_incident_views() {
        let live = Transitions::new(None, 0);
        assert_eq!(
            live.shares,
            [
                profile::VIEW_SHARE,
                profile::CART_SHARE,
                profile::PURCHASE_SHARE,
                profile::REMOVE_SHARE
            ]
        );
        let bounded = Transitions::new(Some(1_000_000), 30_000);
        assert!((bounded.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Background views + incident views = the profile's view share of all events.
        let views = bounded.shares[0] * 970_000.0 + 30_000.0;
        assert!((views / 1e6 - profile::VIEW_SHARE).abs() < 1e-12);
        // Incidents larger than the data set: sessions stay sane.
        let swamped = Transitions::new(Some(1000), 5000);
        assert!(swamped.shares[0] >= 0.5);
        let tiny = Transitions::new(Some(10_000), 9_000);
        assert!(tiny.shares[0] >= 0.5 && (tiny.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
