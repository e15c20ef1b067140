//! `alerts`: bots, DDoS bursts and traffic spikes detected in event time.
//!
//! ```text
//!  events ─ (time, user, ip, is_view)
//!    ├─ (user:U | ip:I, (time, not a view)) ── windowed_tallies(bot windows) ─┬─ user events >= bot_user_events ── bot/user_rate ─┐
//!    │                                                                         ├─ ip events >= bot_ip_events ────── bot/ip_rate ───┤
//!    │                                                                         └─ user events >= burst, none marked  bot/view_burst ┤
//!    ├─ (global, time) ── windowed_tallies(global windows) ── baseline_surges ─┬─ rate surge ∧ ips surge: ddos ─────────────────────┤
//!    └─ (global, (time, ip)) ── windowed_distinct ──────────── baseline_surges ─┴─ rate surge ∧ ¬ips: spike ────────────────────────┤
//!                                                                                                                                  ▼
//!                                                    merge_windows per (kind, subject) ── alert_id, severity ──▶ alerts
//! ```
//!
//! Rules (defaults in [`AlertSettings`]; `docs/output-contract.md` states them in full):
//! - `bot`, per subject `user:<id>` and `ip:<address>`, over sliding windows of
//!   `bot_window_buckets` buckets of `bot_bucket_ms` (5 minutes sliding by 1 minute):
//!   `user_rate` when a user has at least `bot_user_events` events in a window, `ip_rate`
//!   when an ip has at least `bot_ip_events`, `view_burst` when a user has at least
//!   `bot_view_burst_events` events in a window and all of them are views.
//! - Global, over tumbling windows of `global_window_ms`, each against its baseline: the
//!   lower median of the non-empty windows among the `baseline_windows` before it (none when
//!   fewer than `baseline_min_windows` are non-empty). The rate surges when the window's
//!   events reach `max(global_min_events, ceil(rate_multiplier x baseline))`; distinct ips
//!   surge likewise with `ip_multiplier` and `global_min_ips`. `ddos` (rule
//!   `distinct_ips`) when both surge: more traffic carried by many more sources.
//!   `traffic_spike` (rule `global_rate`) when the rate surges without the ips.
//! - Alerting windows of the same `(kind, subject)` that overlap or touch are merged into
//!   one alert spanning them; `observed`/`threshold`/`rule` are those of its strongest
//!   window (largest observed/threshold, ties by the earliest window, then rule order).
//!   `severity` is `critical` when observed >= `critical_ratio` x threshold, else `warning`.
//! - `alert_id` = FNV-1a 64 over `kind`, 0x1F, the subject text, 0x1F, `window_start` as
//!   8 big-endian bytes (two's complement ms), printed as 16 lower-case hex digits.
//!
//! Events without an ip count for users and the global rate, not for ip rules. Every row
//! is a function of the events read so far (streaming equals batch): a late event can
//! create, change or remove an alert, as long as it is less than `retention_ms` (one hour)
//! behind the watermark of the epochs before it. A window ending more than `retention_ms`
//! behind the watermark is final: later events no longer change it (they are counted in
//! `cap_alerts_late_updates_total`) and its state is dropped, so memory follows the
//! subjects active in the last hour, not the whole history. `retention_ms = 0` keeps every
//! window open (exact for any lateness, unbounded state). Not built here: `pipeline` alerts (they need the
//! engine's lag metrics and depend on wall clock) and notifications.

use std::cmp::Ordering;
use std::fmt;
use std::net::Ipv4Addr;

