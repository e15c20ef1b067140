//! JSON decoding of clickstream events: one object per Kafka message or per line.
//!
//! # What is accepted
//! One JSON object (surrounding whitespace, e.g. a trailing newline, is fine) whose keys are
//! the CSV column names (see [`super::csv`]), in any order. Unknown keys are ignored, whatever
//! their values. Per key:
//!
//! | key | accepted values |
//! |---|---|
//! | `event_time` | a string, `2019-11-01 00:00:00 UTC` (fraction and ` UTC` optional) or RFC 3339 (offsets applied); or an integer number of epoch milliseconds |
//! | `event_type` | `"view"`, `"cart"`, `"remove_from_cart"`, `"purchase"` |
//! | `product_id`, `category_id`, `user_id` | an unsigned integer number (parsed as `u64`, never through `f64`, so REES46 category ids above 2^53 are exact), or a string of decimal digits |
//! | `price` | a number, or a string holding a finite decimal (see [`parse_price_cents`]) |
//! | `category_code`, `brand`, `user_session`, `ip`, `user_agent`, `country` | a string; `null`, `""` and a missing key are null |
//! | `channel` | `"web"`, `"app"`, `"social"`; `null`, `""` and missing are null |
//!
//! `event_time`, `event_type`, the three ids and `price` are required: missing or `null` is
//! an error.
//!
//! # What is rejected
//! Invalid JSON, anything but an object at the top level, trailing non-whitespace, a key
//! that appears twice, a missing required key, a value of the wrong JSON type, and every
//! value the table does not allow: unknown event types, negative, fractional or overflowing
//! ids, non-integer epoch milliseconds, non-finite or unparseable prices, timestamps that
//! are not real instants or fall outside the accepted years ([`DecodeOptions`]). The
//! [`DecodeError`] names the field and shows what was found, with serde_json's line and
//! column when the problem was seen while parsing, e.g.
//! ``field `user_id`: `12a` is not an unsigned integer at line 1 column 187`` or
//! ``missing field `user_id` ``. Decoding never panics on any input bytes.
//!
//! # Prices given as JSON numbers
//! Money is integer cents, rounded half away from zero from the *text* of the price.
//! Without serde_json's `arbitrary_precision` the text of a fractional number is not
//! available, so the decoder formats the parsed `f64` with `{}` (the shortest text that
//! round-trips) and parses that text: `0.285` becomes `"0.285"` and then 29 cents, as the
//! string `"0.285"` would. This reproduces the original text exactly whenever it has at
//! most 15 significant digits (and serde_json parses such numbers correctly rounded), which
//! covers every realistic price; a price with more digits is rounded as its nearest `f64`
//! is. Integer prices are converted exactly.
//!
//! # Cost
//! The object is deserialized with a hand-written serde visitor straight into the event's
//! fields: no `serde_json::Value`, no per-field `String`. serde_json hands over strings
//! without escapes in place; they are copied once, into [`CompactString`]s, which store up
//! to 24 bytes inline. Numbers are never boxed or formatted, except a fractional price
//! (formatted on the stack, see above).

use std::cell::Cell;
use std::fmt::{self, Write as _};

use compact_str::CompactString;
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::csv::{
    channel_reason, event_type_reason, parse_unsigned, price_reason, session, time_reason, Field,
};
use super::timestamp::{parse_event_time, YearBounds};
use super::{parse_price_cents, Channel, DecodeError, DecodeOptions, Event, EventType, SessionId};

/// Decodes one JSON object into an [`Event`].
///
/// ```
/// use cap_connectors::clickstream::json::JsonDecoder;
/// use cap_connectors::clickstream::{DecodeOptions, EventType};
///
/// let decoder = JsonDecoder::new(DecodeOptions::default());
/// let event = decoder.decode(br#"{"event_time":"2019-11-01T00:00:00Z","event_type":"cart",
///     "product_id":1003461,"category_id":"2053013555631882655","price":489.07,
///     "user_id":520088904,"brand":null}"#)?;
/// assert_eq!(event.event_type, EventType::Cart);
/// assert_eq!(event.category_id, 2053013555631882655);
/// assert_eq!((event.price_cents, event.brand, event.user_session), (48907, None, None));
/// # Ok::<(), cap_connectors::clickstream::DecodeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct JsonDecoder {
    options: DecodeOptions,
    bounds: YearBounds,
}

