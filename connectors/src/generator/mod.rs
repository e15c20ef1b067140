//! Synthetic clickstream generator: a deterministic, calibrated stand-in for the REES46
//! data set, as a partitioned [`Source`](cap_engine::source::Source) ([`GeneratorSource`])
//! and as files ([`write_dataset`]), with the ground truth of its injected incidents
//! ([`GroundTruth`]).
//!
//! ```
//! use cap_connectors::generator::{GeneratorConfig, GeneratorSource, GroundTruth};
//!
//! let cfg = GeneratorConfig { events: Some(10_000), ..GeneratorConfig::default() };
//! let source = GeneratorSource::try_new("clicks", cfg.clone())?;
//! // Partition 1 of 4 yields exactly a quarter of the events, the same ones every time,
//! // in event-time order (no late events were asked for).
//! let events: Vec<_> = source.partition(1)?.collect();
//! assert_eq!(events.len(), 2_500);
//! assert_eq!(events, source.partition(1)?.collect::<Vec<_>>());
//! assert!(events.windows(2).all(|w| w[0].event_time <= w[1].event_time));
//! // What was injected, for scoring bot and DDoS detection.
//! let truth = GroundTruth::for_config(&cfg)?;
//! assert_eq!((truth.bots.len(), truth.ddos.len()), (5, 2));
//! # Ok::<(), cap_connectors::generator::GeneratorError>(())
//! ```
//!
//! # The model
//!
//! ```text
//!   catalog (seed)            users (seed, index)              incidents (config)
//!   categories: Zipf          favourite categories, country,   bots: view-only, 100-500 ms
//!   products: Zipf in cat.    home ip, channel, device         DDoS: hundreds of ips, few
//!   brands, prices                   |                               products, minutes
//!        |                           v                                |
//!        +------> partition k: pool of concurrent sessions           |
//!                  (users u with u % partitions == k)                 |
//!                  clock: events_per_day * daily x weekly cycle       |
//!                            |  background events, time order         |
//!                            +-------------- merge by time <----------+
//!                                               |
//!                            late delivery / duplicates (optional)
//!                                               |
//!                                 SourceRecord { position, event }
//! ```
//!
//! - **Catalog.** `categories` categories under the 13 top levels of the REES46 taxonomy
//!   (`electronics.smartphone`, `appliances.kitchen.washer`, ...; codes repeat under
//!   several ids when there are more categories than codes, as in REES46), `products`
//!   products and `brands` brands. Popularity is Zipf at every level. Prices follow the
//!   REES46 row quantiles (p50 165, p90 758, p99 1682) with a per-category price level.
//! - **Users** have 1-3 favourite categories (drawn by popularity, so their top levels are
//!   Zipf): a session's focus is a favourite 85% of the time, and views stay mostly within
//!   the focus category. So co-viewing is structured and recommendations are learnable.
//!   User activity is skewed (weight ∝ 1/(rank+100)).
//! - **Sessions** (UUID v4 text, lower case) start with a view and follow a Markov chain
//!   view -> view | cart | end, cart -> purchase | remove_from_cart | view | end, ...;
//!   a cart is of the last viewed product, a purchase or removal of the carted one.
//!   Events of a session are seconds to minutes apart (40 s on average) and never go back
//!   in time. About 1% of sessions have no `user_session` (null).
//! - **Time.** All partitions together produce `events_per_day` background events per
//!   simulated day, modulated by a daily cycle (night low, evening peak, in UTC) and a
//!   weekly one. Event times have whole-second resolution, as REES46's.
//! - **Incidents** come on top of the background: `bots` scrapers (one user, one ip,
//!   view-only, an event every 100-500 ms for `bot_window_ms`, thousands of distinct
//!   products) and `ddos_bursts` bursts (`ddos_events` views from `ddos_ips` distinct ips on
//!   1-3 products within `ddos_window_ms`). Their windows lie between 10% and 95% of the
//!   simulated span (the first simulated day when `events` is unbounded) and are listed by
//!   [`GroundTruth::for_config`].
//! - **Delivery faults** (off by default): `out_of_order_fraction` of events are held back
//!   and delivered 1 s to `max_lateness_ms` (in event time) later; `duplicate_fraction` of
//!   events are delivered twice in a row, identically.
//!
//! # Calibration
//!
//! Against REES46 November 2019 (67.5M events in 30 days): event types 94.0% view,
//! 4.38% cart, 1.32% purchase, 0.30% remove_from_cart (REES46: 94.2 / 4.5 / 1.36, and no
//! removals in that file; see the tests for measured figures). With a bounded `events`,
//! the incidents' views are accounted for, so the overall shares hold whatever their
//! volume. About a third of rows have a null `category_code`, 15% a null `brand`, 0.3% a
//! price of 0; these are calibrated on expected row shares, so they hold on any large
//! sample, not exactly on a small one.
//!
//! # Determinism
//!
//! The stream of partition `k` is a function of `(config, k)` alone: never of wall clock,
//! worker count or scheduling. The generator uses its own PRNG (SplitMix64 and
//! xoshiro256**, written out in this module) and only IEEE-754 basic arithmetic, so the output does
//! not change with a crate version or a platform's math library. The catalog and user
//! profiles depend on the seed only; the partition count decides which partition owns a
//! user (`user_index % partitions`), so changing it changes the data (a session never spans
//! partitions). `rate` only paces delivery (it is the only use of wall clock); it never
//! changes content.
//!
//! Guaranteed: with `events = Some(n)`, partition `k` yields exactly `n / partitions`
//! events, plus one when `k < n % partitions`; event time within a partition is
//! non-decreasing except for the deliberately late events; every purchase follows a view
//! of the same session. Not guaranteed: the ground-truth windows of an incident assume its
//! partition's share is long enough to reach them (with tiny `events` and many partitions
//! an incident can be cut short or absent); per-day traffic is a target on average, not an
//! exact count.

