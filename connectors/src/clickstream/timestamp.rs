//! Event-time text parsers and the accepted-years check, shared by the CSV and JSON decoders.
//!
//! Accepted forms (all return UTC epoch milliseconds):
//!
//! - [`parse_rees46`]: `YYYY-MM-DD HH:MM:SS`, optionally followed by a fraction `.f` (1 to 9
//!   digits) and optionally by ` UTC`. Examples: `2019-11-01 00:00:00 UTC`,
//!   `2019-11-01 00:00:00.123 UTC`, `2019-11-01 00:00:00`.
//! - [`parse_rfc3339`]: `YYYY-MM-DDTHH:MM:SS`, optional fraction (1 to 9 digits), then `Z` or
//!   a numeric offset `+HH:MM` / `-HH:MM`, which is applied. `t`/`z` may be lower case and,
//!   as RFC 3339 section 5.6 permits, the `T` may be a space.
//! - [`parse_event_time`]: either of the above.
//!
//! Rejected: anything else, including missing leading zeros, surrounding whitespace, a
//! month outside 1-12, a day that the month does not have (leap years are honoured:
//! `2019-02-29` is rejected, `2020-02-29` accepted), hour > 23, minute > 59, second > 59
//! (leap seconds are rejected), offsets beyond `±23:59`, and trailing text.
//!
//! Non-guarantees: fractions are truncated, not rounded, to whole milliseconds; only
//! four-digit years are parsed. Whether the instant is *plausible* is a separate check,
//! [`check_year`], which every decoder applies after parsing.
//!
//! The parsers work on bytes, allocate nothing, and never panic on any input.

use cap_engine::time::{days_from_civil, format_rees46, ms_from_civil, MS_PER_DAY};

use super::{DecodeError, DecodeOptions};

/// Parses the REES46 CSV form `YYYY-MM-DD HH:MM:SS[.fff][ UTC]` into UTC epoch milliseconds.
///
/// Returns `None` for anything that is not exactly that form or names an impossible date
/// or time. See the module documentation for the precise grammar.
pub fn parse_rees46(b: &[u8]) -> Option<i64> {
    let (civil, sep) = date_time(b)?;
    if sep != b' ' {
        return None;
    }
    let (millis, rest) = fraction(b.get(19..)?)?;
    if !(rest.is_empty() || rest == b" UTC") {
        return None;
    }
    Some(civil.to_ms(millis))
}

/// Parses RFC 3339 (`2019-11-01T00:00:00Z`, `2019-11-01T00:00:00.5+02:00`) into UTC epoch
/// milliseconds, applying the offset.
///
/// Returns `None` for anything that is not RFC 3339 or names an impossible date or time.
/// See the module documentation for the precise grammar.
pub fn parse_rfc3339(b: &[u8]) -> Option<i64> {
    let (civil, sep) = date_time(b)?;
    if !matches!(sep, b'T' | b't' | b' ') {
        return None;
    }
    let (millis, rest) = fraction(b.get(19..)?)?;
    let offset_minutes: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let h = digits2(rest, 1)?;
            let m = digits2(rest, 4)?;
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = i64::from(h * 60 + m);
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    // Local time = UTC + offset, so UTC = local - offset.
    Some(civil.to_ms(millis) - offset_minutes * 60_000)
}

/// Parses an event-time text in either accepted form ([`parse_rees46`] or [`parse_rfc3339`]).
pub fn parse_event_time(b: &[u8]) -> Option<i64> {
    parse_rees46(b).or_else(|| parse_rfc3339(b))
}

/// Checks that an event time falls in the years `options` accepts (UTC, both ends
/// inclusive) and returns it unchanged, or a [`DecodeError`] naming `event_time`, the
/// instant and the accepted range.
pub fn check_year(ms: i64, options: &DecodeOptions) -> Result<i64, DecodeError> {
    YearBounds::new(options).check(ms)
}

/// The accepted event-time range of a [`DecodeOptions`], precomputed as milliseconds so a
/// decoder checks each record with two comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct YearBounds {
    min_year: i32,
    max_year: i32,
    /// First accepted millisecond (inclusive).
    lo: i64,
    /// First rejected millisecond after the range (exclusive).
    hi: i64,
}

impl YearBounds {
    /// Years beyond this magnitude are clamped, so calendar arithmetic cannot overflow even
    /// with an absurd configuration.
    const YEAR_LIMIT: i32 = 1_000_000;

    pub(crate) fn new(options: &DecodeOptions) -> YearBounds {
        let min = options.min_year.clamp(-Self::YEAR_LIMIT, Self::YEAR_LIMIT);
        let max = options.max_year.clamp(-Self::YEAR_LIMIT, Self::YEAR_LIMIT);
        YearBounds {
            min_year: options.min_year,
            max_year: options.max_year,
            lo: i64::from(days_from_civil(min, 1, 1)) * MS_PER_DAY,
            hi: i64::from(days_from_civil(max + 1, 1, 1)) * MS_PER_DAY,
        }
    }