impl JsonDecoder {
    /// A decoder enforcing `options`.
    pub fn new(options: DecodeOptions) -> JsonDecoder {
        JsonDecoder {
            bounds: YearBounds::new(&options),
            options,
        }
    }

    /// The options this decoder enforces.
    pub fn options(&self) -> &DecodeOptions {
        &self.options
    }

    /// Decodes one JSON object (one Kafka message value or one line).
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        // The field whose value is being parsed, so that serde_json's own errors (a bad
        // escape, invalid UTF-8, EOF inside the value) can name it too.
        let current = Cell::new(None);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = (&mut de)
            .deserialize_map(RecordVisitor { current: &current })
            .and_then(|p| de.end().map(|()| p));
        match parsed {
            Ok(partial) => partial.finish(&self.bounds),
            Err(e) => Err(match current.get() {
                Some(field) => field.error(e),
                None => DecodeError::new(e.to_string()),
            }),
        }
    }
}

/// The fields seen so far; the outer `Option` of a nullable field records presence, so a
/// duplicate `null` is caught too.
#[derive(Default)]
struct Partial {
    event_time: Option<i64>,
    event_type: Option<EventType>,
    product_id: Option<u64>,
    category_id: Option<u64>,
    category_code: Option<Option<CompactString>>,
    brand: Option<Option<CompactString>>,
    price_cents: Option<i64>,
    user_id: Option<u64>,
    user_session: Option<Option<SessionId>>,
    ip: Option<Option<CompactString>>,
    user_agent: Option<Option<CompactString>>,
    channel: Option<Option<Channel>>,
    country: Option<Option<CompactString>>,
}

impl Partial {
    fn finish(self, bounds: &YearBounds) -> Result<Event, DecodeError> {
        fn need<T>(value: Option<T>, field: Field) -> Result<T, DecodeError> {
            value.ok_or_else(|| DecodeError::new(format!("missing field `{}`", field.name())))
        }
        Ok(Event {
            event_time: bounds.check(need(self.event_time, Field::EventTime)?)?,
            event_type: need(self.event_type, Field::EventType)?,
            product_id: need(self.product_id, Field::ProductId)?,
            category_id: need(self.category_id, Field::CategoryId)?,
            category_code: self.category_code.flatten(),
            brand: self.brand.flatten(),
            price_cents: need(self.price_cents, Field::Price)?,
            user_id: need(self.user_id, Field::UserId)?,
            user_session: self.user_session.flatten(),
            ip: self.ip.flatten(),
            user_agent: self.user_agent.flatten(),
            channel: self.channel.flatten(),
            country: self.country.flatten(),
        })
    }
}

/// Stores a field's value, refusing a second occurrence of the key.
#[inline]
fn put<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::custom("the key appears twice in the object"));
    }
    *slot = Some(value);
    Ok(())
}

struct RecordVisitor<'c> {
    current: &'c Cell<Option<Field>>,
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = Partial;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of clickstream event fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Partial, A::Error> {
        let mut p = Partial::default();
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(field) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            self.current.set(Some(field));
            match field {
                Field::EventTime => put(&mut p.event_time, map.next_value_seed(Any(TimeVisitor))?)?,
                Field::EventType => put(
                    &mut p.event_type,
                    map.next_value_seed(Any(EventTypeVisitor))?,
                )?,
                Field::ProductId => put(&mut p.product_id, map.next_value_seed(Any(IdVisitor))?)?,
                Field::CategoryId => put(&mut p.category_id, map.next_value_seed(Any(IdVisitor))?)?,
                Field::CategoryCode => put(
                    &mut p.category_code,
                    map.next_value_seed(Any(Nullable::TEXT))?,
                )?,
                Field::Brand => put(&mut p.brand, map.next_value_seed(Any(Nullable::TEXT))?)?,
                Field::Price => put(&mut p.price_cents, map.next_value_seed(Any(PriceVisitor))?)?,
                Field::UserId => put(&mut p.user_id, map.next_value_seed(Any(IdVisitor))?)?,
                Field::UserSession => put(
                    &mut p.user_session,
                    map.next_value_seed(Any(Nullable::SESSION))?,
                )?,
                Field::Ip => put(&mut p.ip, map.next_value_seed(Any(Nullable::TEXT))?)?,
                Field::UserAgent => {
                    put(&mut p.user_agent, map.next_value_seed(Any(Nullable::TEXT))?)?
                }
                Field::Channel => {
                    put(&mut p.channel, map.next_value_seed(Any(Nullable::CHANNEL))?)?
                }
                Field::Country => put(&mut p.country, map.next_value_seed(Any(Nullable::TEXT))?)?,
            }
            self.current.set(None);
        }
        Ok(p)
    }
}