use super::keep_state;
use cap_connectors::clickstream::{Event, EventType};
use cap_engine::config::ConfigError;
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::sink::{TableRow, TableSchema};
use cap_engine::time::UtcTime;
use cap_operators::anomaly::{
    baseline_surges, merge_windows, windowed_distinct_stateful, windowed_tallies_stateful,
    BaselineRule, LateCallback, Multiplier, Retention, Stateful, Surge, Tally, TallyState, Window,
    Windows,
};
use compact_str::CompactString;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// The `[job.alerts]` settings; every key is optional (defaults below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Bucket of the per-subject (bot) windows, in ms (default 60 000: one minute).
    pub bot_bucket_ms: i64,
    /// Buckets per sliding bot window (default 5: five-minute windows sliding by a minute).
    pub bot_window_buckets: u32,
    /// Events of one user in a bot window that make it a bot (default 300: one event per
    /// second sustained for five minutes, beyond a person reading pages).
    pub bot_user_events: u64,
    /// Events of one ip in a bot window that make it a bot (default 300; raise it where
    /// many users share an address, e.g. behind a carrier NAT).
    pub bot_ip_events: u64,
    /// Events of one user in a bot window, all views, that make it a bot (default 100).
    pub bot_view_burst_events: u64,
    /// Length of the tumbling global windows, in ms (default 30 000).
    pub global_window_ms: i64,
    /// Previous global windows the baseline looks at (default 20: ten minutes).
    pub baseline_windows: u32,
    /// Fewest non-empty previous windows for a baseline to exist (default 10).
    pub baseline_min_windows: u32,
    /// A window's events surge at `rate_multiplier` x baseline (default 1.5).
    pub rate_multiplier: f64,
    /// ... and never below this many events (default 100).
    pub global_min_events: u64,
    /// A window's distinct ips surge at `ip_multiplier` x baseline (default 1.2).
    pub ip_multiplier: f64,
    /// ... and never below this many ips (default 50).
    pub global_min_ips: u64,
    /// `critical` when observed >= `critical_ratio` x threshold (default 2.0).
    pub critical_ratio: f64,
    /// How long windows stay open behind the watermark, in ms (default 3 600 000: one
    /// hour). Events later than that change no alert (they are counted in
    /// `cap_alerts_late_updates_total`), and the state of final windows is dropped, so
    /// memory follows the subjects active within it. 0 keeps every window open forever:
    /// exact for any lateness, with state that grows with the whole history.
    pub retention_ms: i64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            bot_bucket_ms: 60_000,
            bot_window_buckets: 5,
            bot_user_events: 300,
            bot_ip_events: 300,
            bot_view_burst_events: 100,
            global_window_ms: 30_000,
            baseline_windows: 20,
            baseline_min_windows: 10,
            rate_multiplier: 1.5,
            global_min_events: 100,
            ip_multiplier: 1.2,
            global_min_ips: 50,
            critical_ratio: 2.0,
            retention_ms: 3_600_000,
        }
    }
}

/// Validated alert rules, ready for [`alerts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRules {
    /// Sliding per-subject windows.
    pub bot_windows: Windows,
    /// Per-user event threshold.
    pub user_events: u64,
    /// Per-ip event threshold.
    pub ip_events: u64,
    /// View-only burst threshold.
    pub view_burst_events: u64,
    /// Tumbling global windows.
    pub global_windows: Windows,
    /// Global event-rate baseline.
    pub rate: BaselineRule,
    /// Global distinct-ip baseline.
    pub ips: BaselineRule,
    /// Severity boundary.
    pub critical: Multiplier,
    /// How long windows stay open behind the watermark (`None`: forever).
    pub retention: Option<Retention>,
}

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: format!("job.alerts.{key}"),
        reason,
    }
}

fn at_least_one(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be >= 1".into()));
    }
    Ok(v)
}

fn multiplier(key: &str, m: f64) -> Result<Multiplier, ConfigError> {
    if !(1.0..=1e6).contains(&m) {
        return Err(invalid(
            key,
            format!("must be a number in [1, 1000000], got {m}"),
        ));
    }
    Multiplier::new(m).ok_or_else(|| invalid(key, format!("must be a finite number, got {m}")))
}

const MAX_WINDOW_MS: i64 = 7 * 86_400_000;

