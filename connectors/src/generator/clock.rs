//! Simulated time: the daily and weekly traffic cycle, and how long a given number of
//! background events lasts.
//!
//! Background traffic across all partitions runs at `events_per_day * c(t)` events per
//! day, where `c` is the product of a piecewise-linear hourly profile and a per-weekday
//! factor, each normalised to mean 1 — so a full day carries `events_per_day` events on
//! average, and a full week exactly seven times that.

use cap_engine::time::{weekday_of, MS_PER_DAY, MS_PER_HOUR};

use super::profile;

/// Milliseconds in a week.
const MS_PER_WEEK: i64 = 7 * MS_PER_DAY;

/// The traffic cycle `c(t)` (mean 1 over a week).
#[derive(Clone, Debug)]
pub(crate) struct Cycle {
    hourly: [f64; 25],
    weekly: [f64; 7],
}

impl Cycle {
    pub(crate) fn new() -> Cycle {
        let hm = profile::HOURLY.iter().sum::<f64>() / 24.0;
        let wm = profile::WEEKLY.iter().sum::<f64>() / 7.0;
        let mut hourly = [0.0; 25];
        for (h, v) in hourly.iter_mut().enumerate() {
            *v = profile::HOURLY[h % 24] / hm;
        }
        let mut weekly = [0.0; 7];
        for (d, v) in weekly.iter_mut().enumerate() {
            *v = profile::WEEKLY[d] / wm;
        }
        Cycle { hourly, weekly }
    }

    /// The relative traffic at instant `ms` (UTC milliseconds).
    #[inline]
    pub(crate) fn at(&self, ms: i64) -> f64 {
        let day = ms.div_euclid(MS_PER_DAY);
        let in_day = ms - day * MS_PER_DAY;
        let h = (in_day / MS_PER_HOUR) as usize;
        let frac = (in_day - h as i64 * MS_PER_HOUR) as f64 * (1.0 / MS_PER_HOUR as f64);
        let d = self.hourly[h] + (self.hourly[h + 1] - self.hourly[h]) * frac;
        d * self.weekly[weekday_of(day as i32) as usize]
    }

    /// How long after `start_ms` the background traffic of `events_per_day` has produced
    /// `events` events on average (milliseconds; a minute-step integral of the cycle).
    pub(crate) fn span_ms(&self, start_ms: i64, events_per_day: u64, events: f64) -> i64 {
        // The cycle-weighted time to cover, in milliseconds.
        let target = events * MS_PER_DAY as f64 / events_per_day as f64;
        let weeks = (target / MS_PER_WEEK as f64).floor();
        let mut left = target - weeks * MS_PER_WEEK as f64;
        let mut t = (weeks as i64).saturating_mul(MS_PER_WEEK);
        const STEP: i64 = 60_000;
        loop {
            let c = self.at(start_ms.saturating_add(t) + STEP / 2);
            let area = c * STEP as f64;
            if area >= left {
                return t + (left / c) as i64;
            }
            left -= area;
            t += STEP;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_engine::time::ms_from_civil;

    #[test]
    fn the_cycle_averages_to_one_and_peaks_in_the_evening() {
        let c = Cycle::new();
        let monday = ms_from_civil(2019, 11, 4, 0, 0, 0, 0);
        let n = 7 * 24 * 60;
        let mean: f64 = (0..n)
            .map(|m| c.at(monday + m * 60_000 + 30_000))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 1.0).abs() < 1e-3, "{mean}");
        assert!(c.at(monday + 17 * MS_PER_HOUR) > 3.0 * c.at(monday + 3 * MS_PER_HOUR));
    }

    #[test]
    fn a_day_of_events_lasts_about_a_day() {
        let c = Cycle::new();
        let start = ms_from_civil(2019, 11, 1, 0, 0, 0, 0);
        let week = c.span_ms(start, 1000, 7000.0);
        assert!((week - MS_PER_WEEK).abs() < 60_000, "{week}");
        let thirty = c.span_ms(start, 2_250_000, 67_500_000.0);
        assert!(
            (thirty - 30 * MS_PER_DAY).abs() < 6 * MS_PER_HOUR,
            "{}",
            thirty as f64 / MS_PER_HOUR as f64
        );
        // Starting at midnight (low traffic), half a day's events take more than half a day.
        assert!(c.span_ms(start, 1000, 500.0) > MS_PER_DAY / 2);
    }
}
