//! `alerts` as a batch computation, written from the rules in `docs/output-contract.md`
//! with plain maps and no engine, operator or connector code.
//!
//! Bot rules sum per-bucket counts over each sliding window; global rules look each window
//! up against the windows before it; alerting windows are then merged per (kind, subject).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::BatchEvent;

/// The `[job.alerts]` settings, with the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertParams {
    /// `bot_bucket_ms`.
    pub bot_bucket_ms: i64,
    /// `bot_window_buckets`.
    pub bot_window_buckets: i64,
    /// `bot_user_events`.
    pub bot_user_events: u64,
    /// `bot_ip_events`.
    pub bot_ip_events: u64,
    /// `bot_view_burst_events`.
    pub bot_view_burst_events: u64,
    /// `global_window_ms`.
    pub global_window_ms: i64,
    /// `baseline_windows`.
    pub baseline_windows: i64,
    /// `baseline_min_windows`.
    pub baseline_min_windows: usize,
    /// `rate_multiplier`.
    pub rate_multiplier: f64,
    /// `global_min_events`.
    pub global_min_events: u64,
    /// `ip_multiplier`.
    pub ip_multiplier: f64,
    /// `global_min_ips`.
    pub global_min_ips: u64,
    /// `critical_ratio`.
    pub critical_ratio: f64,
}

impl Default for AlertParams {
    fn default() -> Self {
        AlertParams {
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
        }
    }
}

/// One alerting window before merging.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    start: i64,
    end: i64,
    /// Rule rank in tie-break order, and its name.
    rule: (u8, &'static str),
    observed: u64,
    threshold: u64,
}

const USER_RATE: (u8, &str) = (0, "user_rate");
const IP_RATE: (u8, &str) = (1, "ip_rate");
const VIEW_BURST: (u8, &str) = (2, "view_burst");
const DISTINCT_IPS: (u8, &str) = (3, "distinct_ips");
const GLOBAL_RATE: (u8, &str) = (4, "global_rate");