impl AlertSettings {
    /// Checks every key; errors name it (`job.alerts.<key>`) and say why.
    pub fn rules(&self) -> Result<AlertRules, ConfigError> {
        if !(1000..=MAX_WINDOW_MS).contains(&self.bot_bucket_ms) {
            return Err(invalid(
                "bot_bucket_ms",
                format!(
                    "must be in 1000..={MAX_WINDOW_MS} ms, got {}",
                    self.bot_bucket_ms
                ),
            ));
        }
        if !(1..=1440).contains(&self.bot_window_buckets) {
            return Err(invalid(
                "bot_window_buckets",
                format!("must be in 1..=1440, got {}", self.bot_window_buckets),
            ));
        }
        if !(1000..=MAX_WINDOW_MS).contains(&self.global_window_ms) {
            return Err(invalid(
                "global_window_ms",
                format!(
                    "must be in 1000..={MAX_WINDOW_MS} ms, got {}",
                    self.global_window_ms
                ),
            ));
        }
        if !(1..=10_000).contains(&self.baseline_windows) {
            return Err(invalid(
                "baseline_windows",
                format!("must be in 1..=10000, got {}", self.baseline_windows),
            ));
        }
        if !(1..=self.baseline_windows).contains(&self.baseline_min_windows) {
            return Err(invalid(
                "baseline_min_windows",
                format!(
                    "must be in 1..=job.alerts.baseline_windows ({}), got {}",
                    self.baseline_windows, self.baseline_min_windows
                ),
            ));
        }
        if self.retention_ms != 0 && !(60_000..=30 * 86_400_000).contains(&self.retention_ms) {
            return Err(invalid(
                "retention_ms",
                format!(
                    "must be 0 (keep every window open) or in 60000..=2592000000 ms (one minute to 30 days), got {}",
                    self.retention_ms
                ),
            ));
        }
        let windows_err = |key: &str| invalid(key, "is not a valid window".into());
        Ok(AlertRules {
            bot_windows: Windows::new(self.bot_bucket_ms, self.bot_window_buckets)
                .ok_or_else(|| windows_err("bot_bucket_ms"))?,
            user_events: at_least_one("bot_user_events", self.bot_user_events)?,
            ip_events: at_least_one("bot_ip_events", self.bot_ip_events)?,
            view_burst_events: at_least_one("bot_view_burst_events", self.bot_view_burst_events)?,
            global_windows: Windows::tumbling(self.global_window_ms)
                .ok_or_else(|| windows_err("global_window_ms"))?,
            rate: BaselineRule {
                history: self.baseline_windows,
                min_history: self.baseline_min_windows,
                multiplier: multiplier("rate_multiplier", self.rate_multiplier)?,
                floor: at_least_one("global_min_events", self.global_min_events)?,
            },
            ips: BaselineRule {
                history: self.baseline_windows,
                min_history: self.baseline_min_windows,
                multiplier: multiplier("ip_multiplier", self.ip_multiplier)?,
                floor: at_least_one("global_min_ips", self.global_min_ips)?,
            },
            critical: multiplier("critical_ratio", self.critical_ratio)?,
            retention: (self.retention_ms > 0).then_some(Retention {
                ms: self.retention_ms,
            }),
        })
    }
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A user or ip behaving like a scraper.
    Bot,
    /// A traffic surge carried by a surge of distinct sources.
    Ddos,
    /// A traffic surge without a surge of sources.
    TrafficSpike,
    /// The pipeline itself (lag, failing checkpoints). Reserved: not produced yet (it needs
    /// the engine's lag metrics, depends on wall clock and is exempt from exactly-once).
    Pipeline,
}

impl AlertKind {
    /// The name in the table (`bot`, `ddos`, `traffic_spike`, `pipeline`).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Bot => "bot",
            AlertKind::Ddos => "ddos",
            AlertKind::TrafficSpike => "traffic_spike",
            AlertKind::Pipeline => "pipeline",
        }
    }
}

/// Which rule raised an alert (in tie-break order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Events of one user in a window.
    UserRate,
    /// Events of one ip in a window.
    IpRate,
    /// Events of one user in a window, all views.
    ViewBurst,
    /// Distinct ips in a global window against their baseline (with the rate surging too).
    DistinctIps,
    /// Events in a global window against their baseline.
    GlobalRate,
}

/// `warning` or `critical`, by observed / threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Observed below `critical_ratio` x threshold.
    Warning,
    /// Observed at least `critical_ratio` x threshold.
    Critical,
}

/// One row of `alerts`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertRow {
    /// FNV-1a 64 of (kind, subject, window_start), 16 hex digits (see the module docs).
    pub alert_id: String,
    /// What the alert is about.
    pub kind: AlertKind,
    /// `user:<id>`, `ip:<address>` or `global`.
    pub subject: String,
    /// Start of the (merged) alerting window.
    pub window_start: UtcTime,
    /// End of the (merged) alerting window (exclusive).
    pub window_end: UtcTime,
    /// The strongest window's count (events, or distinct ips for `ddos`).
    pub observed: u64,
    /// The threshold that window reached.
    pub threshold: u64,
    /// `warning` or `critical`.
    pub severity: Severity,
    /// The rule of the strongest window.
    pub rule: Rule,
}

