//! The clickstream event model of the output contract (REES46 schema plus extensions),
//! and its codecs.
//!
//! An [`Event`] is a decoded, validated record. Money is integer cents, time is UTC
//! milliseconds, text fields are [`CompactString`]s (inline up to 24 bytes, so the common
//! `category_code`, `brand`, country and channel values never allocate), and the session is
//! a [`SessionId`]: a canonical lower-case UUID packs into a `u128`, anything else is kept
//! verbatim, so distinctness is exactly that of the original text.
//!
//! Decoding never panics on user data: a record that cannot be decoded becomes a
//! [`DecodeError`] that names the field and the reason, and the caller turns it into a
//! dead letter.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

pub mod csv;
pub mod encode;
pub mod json;
pub mod timestamp;

/// The kind of a clickstream event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum EventType {
    /// A product page view.
    View = 0,
    /// An add to cart.
    Cart = 1,
    /// A removal from the cart.
    RemoveFromCart = 2,
    /// A purchase.
    Purchase = 3,
}

impl EventType {
    /// The schema's text for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::Cart => "cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
        }
    }

    /// Parses the schema's text (exact, lower case).
    pub fn parse(text: &[u8]) -> Option<EventType> {
        match text {
            b"view" => Some(EventType::View),
            b"cart" => Some(EventType::Cart),
            b"remove_from_cart" => Some(EventType::RemoveFromCart),
            b"purchase" => Some(EventType::Purchase),
            _ => None,
        }
    }
}

/// The channel extension field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// Web clickstream.
    Web,
    /// Mobile app.
    App,
    /// Social media.
    Social,
}

impl Channel {
    /// The schema's text for this channel.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::Social => "social",
        }
    }

    /// Parses `web`, `app` or `social`.
    pub fn parse(text: &[u8]) -> Option<Channel> {
        match text {
            b"web" => Some(Channel::Web),
            b"app" => Some(Channel::App),
            b"social" => Some(Channel::Social),
            _ => None,
        }
    }
}

/// A session identifier: a canonical lower-case UUID as 128 bits, or any other text verbatim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SessionId {
    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lower-case hex.
    Uuid(u128),
    /// Any other non-empty text.
    Text(CompactString),
}

impl SessionId {
    /// Parses session text; the canonical lower-case UUID form packs into 128 bits.
    pub fn parse(text: &str) -> SessionId {
        match parse_uuid_lower(text.as_bytes()) {
            Some(v) => SessionId::Uuid(v),
            None => SessionId::Text(CompactString::from(text)),
        }
    }

    /// A 64-bit digest for hashing and partitioning (not for identity).
    pub fn fold64(&self) -> u64 {
        match self {
            SessionId::Uuid(v) => (*v as u64) ^ ((*v >> 64) as u64),
            SessionId::Text(t) => {
                // FNV-1a: stable across runs and platforms.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in t.as_bytes() {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
                h
            }
        }
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionId::Uuid(v) => {
                let x = *v;
                write!(
                    f,
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    (x >> 96) as u32,
                    (x >> 80) as u16,
                    (x >> 64) as u16,
                    (x >> 48) as u16,
                    (x & 0xffff_ffff_ffff) as u64
                )
            }
            SessionId::Text(t) => f.write_str(t),
        }
    }
}

fn parse_uuid_lower(b: &[u8]) -> Option<u128> {
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// One decoded clickstream event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event time, UTC milliseconds since 1970-01-01.
    pub event_time: i64,
    /// What happened.
    pub event_type: EventType,
    /// Product.
    pub product_id: u64,
    /// Category id (REES46 ids exceed 2^53).
    pub category_id: u64,
    /// Dotted category taxonomy, e.g. `electronics.smartphone`.
    pub category_code: Option<CompactString>,
    /// Brand, lower case.
    pub brand: Option<CompactString>,
    /// Price in integer cents (may be zero or negative; revenue counts only > 0).
    pub price_cents: i64,
    /// Customer.
    pub user_id: u64,
    /// Session, when present.
    pub user_session: Option<SessionId>,
    /// Client IP (extension).
    pub ip: Option<CompactString>,
    /// Client user agent (extension).
    pub user_agent: Option<CompactString>,
    /// Channel (extension).
    pub channel: Option<Channel>,
    /// Country (extension).
    pub country: Option<CompactString>,
}