use serde::{Deserialize, Serialize};

mod catalog;
mod clock;
mod profile;
mod rng;
mod sim;
mod source;
mod truth;
mod users;
mod write;

#[cfg(test)]
mod tests;

pub use source::{GeneratorPartition, GeneratorSource};
pub use truth::{BotTruth, DdosTruth, GroundTruth};
pub use write::{write_dataset, MergedEvents, OutputFormat, WriteOptions, WriteReport};

/// Configuration of the synthetic clickstream (TOML section `generator`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Seed of every random choice (default 42).
    pub seed: u64,
    /// Total events over all partitions; `None` generates forever (live mode).
    pub events: Option<u64>,
    /// Number of partitions (default 4). Users are sharded by `user_index % partitions`.
    pub partitions: u32,
    /// Number of (human) users (default 200 000).
    pub users: u64,
    /// Number of products (default 50 000).
    pub products: u64,
    /// Number of category ids (default 600; about a third without `category_code`).
    pub categories: u32,
    /// Number of brands (default 2000).
    pub brands: u32,
    /// Event time of the first event: `2019-11-01 00:00:00 UTC` (default),
    /// `2019-11-01T00:00:00Z` or `2019-11-01`.
    pub start: String,
    /// Background events per simulated day over all partitions (default 2 250 000, i.e.
    /// REES46's 67.5M in 30 days); sets how fast event time advances. Incidents come on top.
    pub events_per_day: u64,
    /// Fraction of events delivered late (default 0).
    pub out_of_order_fraction: f64,
    /// Largest delay of a late event, in event-time milliseconds (default 10 min, min 1 s).
    pub max_lateness_ms: u64,
    /// Fraction of events delivered twice, identically (default 0).
    pub duplicate_fraction: f64,
    /// Number of injected scraping bots (default 5).
    pub bots: u32,
    /// How long each bot is active, in milliseconds (default 20 min; at most a tenth of the
    /// simulated span).
    pub bot_window_ms: u64,
    /// Number of injected DDoS bursts (default 2).
    pub ddos_bursts: u32,
    /// Length of a DDoS burst, in milliseconds (default 2 min; at most a tenth of the span).
    pub ddos_window_ms: u64,
    /// Distinct source ips of a DDoS burst (default 400).
    pub ddos_ips: u32,
    /// Events of a DDoS burst over all partitions (default 4000).
    pub ddos_events: u64,
    /// Delivery rate over all partitions in events per second of wall clock; `None`
    /// (default) delivers as fast as possible.
    pub rate: Option<u64>,
    /// Fill the extension fields `ip`, `user_agent`, `channel`, `country` (default true).
    pub extensions: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            events: None,
            partitions: 4,
            users: 200_000,
            products: 50_000,
            categories: 600,
            brands: 2000,
            start: "2019-11-01 00:00:00 UTC".into(),
            events_per_day: 2_250_000,
            out_of_order_fraction: 0.0,
            max_lateness_ms: 600_000,
            duplicate_fraction: 0.0,
            bots: 5,
            bot_window_ms: 1_200_000,
            ddos_bursts: 2,
            ddos_window_ms: 120_000,
            ddos_ips: 400,
            ddos_events: 4000,
            rate: None,
            extensions: true,
        }
    }
}

/// Largest accepted catalog sizes (they are held in memory).
const MAX_PRODUCTS: u64 = 50_000_000;
const MAX_CATEGORIES: u32 = 100_000;
const MAX_BRANDS: u32 = 1_000_000;