/// `ceil(x * m)` with `m` taken at 0.001 resolution, as the contract states.
fn times(x: u64, m: f64) -> u64 {
    let milli = (m * 1000.0).round() as u128;
    (u128::from(x) * milli).div_ceil(1000) as u64
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn rfc3339(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    if ms.rem_euclid(1000) == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

/// The `alerts` table: rows as JSON values, by `alert_id`.
pub fn batch_alerts(events: &[BatchEvent], p: &AlertParams) -> BTreeMap<String, Value> {
    let mut hits: BTreeMap<(&'static str, String), Vec<Hit>> = BTreeMap::new();

    // bot: per subject and bucket, all events; per user and bucket, events other than views.
    let bb = p.bot_bucket_ms;
    let mut per_bucket: HashMap<String, BTreeMap<i64, u64>> = HashMap::new();
    let mut non_views: HashMap<String, BTreeMap<i64, u64>> = HashMap::new();
    for e in events {
        let b = e.time_ms.div_euclid(bb);
        let user = format!("user:{}", e.user_id);
        *per_bucket
            .entry(user.clone())
            .or_default()
            .entry(b)
            .or_default() += 1;
        if e.event_type != "view" {
            *non_views.entry(user).or_default().entry(b).or_default() += 1;
        }
        if let Some(ip) = &e.ip {
            *per_bucket
                .entry(format!("ip:{ip}"))
                .or_default()
                .entry(b)
                .or_default() += 1;
        }
    }
    let w = p.bot_window_buckets;
    let sum = |m: Option<&BTreeMap<i64, u64>>, last: i64| -> u64 {
        m.map(|m| m.range(last - w + 1..=last).map(|(_, n)| n).sum())
            .unwrap_or(0)
    };
    for (subject, buckets) in &per_bucket {
        let lasts: BTreeSet<i64> = buckets.keys().flat_map(|b| *b..b + w).collect();
        for last in lasts {
            let n = sum(Some(buckets), last);
            let (start, end) = ((last - w + 1) * bb, (last + 1) * bb);
            let mut hit = |rule, threshold| {
                hits.entry(("bot", subject.clone())).or_default().push(Hit {
                    start,
                    end,
                    rule,
                    observed: n,
                    threshold,
                })
            };
            if subject.starts_with("user:") {
                if n >= p.bot_user_events {
                    hit(USER_RATE, p.bot_user_events);
                }
                if n >= p.bot_view_burst_events && sum(non_views.get(subject), last) == 0 {
                    hit(VIEW_BURST, p.bot_view_burst_events);
                }
            } else if n >= p.bot_ip_events {
                hit(IP_RATE, p.bot_ip_events);
            }
        }
    }

    // Global: per tumbling window, events and distinct ips, each against the lower median
    // of the non-empty windows among the previous `baseline_windows`.
    let gw = p.global_window_ms;
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    let mut ips: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    for e in events {
        let g = e.time_ms.div_euclid(gw);
        *counts.entry(g).or_default() += 1;
        if let Some(ip) = &e.ip {
            ips.entry(g).or_default().insert(ip);
        }
    }
    let ip_counts: BTreeMap<i64, u64> = ips.iter().map(|(g, s)| (*g, s.len() as u64)).collect();
    let surge = |series: &BTreeMap<i64, u64>, g: i64, m: f64, floor: u64| -> Option<(u64, u64)> {
        let n = *series.get(&g)?;
        let mut prev: Vec<u64> = series
            .range(g - p.baseline_windows..g)
            .map(|(_, n)| *n)
            .collect();
        if prev.len() < p.baseline_min_windows {
            return None;
        }
        prev.sort();
        let median = prev[(prev.len() - 1) / 2];
        let threshold = times(median, m).max(floor);
        (n >= threshold).then_some((n, threshold))
    };
    for &g in counts.keys() {
        let Some((n, threshold)) = surge(&counts, g, p.rate_multiplier, p.global_min_events) else {
            continue;
        };
        let (kind, hit) = match surge(&ip_counts, g, p.ip_multiplier, p.global_min_ips) {
            Some((ips, ip_threshold)) => (
                "ddos",
                Hit {
                    start: g * gw,
                    end: (g + 1) * gw,
                    rule: DISTINCT_IPS,
                    observed: ips,
                    threshold: ip_threshold,
                },
            ),
            None => (
                "traffic_spike",
                Hit {
                    start: g * gw,
                    end: (g + 1) * gw,
                    rule: GLOBAL_RATE,
                    observed: n,
                    threshold,
                },
            ),
        };
        hits.entry((kind, "global".to_owned()))
            .or_default()
            .push(hit);
    }

    // Merge overlapping or touching windows; keep the strongest (ratio, then earliest).
    let mut rows = BTreeMap::new();
    for ((kind, subject), mut list) in hits {
        list.sort();
        let mut groups: Vec<Vec<Hit>> = Vec::new();
        for h in list {
            match groups.last_mut() {
                Some(g) if h.start <= g.iter().map(|x| x.end).max().unwrap_or(i64::MIN) => {
                    g.push(h)
                }
                _ => groups.push(vec![h]),
            }
        }
        for g in groups {
            let start = g[0].start;
            let end = g.iter().map(|x| x.end).max().unwrap_or(start);
            let mut best = &g[0];
            for h in &g[1..] {
                if u128::from(h.observed) * u128::from(best.threshold)
                    > u128::from(best.observed) * u128::from(h.threshold)
                {
                    best = h;
                }
            }
            let critical = u128::from(best.observed) * 1000
                >= u128::from(best.threshold) * (p.critical_ratio * 1000.0).round() as u128;
            let mut bytes = Vec::new();
            bytes.extend_from_slice(kind.as_bytes());
            bytes.push(0x1f);
            bytes.extend_from_slice(subject.as_bytes());
            bytes.push(0x1f);
            bytes.extend_from_slice(&start.to_be_bytes());
            let id = format!("{:016x}", fnv1a(&bytes));
            rows.insert(
                id.clone(),
                json!({
                    "alert_id": id,
                    "kind": kind,
                    "subject": subject,
                    "window_start": rfc3339(start),
                    "window_end": rfc3339(end),
                    "observed": best.observed,
                    "threshold": best.threshold,
                    "severity": if critical { "critical" } else { "warning" },
                    "rule": best.rule.1,
                }),
            );
        }
    }
    rows
}