/// Primary key of `alerts`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AlertKey {
    /// The alert id.
    pub alert_id: String,
}

impl TableRow for AlertRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["alert_id"],
            &[
                ("alert_id", Text),
                ("kind", Text),
                ("subject", Text),
                ("window_start", Timestamp),
                ("window_end", Timestamp),
                ("observed", UInt64),
                ("threshold", UInt64),
                ("severity", Text),
                ("rule", Text),
            ],
        ))
    }
    type Key = AlertKey;
    fn key(&self) -> AlertKey {
        AlertKey {
            alert_id: self.alert_id.clone(),
        }
    }
}

/// The 64-bit FNV-1a hash of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `alert_id` of (kind, subject, window_start): see the module docs.
pub fn alert_id(kind: AlertKind, subject: &str, window_start_ms: i64) -> String {
    let bytes = kind
        .name()
        .bytes()
        .chain([0x1f])
        .chain(subject.bytes())
        .chain([0x1f])
        .chain(window_start_ms.to_be_bytes());
    format!("{:016x}", fnv1a64(bytes))
}

/// Who an alert is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// The whole stream.
    Global,
    /// A user id.
    User(u64),
    /// A client ip.
    Ip(IpKey),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Global => f.write_str("global"),
            Subject::User(u) => write!(f, "user:{u}"),
            Subject::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// A client ip as the detectors key it: a dotted-quad IPv4 address as its 32 bits (cheap
/// to hash, compare and exchange), anything else as its text. Displayed as the text read:
/// std's parser accepts only the canonical dotted quad (no leading zeros), which is what
/// `Ipv4Addr` prints back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpKey {
    /// An IPv4 address.
    V4(u32),
    /// Any other ip text (IPv6, or not an address at all).
    Text(CompactString),
}

impl IpKey {
    /// The key of an event's ip text.
    pub fn of(text: &str) -> IpKey {
        match text.parse::<Ipv4Addr>() {
            Ok(a) => IpKey::V4(u32::from(a)),
            Err(_) => IpKey::Text(text.into()),
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpKey::V4(bits) => write!(f, "{}", Ipv4Addr::from(*bits)),
            IpKey::Text(t) => f.write_str(t),
        }
    }
}

/// One alerting window: which rule, what it saw, what it needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// Count in the window.
    pub observed: u64,
    /// Threshold it reached.
    pub threshold: u64,
}

/// Orders findings by observed / threshold (exact, by cross-multiplication).
pub fn stronger(a: &Finding, b: &Finding) -> Ordering {
    (u128::from(a.observed) * u128::from(b.threshold))
        .cmp(&(u128::from(b.observed) * u128::from(a.threshold)))
}

/// The per-event projection the detectors need.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Signal {
    time: i64,
    user: u64,
    ip: Option<IpKey>,
    view: bool,
}

type Candidate = ((AlertKind, Subject), (Window, Finding));