/// An object key: the field it names, or `None` for a key to ignore.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<Field>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<Field>, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<Field>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<Field>, E> {
        Ok(Field::from_name(v.as_bytes()))
    }
}

/// Deserializes a value of any JSON type with the wrapped visitor, which decides what it
/// accepts (its default methods reject the rest as "invalid type: ..., expected ...").
struct Any<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Any<V> {
    type Value = V::Value;

    #[inline]
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

struct TimeVisitor;

impl<'de> Visitor<'de> for TimeVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a timestamp string or integer epoch milliseconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        parse_event_time(v.as_bytes()).ok_or_else(|| E::custom(time_reason(v.as_bytes())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("`{v}` epoch milliseconds is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        Err(E::custom(format!(
            "`{v:?}` is not an integer number of epoch milliseconds"
        )))
    }
}

struct EventTypeVisitor;

impl<'de> Visitor<'de> for EventTypeVisitor {
    type Value = EventType;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event type string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EventType, E> {
        EventType::parse(v.as_bytes()).ok_or_else(|| E::custom(event_type_reason(v.as_bytes())))
    }
}

struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned integer (a JSON number or a string of decimal digits)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("`{v}` is not an unsigned integer")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        // serde_json hands over integers beyond u64 as f64 too.
        // `{:?}` keeps the fraction visible (`1003461.0`), so the message shows why.
        if v >= 18_446_744_073_709_551_616.0 {
            Err(E::custom(format!(
                "`{v:?}` is out of range for an unsigned 64-bit integer"
            )))
        } else {
            Err(E::custom(format!(
                "`{v:?}` is not an unsigned integer (write ids without a fraction or exponent)"
            )))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_unsigned(v.as_bytes()).map_err(E::custom)
    }
}

struct PriceVisitor;

impl PriceVisitor {
    fn out_of_range<E: de::Error>(v: impl fmt::Display) -> E {
        E::custom(format!("`{v}` is out of range for a price in cents"))
    }
}