/// Why a record could not be decoded. The message names the field and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// Human-readable reason: what was expected, what was found, which field.
    pub message: String,
}

impl DecodeError {
    /// A decode error with the given reason.
    pub fn new(message: impl Into<String>) -> DecodeError {
        DecodeError {
            message: message.into(),
        }
    }
}

/// Limits a decoder enforces beyond syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeOptions {
    /// Earliest accepted event_time year (inclusive).
    pub min_year: i32,
    /// Latest accepted event_time year (inclusive).
    pub max_year: i32,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            min_year: 2000,
            max_year: 2099,
        }
    }
}

/// Parses a decimal price text into integer cents, rounding half away from zero at the
/// third decimal. Accepts an optional sign, digits, an optional fraction and an optional
/// exponent (`1.5e2`); rejects NaN, infinities and anything else.
pub fn parse_price_cents(text: &[u8]) -> Result<i64, DecodeError> {
    let bad = || {
        DecodeError::new(format!(
            "price `{}` is not a finite decimal number",
            String::from_utf8_lossy(text)
        ))
    };
    let (neg, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    // Fast path: plain decimal with at most 18 significant digits and no exponent.
    let mut int_part: i64 = 0;
    let mut i = 0;
    let mut any_digit = false;
    while i < digits.len() && digits[i].is_ascii_digit() {
        int_part = int_part
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digits[i] - b'0')))
            .ok_or_else(bad)?;
        i += 1;
        any_digit = true;
    }
    let mut frac: [u8; 3] = [0; 3];
    if i < digits.len() && digits[i] == b'.' {
        i += 1;
        let mut k = 0;
        while i < digits.len() && digits[i].is_ascii_digit() {
            if k < 3 {
                frac[k] = digits[i] - b'0';
            }
            k += 1;
            i += 1;
            any_digit = true;
        }
    }
    if !any_digit {
        return Err(bad());
    }
    if i != digits.len() {
        // Exponent or junk: fall back to a checked float parse, then round.
        let s = std::str::from_utf8(text).map_err(|_| bad())?;
        let v: f64 = s.parse().map_err(|_| bad())?;
        if !v.is_finite() || v.abs() > 9.0e15 {
            return Err(bad());
        }
        let cents = (v * 100.0).round();
        return Ok(cents as i64);
    }
    let mut cents =
        int_part.checked_mul(100).ok_or_else(bad)? + i64::from(frac[0]) * 10 + i64::from(frac[1]);
    // Round half away from zero on the magnitude: the third decimal alone decides
    // (>= 5 rounds the magnitude up, whatever follows it).
    if frac[2] >= 5 {
        cents += 1;
    }
    Ok(if neg { -cents } else { cents })
}

/// Formats cents as a decimal with two places (`-0.05`, `1682.00`).
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_half_away_from_zero() {
        assert_eq!(parse_price_cents(b"165.00"), Ok(16500));
        assert_eq!(parse_price_cents(b"0.285"), Ok(29));
        assert_eq!(parse_price_cents(b"-0.285"), Ok(-29));
        assert_eq!(parse_price_cents(b"0.284999"), Ok(28));
        assert_eq!(parse_price_cents(b"12"), Ok(1200));
        assert_eq!(parse_price_cents(b"1.5e2"), Ok(15000));
        assert!(parse_price_cents(b"abc").is_err());
        assert!(parse_price_cents(b"NaN").is_err());
        assert!(parse_price_cents(b"inf").is_err());
        assert!(parse_price_cents(b"").is_err());
        assert!(parse_price_cents(b".").is_err());
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(format_cents(168200), "1682.00");
    }

    #[test]
    fn sessions_pack_canonical_uuids_only() {
        let u = "26dd6e6e-4dac-4778-8d2c-92e149dab885";
        let s = SessionId::parse(u);
        assert!(matches!(s, SessionId::Uuid(_)));
        assert_eq!(s.to_string(), u);
        let upper = SessionId::parse("26DD6E6E-4DAC-4778-8D2C-92E149DAB885");
        assert!(matches!(upper, SessionId::Text(_)));
        assert_ne!(s, upper);
    }
}