    #[inline]
    pub(crate) fn check(&self, ms: i64) -> Result<i64, DecodeError> {
        if ms >= self.lo && ms < self.hi {
            Ok(ms)
        } else {
            Err(self.error(ms))
        }
    }

    #[cold]
    fn error(&self, ms: i64) -> DecodeError {
        // The calendar helpers work on i32 days; only format instants they represent exactly
        // (about +-10,000 years), and print the raw number otherwise.
        const PRINTABLE: u64 = 10_000 * 366 * MS_PER_DAY as u64;
        let when = if ms.unsigned_abs() < PRINTABLE {
            format_rees46(ms)
        } else {
            format!("{ms} ms since the epoch")
        };
        DecodeError::new(format!(
            "field `event_time`: {when} is outside the accepted years {}-{}",
            self.min_year, self.max_year
        ))
    }
}

/// A validated civil date and time (UTC or local, before any offset).
struct Civil {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    #[inline]
    fn to_ms(&self, millis: u32) -> i64 {
        ms_from_civil(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            millis,
        )
    }
}

/// Two ASCII digits at `b[i..i + 2]`.
#[inline]
fn digits2(b: &[u8], i: usize) -> Option<u32> {
    let d0 = b.get(i)?.wrapping_sub(b'0');
    let d1 = b.get(i + 1)?.wrapping_sub(b'0');
    if d0 < 10 && d1 < 10 {
        Some(u32::from(d0) * 10 + u32::from(d1))
    } else {
        None
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// `YYYY-MM-DD?HH:MM:SS` at the start of `b` (19 bytes), validated; returns the separator
/// byte at position 10 for the caller to judge.
#[inline]
fn date_time(b: &[u8]) -> Option<(Civil, u8)> {
    let head = b.get(..19)?;
    if head[4] != b'-' || head[7] != b'-' || head[13] != b':' || head[16] != b':' {
        return None;
    }
    let year = digits2(head, 0)? * 100 + digits2(head, 2)?;
    let year = year as i32; // at most 9999
    let month = digits2(head, 5)?;
    let day = digits2(head, 8)?;
    let hour = digits2(head, 11)?;
    let minute = digits2(head, 14)?;
    let second = digits2(head, 17)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some((
        Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        },
        head[10],
    ))
}

/// An optional fraction `.d{1,9}` at the start of `b`: the whole milliseconds it denotes
/// (truncated) and the rest of `b`.
#[inline]
fn fraction(b: &[u8]) -> Option<(u32, &[u8])> {
    let Some(after_dot) = b.strip_prefix(b".") else {
        return Some((0, b));
    };
    let n = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 9 {
        return None;
    }
    let mut millis = 0u32;
    for k in 0..3 {
        let d = after_dot
            .get(k)
            .filter(|_| k < n)
            .map_or(0, |c| u32::from(c - b'0'));
        millis = millis * 10 + d;
    }
    Some((millis, &after_dot[n..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE: `unwrap_used` outside tests)
mod tests {
    use super::*;

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, f: u32) -> i64 {
        ms_from_civil(y, mo, d, h, mi, s, f)
    }

    #[test]
    fn rees46_forms() {
        let t = ms(2019, 11, 1, 0, 0, 0, 0);
        assert_eq!(parse_rees46(b"2019-11-01 00:00:00 UTC"), Some(t));
        assert_eq!(parse_rees46(b"2019-11-01 00:00:00"), Some(t));
        assert_eq!(parse_rees46(b"2019-11-01 00:00:00.123 UTC"), Some(t + 123));
        assert_eq!(parse_rees46(b"2019-11-01 00:00:00.5"), Some(t + 500));
        assert_eq!(
            parse_rees46(b"2019-11-01 00:00:00.123456789 UTC"),
            Some(t + 123)
        );
        assert_eq!(
            parse_rees46(b"2019-11-30 23:59:59 UTC"),
            Some(ms(2019, 11, 30, 23, 59, 59, 0))
        );
        assert_eq!(
            parse_rees46(b"2020-02-29 12:00:00 UTC"),
            Some(ms(2020, 2, 29, 12, 0, 0, 0))
        );
        assert_eq!(
            parse_rees46(b"2000-02-29 12:00:00 UTC"),
            Some(ms(2000, 2, 29, 12, 0, 0, 0))
        );
    }

    #[test]
    fn rees46_rejects_malformed_and_impossible_times() {
        for bad in [
            &b""[..],
            b"2019-11-01",
            b"2019-11-01 00:00:00 UTC ",
            b" 2019-11-01 00:00:00 UTC",
            b"2019-11-01 00:00:00 utc",
            b"2019-11-01 00:00:00 GMT",
            b"2019-11-01T00:00:00 UTC",
            b"2019-11-01 00:00:00Z",
            b"2019-13-01 00:00:00 UTC",
            b"2019-00-01 00:00:00 UTC",
            b"2019-02-30 00:00:00 UTC",
            b"2019-02-29 00:00:00 UTC",
            b"1900-02-29 00:00:00 UTC",
            b"2019-04-31 00:00:00 UTC",
            b"2019-11-00 00:00:00 UTC",
            b"2019-11-01 24:00:00 UTC",
            b"2019-11-01 00:60:00 UTC",
            b"2019-11-01 00:00:60 UTC",
            b"2019-11-01 00:00:00. UTC",
            b"2019-11-01 00:00:00.1234567890 UTC",
            b"2019-1-01 00:00:00 UTC",
            b"2019/11/01 00:00:00 UTC",
            b"20x9-11-01 00:00:00 UTC",
            b"-019-11-01 00:00:00 UTC",
            b"2019-11-01 0:00:00 UTC",
            b"garbage garbage garbage",
            b"\xff\xfe\xfd",
        ] {
            assert_eq!(parse_rees46(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rfc3339_forms_and_offsets() {
        let t = ms(2019, 11, 1, 0, 0, 0, 0);
        assert_eq!(parse_rfc3339(b"2019-11-01T00:00:00Z"), Some(t));
        assert_eq!(parse_rfc3339(b"2019-11-01t00:00:00z"), Some(t));
        assert_eq!(parse_rfc3339(b"2019-11-01 00:00:00Z"), Some(t));
        assert_eq!(
            parse_rfc3339(b"2019-11-01T00:00:00.5+02:00"),
            Some(t + 500 - 2 * 3_600_000)
        );
        assert_eq!(
            parse_rfc3339(b"2019-11-01T00:00:00-05:30"),
            Some(t + 5 * 3_600_000 + 30 * 60_000)
        );
        assert_eq!(parse_rfc3339(b"2019-11-01T00:00:00.007+00:00"), Some(t + 7));
        // An offset can move the instant across a year boundary.
        assert_eq!(
            parse_rfc3339(b"2000-01-01T01:00:00+02:00"),
            Some(ms(1999, 12, 31, 23, 0, 0, 0))
        );
        for bad in [
            &b"2019-11-01T00:00:00"[..],
            b"2019-11-01T00:00:00 UTC",
            b"2019-11-01T00:00:00+2:00",
            b"2019-11-01T00:00:00+0200",
            b"2019-11-01T00:00:00+24:00",
            b"2019-11-01T00:00:00+01:60",
            b"2019-11-01T00:00:00Zjunk",
            b"2019-11-01X00:00:00Z",
            b"2019-02-30T00:00:00Z",
            b"2019-11-01T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_event_time(b"2019-11-01T00:00:00Z"), Some(t));
        assert_eq!(parse_event_time(b"2019-11-01 00:00:00 UTC"), Some(t));
        assert_eq!(parse_event_time(b"yesterday"), None);
    }

    #[test]
    fn year_check_names_the_field_and_the_range() {
        let options = DecodeOptions::default();
        let ok = ms(2019, 11, 1, 0, 0, 0, 0);
        assert_eq!(check_year(ok, &options), Ok(ok));
        assert_eq!(
            check_year(ms(2000, 1, 1, 0, 0, 0, 0), &options),
            Ok(ms(2000, 1, 1, 0, 0, 0, 0))
        );
        let last = ms(2099, 12, 31, 23, 59, 59, 999);
        assert_eq!(check_year(last, &options), Ok(last));
        let err = check_year(ms(1999, 12, 31, 23, 59, 59, 0), &options).unwrap_err();
        assert_eq!(
            err.message,
            "field `event_time`: 1999-12-31 23:59:59 UTC is outside the accepted years 2000-2099"
        );
        assert!(check_year(last + 1, &options)
            .unwrap_err()
            .message
            .contains("2100-01-01 00:00:00 UTC"));
        let huge = check_year(i64::MAX, &options).unwrap_err();
        assert!(
            huge.message
                .contains("9223372036854775807 ms since the epoch"),
            "{huge}"
        );
        assert!(check_year(i64::MIN, &options).is_err());
        // Absurd configuration is clamped, not a panic.
        let wide = DecodeOptions {
            min_year: i32::MIN,
            max_year: i32::MAX,
        };
        assert_eq!(check_year(0, &wide), Ok(0));
        let narrow = DecodeOptions {
            min_year: 2019,
            max_year: 2019,
        };
        assert!(check_year(ms(2020, 1, 1, 0, 0, 0, 0), &narrow).is_err());
    }
}
