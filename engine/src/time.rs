//! Event-time arithmetic in UTC milliseconds.
//!
//! CAP carries event time as `i64` milliseconds since 1970-01-01T00:00:00Z (see the output
//! contract: "times are compared in milliseconds"). Buckets are whole UTC days, hours and
//! weekdays computed with integer arithmetic only, so they are exact and allocation-free.
//! Calendar conversion uses Howard Hinnant's `days_from_civil` / `civil_from_days`
//! algorithms, valid for the proleptic Gregorian calendar far beyond the years CAP accepts.

/// Milliseconds in one UTC day.
pub const MS_PER_DAY: i64 = 86_400_000;
/// Milliseconds in one hour.
pub const MS_PER_HOUR: i64 = 3_600_000;

/// A UTC day as days since 1970-01-01.
pub type Day = i32;

/// The UTC day an event-time instant falls in.
#[inline]
pub fn day_of(ms: i64) -> Day {
    ms.div_euclid(MS_PER_DAY) as Day
}

/// The start of the UTC hour an instant falls in, in milliseconds.
#[inline]
pub fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(MS_PER_HOUR)
}

/// The ISO weekday of a day: 0 = Monday .. 6 = Sunday.
#[inline]
pub fn weekday_of(day: Day) -> u8 {
    // 1970-01-01 was a Thursday (3 when Monday is 0).
    (i64::from(day) + 3).rem_euclid(7) as u8
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12, day 1..=31).
#[inline]
pub fn days_from_civil(year: i32, month: u32, day: u32) -> Day {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as i64;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era as i64 * 146_097 + doe - 719_468) as Day
}

/// The (year, month, day) of a count of days since 1970-01-01.
#[inline]
pub fn civil_from_days(days: Day) -> (i32, u32, u32) {
    let z = days as i64 + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// Milliseconds since the epoch of a UTC civil date and time.
#[inline]
pub fn ms_from_civil(year: i32, month: u32, day: u32, h: u32, mi: u32, s: u32, ms: u32) -> i64 {
    i64::from(days_from_civil(year, month, day)) * MS_PER_DAY
        + i64::from(h) * MS_PER_HOUR
        + i64::from(mi) * 60_000
        + i64::from(s) * 1000
        + i64::from(ms)
}

/// The year an instant falls in (UTC).
#[inline]
pub fn year_of(ms: i64) -> i32 {
    civil_from_days(day_of(ms)).0
}

/// `YYYY-MM-DD` of a day.
pub fn format_day(day: Day) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `(y, m, d, h, mi, s, ms)` of an instant.
fn civil_parts(ms: i64) -> (i32, u32, u32, i64, i64, i64, i64) {
    let (y, mo, d) = civil_from_days(day_of(ms));
    let rem = ms.rem_euclid(MS_PER_DAY);
    (
        y,
        mo,
        d,
        rem / MS_PER_HOUR,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` (the REES46 CSV form) of an instant; milliseconds are printed
/// as a fraction only when non-zero.
pub fn format_rees46(ms: i64) -> String {
    let (y, mo, d, h, mi, s, frac) = civil_parts(ms);
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{frac:03} UTC")
    }
}

/// RFC 3339 (`2019-11-01T13:00:00Z`, with `.mmm` when non-zero) of an instant.
pub fn format_rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s, frac) = civil_parts(ms);
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

/// An instant (UTC milliseconds): RFC 3339 text in human-readable formats (JSON output:
/// `2019-11-01T13:05:09Z`, `.mmm` only when milliseconds are non-zero), the milliseconds
/// in binary ones (bincode, between workers). Orders chronologically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(pub i64);

impl serde::Serialize for UtcTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format_rfc3339(self.0))
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for UtcTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UtcTime, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            parse_rfc3339(&text).map(UtcTime).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a UTC time like 2019-11-01T13:00:00Z"
                ))
            })
        } else {
            i64::deserialize(d).map(UtcTime)
        }
    }
}

/// Parses what [`format_rfc3339`] prints: `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = b.get(r)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let ms = match b.len() {
        20 if b[19] == b'Z' => 0,
        24 if b[19] == b'.' && b[23] == b'Z' => num(20..23)?,
        _ => return None,
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)? as i32, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > 31 || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    Some(ms_from_civil(y, mo, d, h, mi, s, ms))
}

/// A UTC day: `YYYY-MM-DD` in human-readable formats (JSON output), the day number in
/// binary formats (bincode, between workers). Orders chronologically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDay(pub Day);

impl serde::Serialize for UtcDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format_day(self.0))
        } else {
            s.serialize_i32(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for UtcDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UtcDay, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            parse_day(&text).map(UtcDay).ok_or_else(|| {
                serde::de::Error::custom(format!("`{text}` is not a YYYY-MM-DD date"))
            })
        } else {
            i32::deserialize(d).map(UtcDay)
        }
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_day(text: &str) -> Option<Day> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        std::str::from_utf8(&b[r]).ok()?.parse().ok()
    };
    let (y, m, d) = (num(0..4)? as i32, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

impl std::fmt::Display for UtcDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_day(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_what_it_prints() -> Result<(), serde_json::Error> {
        for ms in [0, 1_572_600_123_000, 1_572_600_123_456] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
            let json = serde_json::to_string(&UtcTime(ms))?;
            assert_eq!(serde_json::from_str::<UtcTime>(&json)?, UtcTime(ms));
        }
        assert_eq!(parse_rfc3339("2019-11-01 13:00:00Z"), None);
        assert_eq!(parse_rfc3339("2019-11-01T24:00:00Z"), None);
        Ok(())
    }

    #[test]
    fn civil_round_trip_over_two_centuries() {
        for day in days_from_civil(1900, 1, 1)..days_from_civil(2101, 1, 1) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(format_day(days_from_civil(2019, 11, 1)), "2019-11-01");
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        // 2019-11-01 was a Friday.
        assert_eq!(weekday_of(days_from_civil(2019, 11, 1)), 4);
        assert_eq!(weekday_of(days_from_civil(2019, 11, 4)), 0);
        let ms = ms_from_civil(2019, 11, 1, 13, 5, 9, 0);
        assert_eq!(format_rees46(ms), "2019-11-01 13:05:09 UTC");
        assert_eq!(format_rfc3339(ms + 7), "2019-11-01T13:05:09.007Z");
        assert_eq!(hour_of(ms), ms_from_civil(2019, 11, 1, 13, 0, 0, 0));
        assert_eq!(day_of(-1), -1);
        assert_eq!(year_of(ms), 2019);
        assert_eq!(parse_day("2019-11-01"), Some(days_from_civil(2019, 11, 1)));
        assert_eq!(parse_day("2019-02-30"), None);
    }

    #[test]
    fn utc_day_is_text_in_json_and_a_number_on_the_wire() -> anyhow::Result<()> {
        let d = UtcDay(days_from_civil(2019, 11, 1));
        assert_eq!(serde_json::to_string(&d)?, "\"2019-11-01\"");
        assert_eq!(serde_json::from_str::<UtcDay>("\"2019-11-01\"")?, d);
        let wire = bincode::serialize(&d)?;
        assert_eq!(wire.len(), 4);
        assert_eq!(bincode::deserialize::<UtcDay>(&wire)?, d);
        Ok(())
    }
}