impl<'de> Visitor<'de> for PriceVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a string holding a decimal number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v)
            .ok()
            .and_then(|c| c.checked_mul(100))
            .ok_or_else(|| Self::out_of_range(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        v.checked_mul(100).ok_or_else(|| Self::out_of_range(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // Round from the shortest round-trip text, as if the price had arrived as a string
        // (see the module documentation). Beyond 1e17 the cents overflow anyway; below
        // 0.001 the text rounds to 0 cents; in between `{}` needs at most ~40 bytes.
        if !v.is_finite() || v.abs() >= 1e17 {
            return Err(Self::out_of_range(v));
        }
        if v.abs() < 0.001 {
            return Ok(0);
        }
        let mut text = StackText::default();
        write!(text, "{v}").map_err(|_| Self::out_of_range(v))?;
        parse_price_cents(text.as_bytes()).map_err(|_| E::custom(price_reason(text.as_bytes())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        parse_price_cents(v.as_bytes()).map_err(|_| E::custom(price_reason(v.as_bytes())))
    }
}

/// A small fixed buffer to format a number into without allocating.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A nullable string field: `null` and `""` are `None`, other strings go through `parse`.
struct Nullable<T> {
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
}

impl Nullable<CompactString> {
    const TEXT: Nullable<CompactString> = Nullable {
        parse: |s| Ok(CompactString::from(s)),
        expecting: "a string or null",
    };
}

impl Nullable<SessionId> {
    const SESSION: Nullable<SessionId> = Nullable {
        parse: |s| Ok(session(s)),
        expecting: "a session string or null",
    };
}

impl Nullable<Channel> {
    const CHANNEL: Nullable<Channel> = Nullable {
        parse: |s| Channel::parse(s.as_bytes()).ok_or_else(|| channel_reason(s.as_bytes())),
        expecting: "\"web\", \"app\", \"social\" or null",
    };
}

impl<'de, T> Visitor<'de> for Nullable<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<T>, E> {
        if v.is_empty() {
            Ok(None)
        } else {
            (self.parse)(v).map(Some).map_err(E::custom)
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE: `unwrap_used` outside tests)
mod tests {
    use super::super::csv::tests::{mutate, random_event, sample_events, XorShift};
    use super::super::encode::write_json;
    use super::*;
    use cap_engine::time::ms_from_civil;

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(DecodeOptions::default())
    }

    const SAMPLE: &str = r#"{"event_time":"2019-11-01 00:00:00 UTC","event_type":"view","product_id":1003461,"category_id":2053013555631882655,"category_code":"electronics.smartphone","brand":"xiaomi","price":489.07,"user_id":520088904,"user_session":"4d3b30da-a5e4-49df-b1a8-ba5943f1dd33"}"#;

    fn sample_event() -> Event {
        crate::clickstream::csv::tests::base(ms_from_civil(2019, 11, 1, 0, 0, 0, 0))
    }

    /// SAMPLE with `key` replaced by the raw JSON `value` (or removed when `None`), keeping
    /// the other fields.
    fn with(key: &str, value: Option<&str>) -> String {
        let mut obj: Vec<(String, String)> = Vec::new();
        let inner = &SAMPLE[1..SAMPLE.len() - 1];
        // SAMPLE has no commas inside values.
        for pair in inner.split(',') {
            let (k, v) = pair.split_once(':').unwrap();
            obj.push((k.trim_matches('"').to_string(), v.to_string()));
        }
        match obj.iter().position(|(k, _)| k == key) {
            Some(i) => match value {
                Some(v) => obj[i].1 = v.to_string(),
                None => {
                    obj.remove(i);
                }
            },
            None => obj.push((key.to_string(), value.unwrap_or("null").to_string())),
        }
        let body: Vec<String> = obj.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    #[test]
    fn decodes_the_rees46_shape() {
        assert_eq!(decoder().decode(SAMPLE.as_bytes()), Ok(sample_event()));
        assert_eq!(
            decoder().decode(format!("  {SAMPLE}\r\n").as_bytes()),
            Ok(sample_event())
        );
        assert_eq!(decoder().options(), &DecodeOptions::default());
    }

    #[test]
    fn round_trips_through_the_encoder() {
        let d = decoder();
        let mut buf = Vec::new();
        for e in sample_events() {
            buf.clear();
            write_json(&e, &mut buf);
            assert_eq!(d.decode(&buf), Ok(e), "{}", String::from_utf8_lossy(&buf));
        }
        let mut rng = XorShift(11);
        for _ in 0..2000 {
            let e = random_event(&mut rng, true);
            buf.clear();
            write_json(&e, &mut buf);
            assert_eq!(d.decode(&buf), Ok(e));
        }
    }

    #[test]
    fn accepts_the_documented_value_forms() {
        let d = decoder();
        let t = ms_from_civil(2019, 11, 1, 0, 0, 0, 0);
        let ok = |json: String| {
            d.decode(json.as_bytes())
                .unwrap_or_else(|e| panic!("{json}: {e}"))
        };
        assert_eq!(
            ok(with("event_time", Some("\"2019-11-01T01:00:00+01:00\""))).event_time,
            t
        );
        assert_eq!(
            ok(with("event_time", Some("\"2019-11-01 00:00:00.250\""))).event_time,
            t + 250
        );
        assert_eq!(ok(with("event_time", Some(&t.to_string()))).event_time, t);
        assert_eq!(
            ok(with("category_id", Some("\"2053013555631882655\""))).category_id,
            2053013555631882655
        );
        assert_eq!(
            ok(with("category_id", Some("18446744073709551615"))).category_id,
            u64::MAX
        );
        assert_eq!(ok(with("user_id", Some("\"007\""))).user_id, 7);
        assert_eq!(ok(with("product_id", Some("0"))).product_id, 0);
        for (price, cents) in [
            ("0.285", 29),
            ("-0.285", -29),
            ("0.284999", 28),
            ("\"0.285\"", 29),
            ("12", 1200),
            ("-3", -300),
            ("0", 0),
            ("-0.0", 0),
            ("0.0004", 0),
            ("1.5e2", 15000),
            ("\"1.5e2\"", 15000),
            ("489.07", 48907),
            ("1682.00", 168200),
            ("0.005", 1),
            ("123456789012.34", 12345678901234),
        ] {
            assert_eq!(
                ok(with("price", Some(price))).price_cents,
                cents,
                "price {price}"
            );
        }
        // Nullable fields: null, "" and missing are all null.
        for v in [Some("null"), Some("\"\""), None] {
            let e = ok(with("brand", v));
            assert_eq!(e.brand, None);
            let e = ok(with("user_session", v));
            assert_eq!(e.user_session, None);
            let e = ok(with("channel", v));
            assert_eq!(e.channel, None);
            let e = ok(with("category_code", v));
            assert_eq!(e.category_code, None);
        }
        assert_eq!(
            ok(with("channel", Some("\"social\""))).channel,
            Some(Channel::Social)
        );
        assert_eq!(
            ok(with("user_session", Some("\"abc\""))).user_session,
            Some(SessionId::parse("abc"))
        );
        // Escapes in values and keys.
        assert_eq!(
            ok(with("brand", Some(r#""l'or\u00e9al \"x\"""#)))
                .brand
                .as_deref(),
            Some("l'oréal \"x\"")
        );
        let escaped_key = SAMPLE.replace("\"brand\"", "\"\\u0062rand\"");
        assert_eq!(ok(escaped_key).brand.as_deref(), Some("xiaomi"));
        // Unknown keys are ignored, whatever their values.
        let extra = ok(with(
            "extra",
            Some(r#"{"nested":[1,2,{"a":null}],"x":"y"}"#),
        ));
        assert_eq!(extra, sample_event());
        // Key order does not matter.
        let reordered = r#"{"user_id":520088904,"price":"489.07","user_session":"4d3b30da-a5e4-49df-b1a8-ba5943f1dd33","brand":"xiaomi","category_code":"electronics.smartphone","category_id":"2053013555631882655","product_id":"1003461","event_type":"view","event_time":"2019-11-01T00:00:00z"}"#;
        assert_eq!(ok(reordered.to_string()), sample_event());
    }

    /// Decodes `json` expecting an error whose message contains every needle.
    fn fails(json: &str, needles: &[&str]) {
        let err = decoder().decode(json.as_bytes()).expect_err(json);
        for n in needles {
            assert!(
                err.message.contains(n),
                "{json}\n  error: {err}\n  missing: {n}"
            );
        }
    }

    #[test]
    fn malformed_records_name_the_offending_field() {
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            (
                "event_time",
                Some("\"1999-12-31 23:59:59 UTC\""),
                &["1999-12-31 23:59:59 UTC is outside the accepted years 2000-2099"],
            ),
            (
                "event_time",
                Some("\"2100-01-01 00:00:00 UTC\""),
                &["outside the accepted years"],
            ),
            (
                "event_time",
                Some("\"2019-13-01 00:00:00 UTC\""),
                &["`2019-13-01 00:00:00 UTC` is not a timestamp"],
            ),
            (
                "event_time",
                Some("\"2019-02-30T00:00:00Z\""),
                &["is not a timestamp"],
            ),
            (
                "event_time",
                Some("\"garbage\""),
                &["`garbage` is not a timestamp", "line 1 column"],
            ),
            (
                "event_time",
                Some("1572566400"),
                &["1970-01-19", "outside the accepted years"],
            ),
            ("event_time", Some("-5"), &["outside the accepted years"]),
            (
                "event_time",
                Some("18446744073709551615"),
                &["out of range"],
            ),
            (
                "event_time",
                Some("1572566400000.5"),
                &["`1572566400000.5` is not an integer number of epoch milliseconds"],
            ),
            (
                "event_time",
                Some("true"),
                &["invalid type: boolean `true`"],
            ),
            ("event_time", Some("null"), &["invalid type: null"]),
            ("event_time", None, &["missing field `event_time`"]),
            (
                "event_type",
                Some("\"click\""),
                &["unknown event type `click`"],
            ),
            (
                "event_type",
                Some("5"),
                &["invalid type: integer `5`, expected an event type string"],
            ),
            ("event_type", None, &["missing field `event_type`"]),
            (
                "product_id",
                Some("\"12a\""),
                &["`12a` is not an unsigned integer"],
            ),
            (
                "product_id",
                Some("-1"),
                &["`-1` is not an unsigned integer"],
            ),
            (
                "product_id",
                Some("\"-1\""),
                &["`-1` is not an unsigned integer"],
            ),
            (
                "product_id",
                Some("1.5"),
                &["`1.5` is not an unsigned integer"],
            ),
            (
                "product_id",
                Some("1e3"),
                &["`1000.0` is not an unsigned integer"],
            ),
            (
                "product_id",
                Some("1003461.0"),
                &["`1003461.0` is not an unsigned integer (write ids without a fraction"],
            ),
            (
                "product_id",
                Some("true"),
                &["invalid type: boolean `true`, expected an unsigned integer"],
            ),
            ("product_id", Some("[1]"), &["invalid type: sequence"]),
            (
                "product_id",
                Some("\"\""),
                &["`` is not an unsigned integer"],
            ),
            ("product_id", Some("null"), &["invalid type: null"]),
            (
                "category_id",
                Some("18446744073709551616"),
                &["out of range for an unsigned 64-bit integer"],
            ),
            (
                "category_id",
                Some("\"18446744073709551616\""),
                &["out of range for an unsigned 64-bit integer"],
            ),
            (
                "user_id",
                Some("\"12a\""),
                &["`12a` is not an unsigned integer"],
            ),
            ("user_id", None, &["missing field `user_id`"]),
            (
                "price",
                Some("\"NaN\""),
                &["`NaN` is not a finite decimal number"],
            ),
            (
                "price",
                Some("\"inf\""),
                &["`inf` is not a finite decimal number"],
            ),
            ("price", Some("NaN"), &["expected value"]),
            ("price", Some("1e400"), &["number out of range"]),
            ("price", Some("1e300"), &["out of range for a price"]),
            (
                "price",
                Some("\"abc\""),
                &["`abc` is not a finite decimal number"],
            ),
            ("price", Some("\"\""), &["is not a finite decimal number"]),
            ("price", Some("true"), &["invalid type: boolean"]),
            (
                "price",
                Some("92233720368547759"),
                &["out of range for a price"],
            ),
            ("price", Some("null"), &["invalid type: null"]),
            ("price", None, &["missing field `price`"]),
            (
                "brand",
                Some("5"),
                &["invalid type: integer `5`, expected a string or null"],
            ),
            ("category_code", Some("{}"), &["invalid type: map"]),
            ("user_session", Some("false"), &["invalid type: boolean"]),
            ("channel", Some("\"tv\""), &["unknown channel `tv`"]),
            ("channel", Some("1"), &["invalid type: integer"]),
            ("country", Some("[]"), &["invalid type: sequence"]),
            ("ip", Some("\"\\x\""), &["invalid escape"]),
            ("user_agent", Some("\"\\ud800\""), &["hex escape"]),
        ];
        for (field, value, needles) in cases {
            let json = with(field, *value);
            let mut all = vec![format!("`{field}`")];
            all.extend(needles.iter().map(|n| n.to_string()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            fails(&json, &all);
            if value.is_some() {
                // Errors seen while parsing start with the field, e.g. "field `price`: ...".
                let err = decoder().decode(json.as_bytes()).unwrap_err();
                assert!(
                    err.message.starts_with(&format!("field `{field}`: ")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let dup = SAMPLE.replace("\"price\":489.07", "\"price\":489.07,\"price\":1");
        fails(&dup, &["field `price`: the key appears twice"]);
        let dup_null =
            with("brand", Some("null")).replace("\"brand\":null", "\"brand\":null,\"brand\":\"x\"");
        fails(&dup_null, &["field `brand`: the key appears twice"]);
        // Unknown keys may repeat: they are ignored.
        assert!(decoder()
            .decode(
                with("x", Some("1"))
                    .replace("\"x\":1", "\"x\":1,\"x\":2")
                    .as_bytes()
            )
            .is_ok());
    }

    #[test]
    fn structural_errors_carry_serde_json_positions() {
        fails(
            "[1,2]",
            &[
                "invalid type: sequence, expected a JSON object of clickstream event fields",
                "line 1 column",
            ],
        );
        fails("5", &["invalid type: integer `5`"]);
        fails("\"x\"", &["invalid type: string"]);
        fails("null", &["invalid type: null"]);
        fails("", &["EOF while parsing a value at line 1 column 0"]);
        fails("{", &["EOF while parsing an object"]);
        fails(
            &format!("{SAMPLE} x"),
            &["trailing characters at line 1 column"],
        );
        fails(&format!("{SAMPLE}{SAMPLE}"), &["trailing characters"]);
        fails("{\"event_time\" 5}", &["expected `:`"]);
        // Truncated inside a value: the error names that field.
        let cut = &SAMPLE[..SAMPLE.find("xiaomi").unwrap() + 3];
        fails(cut, &["field `brand`: EOF while parsing a string"]);
        let cut = &SAMPLE[..SAMPLE.find("489.").unwrap() + 4];
        fails(cut, &["field `price`: EOF while parsing a value"]);
        // Deep nesting in an ignored value is skipped without recursion; in a known field it
        // is a type error at the first bracket.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(
            decoder().decode(with("x", Some(&deep)).as_bytes()),
            Ok(sample_event())
        );
        fails(
            &with("brand", Some(&deep)),
            &["field `brand`: invalid type: sequence"],
        );
        fails(&with("x", Some(&"[".repeat(100_000))), &["line 1 column"]);
    }

    #[test]
    fn invalid_utf8_in_a_string_is_an_error_naming_the_field() {
        for field in [
            "brand",
            "category_code",
            "user_session",
            "ip",
            "user_agent",
            "country",
            "event_type",
            "user_id",
        ] {
            let mut json = with(field, Some("\"abPLACEHOLDER\"")).into_bytes();
            let at = json.windows(11).position(|w| w == b"PLACEHOLDER").unwrap();
            json.splice(at..at + 11, b"\xff\xfe".iter().copied());
            let err = decoder().decode(&json).unwrap_err();
            assert!(
                err.message.starts_with(&format!("field `{field}`: ")),
                "{err}"
            );
            assert!(err.message.contains("invalid unicode code point"), "{err}");
        }
    }

    #[test]
    fn year_range_is_configurable() {
        let d = JsonDecoder::new(DecodeOptions {
            min_year: 2020,
            max_year: 2030,
        });
        let err = d.decode(SAMPLE.as_bytes()).unwrap_err();
        assert_eq!(
            err.message,
            "field `event_time`: 2019-11-01 00:00:00 UTC is outside the accepted years 2020-2030"
        );
    }

    #[test]
    fn never_panics_on_random_or_mutated_input() {
        let d = decoder();
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let mut buf = Vec::new();
        let mut accepted = 0;
        for i in 0..20_000 {
            buf.clear();
            if i % 2 == 0 {
                let len = rng.below(300) as usize;
                if i % 4 == 0 {
                    // Random bytes inside an object, to get past the first character.
                    buf.push(b'{');
                }
                buf.extend((0..len).map(|_| rng.next() as u8));
            } else {
                let e = if i % 4 == 1 {
                    sample_events()[rng.below(10) as usize].clone()
                } else {
                    random_event(&mut rng, true)
                };
                write_json(&e, &mut buf);
                mutate(&mut rng, &mut buf);
            }
            if let Ok(e) = d.decode(&buf) {
                accepted += 1;
                // Whatever is accepted re-encodes to something that decodes identically
                // (prices within f64's exact range).
                if e.price_cents.unsigned_abs() < 1_000_000_000_000 {
                    let mut again = Vec::new();
                    write_json(&e, &mut again);
                    assert_eq!(d.decode(&again), Ok(e));
                }
            }
        }
        assert!(
            accepted > 100,
            "mutations should leave some records valid, got {accepted}"
        );
    }
}