impl GeneratorConfig {
    /// Checks every field; the message names the key (`generator.<field>`) and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 {
            return Err("generator.partitions must be >= 1".into());
        }
        if self.users < u64::from(self.partitions) {
            return Err(format!(
                "generator.users must be >= generator.partitions ({}): every partition needs users of its own, got {}",
                self.partitions, self.users
            ));
        }
        if self.products == 0 || self.products > MAX_PRODUCTS {
            return Err(format!(
                "generator.products must be in 1..={MAX_PRODUCTS}, got {}",
                self.products
            ));
        }
        if self.categories == 0 || self.categories > MAX_CATEGORIES {
            return Err(format!(
                "generator.categories must be in 1..={MAX_CATEGORIES}, got {}",
                self.categories
            ));
        }
        if u64::from(self.categories) > self.products {
            return Err(format!(
                "generator.categories ({}) must be <= generator.products ({}): every category needs a product",
                self.categories, self.products
            ));
        }
        if self.brands == 0 || self.brands > MAX_BRANDS {
            return Err(format!(
                "generator.brands must be in 1..={MAX_BRANDS}, got {}",
                self.brands
            ));
        }
        parse_start(&self.start).map_err(|e| format!("generator.start: {e}"))?;
        if self.events_per_day == 0 {
            return Err("generator.events_per_day must be >= 1".into());
        }
        if !(0.0..1.0).contains(&self.out_of_order_fraction) {
            return Err(format!(
                "generator.out_of_order_fraction must be in [0, 1), got {}",
                self.out_of_order_fraction
            ));
        }
        if self.out_of_order_fraction > 0.0 && self.max_lateness_ms < 1000 {
            return Err(format!(
                "generator.max_lateness_ms must be >= 1000 when events arrive late (times have whole seconds), got {}",
                self.max_lateness_ms
            ));
        }
        if !(0.0..1.0).contains(&self.duplicate_fraction) {
            return Err(format!(
                "generator.duplicate_fraction must be in [0, 1), got {}",
                self.duplicate_fraction
            ));
        }
        if self.bots > 0 && self.bot_window_ms < 1000 {
            return Err(format!(
                "generator.bot_window_ms must be >= 1000, got {}",
                self.bot_window_ms
            ));
        }
        if self.ddos_bursts > 0 {
            if self.ddos_window_ms < 1000 {
                return Err(format!(
                    "generator.ddos_window_ms must be >= 1000, got {}",
                    self.ddos_window_ms
                ));
            }
            if self.ddos_ips == 0 {
                return Err(
                    "generator.ddos_ips must be >= 1 when generator.ddos_bursts > 0".into(),
                );
            }
            if self.ddos_events == 0 {
                return Err(
                    "generator.ddos_events must be >= 1 when generator.ddos_bursts > 0".into(),
                );
            }
        }
        if self.rate == Some(0) {
            return Err(
                "generator.rate must be >= 1 event/s (omit it for as fast as possible)".into(),
            );
        }
        Ok(())
    }

    /// The number of events partition `k` yields when `events` is set.
    pub fn share(&self, k: u32) -> Option<u64> {
        let p = u64::from(self.partitions.max(1));
        self.events.map(|n| n / p + u64::from(u64::from(k) < n % p))
    }

    /// The event time of the start, in UTC milliseconds.
    pub fn start_ms(&self) -> Result<i64, GeneratorError> {
        parse_start(&self.start)
            .map_err(|e| GeneratorError::Config(format!("generator.start: {e}")))
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS UTC`, `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DD` (years
/// 2000-2099, the decoders' default range).
fn parse_start(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time like `2019-11-01 00:00:00 UTC`");
    let t = text.trim();
    let b = t.as_bytes();
    let num = |s: &[u8]| -> Option<u32> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (
        num(&b[0..4]).ok_or_else(bad)?,
        num(&b[5..7]).ok_or_else(bad)?,
        num(&b[8..10]).ok_or_else(bad)?,
    );
    let (h, mi, s) = match &b[10..] {
        [] => (0, 0, 0),
        [sep, rest @ ..]
            if (*sep == b' ' || *sep == b'T')
                && rest.len() >= 8
                && rest[2] == b':'
                && rest[5] == b':' =>
        {
            let tail = &rest[8..];
            if !(tail.is_empty() || tail == b" UTC" || tail == b"Z") {
                return Err(bad());
            }
            (
                num(&rest[0..2]).ok_or_else(bad)?,
                num(&rest[3..5]).ok_or_else(bad)?,
                num(&rest[6..8]).ok_or_else(bad)?,
            )
        }
        _ => return Err(bad()),
    };
    if !(2000..=2099).contains(&y) {
        return Err(format!(
            "year {y} is outside 2000-2099 (the decoders' default range)"
        ));
    }
    let day = cap_engine::time::days_from_civil(y as i32, mo, d);
    if !(1..=12).contains(&mo)
        || cap_engine::time::civil_from_days(day) != (y as i32, mo, d)
        || h > 23
        || mi > 59
        || s > 59
    {
        return Err(bad());
    }
    Ok(cap_engine::time::ms_from_civil(
        y as i32, mo, d, h, mi, s, 0,
    ))
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// The configuration is invalid; the message names the key.
    #[error("invalid generator configuration: {0}")]
    Config(String),
    /// A dataset file needs a bounded stream.
    #[error("writing a dataset needs a bounded stream: set generator.events")]
    Unbounded,
    /// Reading or writing a file failed.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What was being done (`cannot create the file`, `write failed`...).
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