/// The `alerts` rows of `events` under `rules` (see the module docs). `late` hears, per
/// epoch and worker, of the updates that fell only in windows already final (with a
/// retention). Checkpointed state: the windowed operators' own state (the buckets and
/// values of the windows still open, and the watermark) and their outputs (the windows'
/// tallies and distinct counts, which the baselines and the merge build on).
pub fn alerts<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
    rules: &AlertRules,
    late: impl Fn(u64) + Clone + 'static,
) -> Result<VecCollection<'s, u64, AlertRow>, BuildError> {
    let r = *rules;
    let report = || -> Option<LateCallback> { Some(Box::new(late.clone())) };
    let signals = events.clone().map(|e| Signal {
        time: e.event_time,
        user: e.user_id,
        ip: e.ip.as_deref().map(IpKey::of),
        view: e.event_type == EventType::View,
    });

    // bot: fixed thresholds per user and per ip, and view-only bursts per user. Events
    // are marked when they are not views, so a burst is a window with no marked event.
    let subject_events = signals.clone().flat_map(|s| {
        let marked = !s.view;
        let ip = s.ip.map(|ip| (Subject::Ip(ip), (s.time, marked)));
        std::iter::once((Subject::User(s.user), (s.time, marked))).chain(ip)
    });
    let least = r.user_events.min(r.ip_events).min(r.view_burst_events);
    let restored = ck.restored("bot_windows_state")?;
    let tallies = windowed_tallies_stateful(
        subject_events,
        r.bot_windows,
        least,
        r.retention,
        report(),
        restored.clone(),
    );
    let tallies = tallies_checkpointed(ck, "bot_windows", tallies, restored)?;
    let bots = tallies.flat_map(move |((subject, w), t)| {
        let found = match subject {
            Subject::User(_) => [
                (t.events >= r.user_events).then_some((Rule::UserRate, r.user_events)),
                (t.events >= r.view_burst_events && t.marked == 0)
                    .then_some((Rule::ViewBurst, r.view_burst_events)),
            ],
            Subject::Ip(_) => [
                (t.events >= r.ip_events).then_some((Rule::IpRate, r.ip_events)),
                None,
            ],
            Subject::Global => [None, None],
        };
        found
            .into_iter()
            .flatten()
            .map(move |(rule, threshold)| bot(subject.clone(), w, rule, t.events, threshold))
    });

    // Global: the event rate and distinct ips, each against its baseline.
    let restored = ck.restored("global_windows_state")?;
    let global_counts = windowed_tallies_stateful(
        signals.clone().map(|s| ((), (s.time, false))),
        r.global_windows,
        1,
        r.retention,
        report(),
        restored.clone(),
    );
    let global_counts = tallies_checkpointed(ck, "global_windows", global_counts, restored)?
        .map(|(kw, t)| (kw, t.events));
    let rate_surges =
        baseline_surges(global_counts, r.global_windows, r.rate).map(|(((), w), s)| (w, s));
    let restored = ck.restored("ip_windows_state")?;
    let ip_counts = windowed_distinct_stateful(
        signals.flat_map(|s| s.ip.map(|ip| ((), (s.time, ip)))),
        r.global_windows,
        r.retention,
        report(),
        restored.clone(),
    );
    keep_state(ck, "ip_windows_state", ip_counts.state, restored)?;
    let ip_counts = ck.checkpointed("ip_windows", ip_counts.output)?;
    let ip_surges = baseline_surges(ip_counts, r.global_windows, r.ips).map(|(((), w), s)| (w, s));
    let surging_rate = rate_surges.clone().map(|(w, _)| w);
    let ddos = ip_surges
        .clone()
        .semijoin(surging_rate)
        .map(|(w, s)| global(AlertKind::Ddos, w, Rule::DistinctIps, s));
    let spikes = rate_surges
        .antijoin(ip_surges.map(|(w, _)| w))
        .map(|(w, s)| global(AlertKind::TrafficSpike, w, Rule::GlobalRate, s));

    let candidates = bots.concat(ddos).concat(spikes);
    Ok(
        merge_windows(candidates, stronger).map(move |((kind, subject), (w, f))| {
            let subject = subject.to_string();
            let severity = if u128::from(f.observed) * 1000
                >= u128::from(f.threshold) * u128::from(r.critical.milli())
            {
                Severity::Critical
            } else {
                Severity::Warning
            };
            AlertRow {
                alert_id: alert_id(kind, &subject, w.start),
                kind,
                subject,
                window_start: UtcTime(w.start),
                window_end: UtcTime(w.end),
                observed: f.observed,
                threshold: f.threshold,
                severity,
                rule: f.rule,
            }
        }),
    )
}

/// Each `(key, window)`'s tally.
type WindowTallies<'s, K> = VecCollection<'s, u64, ((K, Window), Tally)>;

/// Checkpoints a windowed tally's state under `<name>_state` (its changes and what it was
/// restored with) and its output under `name`, and returns the output to build on.
fn tallies_checkpointed<'s, K>(
    ck: &mut impl Checkpoints<'s>,
    name: &str,
    tallies: Stateful<'s, u64, ((K, Window), Tally), TallyState<K>>,
    restored: Option<VecCollection<'s, u64, TallyState<K>>>,
) -> Result<WindowTallies<'s, K>, BuildError>
where
    K: differential_dataflow::ExchangeData + std::hash::Hash,
{
    keep_state(ck, &format!("{name}_state"), tallies.state, restored)?;
    ck.checkpointed(name, tallies.output)
}

fn bot(subject: Subject, w: Window, rule: Rule, observed: u64, threshold: u64) -> Candidate {
    (
        (AlertKind::Bot, subject),
        (
            w,
            Finding {
                rule,
                observed,
                threshold,
            },
        ),
    )
}

fn global(kind: AlertKind, w: Window, rule: Rule, s: Surge) -> Candidate {
    (
        (kind, Subject::Global),
        (
            w,
            Finding {
                rule,
                observed: s.observed,
                threshold: s.threshold,
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let start = cap_engine::time::ms_from_civil(2019, 11, 1, 13, 5, 0, 0);
        let row = AlertRow {
            alert_id: alert_id(AlertKind::Bot, "user:512200000", start),
            kind: AlertKind::Bot,
            subject: "user:512200000".into(),
            window_start: UtcTime(start),
            window_end: UtcTime(start + 300_000),
            observed: 1519,
            threshold: 300,
            severity: Severity::Critical,
            rule: Rule::UserRate,
        };
        assert_eq!(
            bincode::deserialize::<AlertRow>(&bincode::serialize(&row)?)?,
            row
        );
        let json = serde_json::to_value(&row)?;
        assert_eq!(
            json,
            serde_json::json!({
                "alert_id": row.alert_id,
                "kind": "bot",
                "subject": "user:512200000",
                "window_start": "2019-11-01T13:05:00Z",
                "window_end": "2019-11-01T13:10:00Z",
                "observed": 1519,
                "threshold": 300,
                "severity": "critical",
                "rule": "user_rate",
            })
        );
        assert_eq!(serde_json::from_value::<AlertRow>(json)?, row);
        Ok(())
    }

    #[test]
    fn alert_ids_are_fnv1a_of_the_canonical_bytes() {
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
        let id = alert_id(AlertKind::Ddos, "global", 1_572_600_000_000);
        assert_eq!(id.len(), 16);
        assert_ne!(id, alert_id(AlertKind::Ddos, "global", 1_572_600_030_000));
        assert_ne!(
            id,
            alert_id(AlertKind::TrafficSpike, "global", 1_572_600_000_000)
        );
    }

    #[test]
    fn ip_keys_print_the_text_they_were_read_from() {
        for text in [
            "192.0.2.1",
            "0.0.0.0",
            "255.255.255.255",
            "2001:db8::1",
            "10.01.2.3",
            "not an ip",
            "",
        ] {
            assert_eq!(IpKey::of(text).to_string(), text, "{text}");
        }
        assert!(matches!(IpKey::of("192.0.2.1"), IpKey::V4(0xC000_0201)));
        assert!(matches!(IpKey::of("10.01.2.3"), IpKey::Text(_)));
        assert_eq!(
            Subject::Ip(IpKey::of("192.0.2.1")).to_string(),
            "ip:192.0.2.1"
        );
    }

    #[test]
    fn invalid_settings_name_the_key() {
        let bad = |f: fn(&mut AlertSettings)| {
            let mut s = AlertSettings::default();
            f(&mut s);
            match s.rules() {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("expected an invalid key, got {other:?}"),
            }
        };
        assert!(AlertSettings::default().rules().is_ok());
        assert_eq!(
            bad(|s| s.baseline_min_windows = 30),
            "job.alerts.baseline_min_windows"
        );
        assert_eq!(
            bad(|s| s.rate_multiplier = 0.5),
            "job.alerts.rate_multiplier"
        );
        assert_eq!(
            bad(|s| s.ip_multiplier = f64::NAN),
            "job.alerts.ip_multiplier"
        );
        assert_eq!(bad(|s| s.bot_user_events = 0), "job.alerts.bot_user_events");
        assert_eq!(
            bad(|s| s.global_window_ms = 10),
            "job.alerts.global_window_ms"
        );
        assert_eq!(
            bad(|s| s.bot_window_buckets = 0),
            "job.alerts.bot_window_buckets"
        );
        assert_eq!(bad(|s| s.retention_ms = 5), "job.alerts.retention_ms");
        assert_eq!(bad(|s| s.retention_ms = -1), "job.alerts.retention_ms");
        let forever = AlertSettings {
            retention_ms: 0,
            ..AlertSettings::default()
        };
        assert!(matches!(forever.rules().map(|r| r.retention), Ok(None)));
    }
}
