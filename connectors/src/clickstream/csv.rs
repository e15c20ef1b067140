//! CSV decoding of clickstream events: the REES46 export format, plus extension columns.
//!
//! A [`CsvDecoder`] is built once from the header line, then decodes one record at a time.
//!
//! # What is accepted
//! - **Header**: comma-separated column names, matched by name in any order (surrounding
//!   ASCII whitespace is trimmed; names are otherwise exact and case-sensitive). The nine
//!   [`REQUIRED_COLUMNS`] must all be present; the [`EXTENSION_COLUMNS`] are optional; any
//!   other column is ignored. A leading UTF-8 byte-order mark and a trailing `\n` / `\r\n`
//!   are tolerated.
//! - **Records**: RFC 4180. A field is either unquoted (no `"` anywhere in it) or wholly
//!   quoted, with `""` standing for one quote; quoted fields may contain commas and line
//!   breaks. One trailing `\n` or `\r\n` is stripped. Every record must have exactly as
//!   many fields as the header has columns.
//! - **Nulls**: an empty field and a quoted empty field (`""`) are null. Nullable fields are
//!   `category_code`, `brand`, `user_session` and the four extensions; every other field is
//!   required and may not be null.
//! - **Field values**:
//!   - `event_time`: `2019-11-01 00:00:00 UTC` (fraction and ` UTC` optional) or RFC 3339
//!     (see [`super::timestamp`]), in the years [`DecodeOptions`] accepts (2000-2099 by
//!     default).
//!   - `event_type`: exactly `view`, `cart`, `remove_from_cart` or `purchase`.
//!   - `product_id`, `category_id`, `user_id`: unsigned 64-bit decimal, digits only (no sign,
//!     no spaces; leading zeros are allowed).
//!   - `price`: a finite decimal, converted to cents by [`parse_price_cents`] (half away from
//!     zero); zero and negative prices are kept.
//!   - `user_session`: any text; the canonical lower-case UUID form packs into 128 bits
//!     ([`SessionId::parse`]).
//!   - `channel`: `web`, `app` or `social`.
//!   - text fields must be valid UTF-8 and are kept verbatim (not trimmed).
//!
//! # What is rejected
//! Every violation of the above is a [`DecodeError`] whose message names the field (by its
//! header name) and shows the offending value, e.g.
//! ``field `user_id`: `12a` is not an unsigned integer`` or `expected 9 fields, found 7`.
//! Also rejected: a `"` inside an unquoted field, text between a closing quote and the next
//! comma, an unterminated quoted field, and an empty line. Decoding never panics on any
//! input bytes.
//!
//! # Non-guarantees
//! Line framing is the caller's job: [`CsvDecoder::decode`] takes one whole record. Use
//! [`record_len`] to split a buffer into records when quoted fields may contain line breaks
//! (the encoder quotes such fields, so a user agent with a newline spans two lines).
//!
//! # Cost
//! A record without any `"` (the REES46 norm) takes a fast path that finds the commas eight
//! bytes at a time; the first quote sends the record to the general RFC 4180 splitter.
//! Fields are borrowed from the input; only a quoted field containing `""` is copied.
//! Numbers and times are parsed from bytes without allocation; short text fields (up to 24
//! bytes) are stored inline in [`CompactString`]s.

use std::borrow::Cow;
use std::fmt;

use compact_str::CompactString;

use super::timestamp::{parse_event_time, YearBounds};
use super::{parse_price_cents, Channel, DecodeError, DecodeOptions, Event, EventType, SessionId};

/// The REES46 columns, all of which the header must name.
pub const REQUIRED_COLUMNS: [&str; 9] = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
];

/// The optional extension columns.
pub const EXTENSION_COLUMNS: [&str; 4] = ["ip", "user_agent", "channel", "country"];

/// The fields of an [`Event`], in schema order; also the slots a decoder fills. Shared with
/// the JSON decoder so both name fields identically in their messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    EventTime,
    EventType,
    ProductId,
    CategoryId,
    CategoryCode,
    Brand,
    Price,
    UserId,
    UserSession,
    Ip,
    UserAgent,
    Channel,
    Country,
}

impl Field {
    pub(super) const COUNT: usize = 13;
    #[cfg(test)]
    pub(super) const ALL: [Field; Field::COUNT] = [
        Field::EventTime,
        Field::EventType,
        Field::ProductId,
        Field::CategoryId,
        Field::CategoryCode,
        Field::Brand,
        Field::Price,
        Field::UserId,
        Field::UserSession,
        Field::Ip,
        Field::UserAgent,
        Field::Channel,
        Field::Country,
    ];

    /// The column (CSV) or key (JSON) name.
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::EventTime => "event_time",
            Field::EventType => "event_type",
            Field::ProductId => "product_id",
            Field::CategoryId => "category_id",
            Field::CategoryCode => "category_code",
            Field::Brand => "brand",
            Field::Price => "price",
            Field::UserId => "user_id",
            Field::UserSession => "user_session",
            Field::Ip => "ip",
            Field::UserAgent => "user_agent",
            Field::Channel => "channel",
            Field::Country => "country",
        }
    }

    /// The field a column or key name denotes (exact, case-sensitive).
    #[inline]
    pub(super) fn from_name(name: &[u8]) -> Option<Field> {
        Some(match name {
            b"event_time" => Field::EventTime,
            b"event_type" => Field::EventType,
            b"product_id" => Field::ProductId,
            b"category_id" => Field::CategoryId,
            b"category_code" => Field::CategoryCode,
            b"brand" => Field::Brand,
            b"price" => Field::Price,
            b"user_id" => Field::UserId,
            b"user_session" => Field::UserSession,
            b"ip" => Field::Ip,
            b"user_agent" => Field::UserAgent,
            b"channel" => Field::Channel,
            b"country" => Field::Country,
            _ => return None,
        })
    }

    /// A decode error about this field: ``field `name`: reason``.
    pub(super) fn error(self, reason: impl fmt::Display) -> DecodeError {
        DecodeError::new(format!("field `{}`: {reason}", self.name()))
    }
}

/// Decodes CSV records whose columns are those of one header line.
///
/// ```
/// use cap_connectors::clickstream::csv::CsvDecoder;
/// use cap_connectors::clickstream::{DecodeOptions, EventType};
///
/// let header = b"event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n";
/// let decoder = CsvDecoder::from_header(header, DecodeOptions::default())?;
/// let event = decoder.decode(b"2019-11-01 00:00:00 UTC,view,1003461,2053013555631882655,electronics.smartphone,xiaomi,489.07,520088904,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33\n")?;
/// assert_eq!(event.event_type, EventType::View);
/// assert_eq!(event.price_cents, 48907);
/// assert_eq!(event.category_id, 2053013555631882655);
/// # Ok::<(), cap_connectors::clickstream::DecodeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct CsvDecoder {
    options: DecodeOptions,
    bounds: YearBounds,
    /// For each header position, the field it fills, or `None` when the column is ignored.
    columns: Vec<Option<Field>>,
    /// The header's column names (lossy UTF-8), for messages.
    names: Vec<String>,
}

impl CsvDecoder {
    /// Builds a decoder from the header line (with or without a BOM and line terminator).
    ///
    /// Fails, naming the column, when a required column is missing or a known column
    /// appears twice, and when the header itself is not valid CSV.
    pub fn from_header(header: &[u8], options: DecodeOptions) -> Result<CsvDecoder, DecodeError> {
        let header = header.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(header);
        let header = strip_eol(header);
        let mut names = Vec::new();
        split_fields(header, |_, name| {
            names.push(String::from_utf8_lossy(name.trim_ascii()).into_owned())
        })
        .map_err(|e| {
            DecodeError::new(format!("CSV header: column {}: {}", e.column + 1, e.kind))
        })?;
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let field = Field::from_name(name.as_bytes());
            if let Some(f) = field {
                if columns.contains(&Some(f)) {
                    return Err(DecodeError::new(format!(
                        "CSV header: column `{}` appears twice",
                        f.name()
                    )));
                }
            }
            columns.push(field);
        }
        if let Some(missing) = REQUIRED_COLUMNS
            .iter()
            .find(|r| !names.iter().any(|n| n == *r))
        {
            return Err(DecodeError::new(format!(
                "CSV header: missing required column `{missing}` (the header must name all of {})",
                REQUIRED_COLUMNS.join(",")
            )));
        }
        Ok(CsvDecoder {
            bounds: YearBounds::new(&options),
            options,
            columns,
            names,
        })
    }

    /// The options this decoder enforces.
    pub fn options(&self) -> &DecodeOptions {
        &self.options
    }

    /// The number of columns of the header, which every record must match.
    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// Decodes one record (with or without its trailing `\n` / `\r\n`).
    pub fn decode(&self, line: &[u8]) -> Result<Event, DecodeError> {
        let line = strip_eol(line);
        if line.is_empty() {
            return Err(DecodeError::new(format!(
                "empty line (expected {} fields)",
                self.columns.len()
            )));
        }
        // Fields not named by the header (absent extensions) stay empty, i.e. null.
        let mut fields: [&[u8]; Field::COUNT] = [b""; Field::COUNT];
        match split_unquoted(line, &self.columns, &mut fields) {
            Some(found) => {
                self.check_count(found)?;
                self.build(&fields)
            }
            None => self.decode_quoted(line),
        }
    }

    /// The general path, for records with at least one quote.
    #[cold]
    fn decode_quoted(&self, line: &[u8]) -> Result<Event, DecodeError> {
        let mut owned: [Cow<'_, [u8]>; Field::COUNT] = Default::default();
        let columns = &self.columns;
        let found = split_fields(line, |i, value| {
            if let Some(Some(field)) = columns.get(i) {
                owned[*field as usize] = value;
            }
        })
        .map_err(|e| self.split_error(e))?;
        self.check_count(found)?;
        let fields: [&[u8]; Field::COUNT] = std::array::from_fn(|i| &*owned[i]);
        self.build(&fields)
    }

    #[inline]
    fn check_count(&self, found: usize) -> Result<(), DecodeError> {
        if found == self.columns.len() {
            Ok(())
        } else {
            Err(DecodeError::new(format!(
                "expected {} fields, found {found}",
                self.columns.len()
            )))
        }
    }

    fn build(&self, f: &[&[u8]; Field::COUNT]) -> Result<Event, DecodeError> {
        let time = required(Field::EventTime, f[Field::EventTime as usize])?;
        let event_time =
            parse_event_time(time).ok_or_else(|| Field::EventTime.error(time_reason(time)))?;
        let event_time = self.bounds.check(event_time)?;
        let kind = required(Field::EventType, f[Field::EventType as usize])?;
        let event_type = EventType::parse(kind)
            .ok_or_else(|| Field::EventType.error(event_type_reason(kind)))?;
        let product_id = id(Field::ProductId, f[Field::ProductId as usize])?;
        let category_id = id(Field::CategoryId, f[Field::CategoryId as usize])?;
        let category_code =
            text(Field::CategoryCode, f[Field::CategoryCode as usize])?.map(CompactString::from);
        let brand = text(Field::Brand, f[Field::Brand as usize])?.map(CompactString::from);
        let price = required(Field::Price, f[Field::Price as usize])?;
        let price_cents =
            parse_price_cents(price).map_err(|_| Field::Price.error(price_reason(price)))?;
        let user_id = id(Field::UserId, f[Field::UserId as usize])?;
        let user_session = text(Field::UserSession, f[Field::UserSession as usize])?.map(session);
        let ip = text(Field::Ip, f[Field::Ip as usize])?.map(CompactString::from);
        let user_agent =
            text(Field::UserAgent, f[Field::UserAgent as usize])?.map(CompactString::from);
        let channel = match f[Field::Channel as usize] {
            b"" => None,
            c => Some(Channel::parse(c).ok_or_else(|| Field::Channel.error(channel_reason(c)))?),
        };
        let country = text(Field::Country, f[Field::Country as usize])?.map(CompactString::from);
        Ok(Event {
            event_time,
            event_type,
            product_id,
            category_id,
            category_code,
            brand,
            price_cents,
            user_id,
            user_session,
            ip,
            user_agent,
            channel,
            country,
        })
    }

    #[cold]
    fn split_error(&self, e: SplitError) -> DecodeError {
        match self.names.get(e.column) {
            Some(name) => DecodeError::new(format!("field `{name}`: {}", e.kind)),
            None => DecodeError::new(format!(
                "field {} (beyond the header's {} columns): {}",
                e.column + 1,
                self.names.len(),
                e.kind
            )),
        }
    }
}

/// The length of the first CSV record in `buf`, including its terminating `\n`, or `None`
/// when `buf` holds no complete record (at end of input, the rest is the last record).
///
/// RFC 4180 allows line breaks inside quoted fields, so a record may span several lines. A
/// quote only opens a quoted field at the start of a field, so a stray `"` inside an
/// unquoted field (which [`CsvDecoder::decode`] rejects) does not swallow the following
/// lines; an unterminated quoted field does, up to the next quote.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    if !buf[..nl].contains(&b'"') {
        return Some(nl + 1);
    }
    #[derive(Clone, Copy)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    for (i, &b) in buf.iter().enumerate() {
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::FieldStart, b'"') | (State::QuoteInQuoted, b'"') => State::Quoted,
            (_, b'\n') => return Some(i + 1),
            (_, b',') => State::FieldStart,
            _ => State::Unquoted,
        };
    }
    None
}

/// Strips one trailing `\n` or `\r\n` (and a lone trailing `\r`).
#[inline]
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Why a record is not valid RFC 4180, and in which (0-based) column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SplitError {
    column: usize,
    kind: SplitErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SplitErrorKind {
    Unterminated,
    TextAfterQuote,
    StrayQuote,
}

impl fmt::Display for SplitErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplitErrorKind::Unterminated => "unterminated quoted field",
            SplitErrorKind::TextAfterQuote => "text after the closing quote of a quoted field",
            SplitErrorKind::StrayQuote => {
                "a quote inside an unquoted field (quote the whole field and double the quote)"
            }
        })
    }
}

/// The fast path of [`CsvDecoder::decode`]: splits a record without any quote into the
/// fields `columns` maps, returning the number of fields, or `None` as soon as a quote shows
/// up (the caller then takes the general path).
#[inline]
fn split_unquoted<'a>(
    line: &'a [u8],
    columns: &[Option<Field>],
    fields: &mut [&'a [u8]; Field::COUNT],
) -> Option<usize> {
    let mut column = 0;
    let mut start = 0;
    loop {
        let end = find_comma_or_quote(line, start);
        if line.get(end) == Some(&b'"') {
            return None;
        }
        if let Some(Some(field)) = columns.get(column) {
            fields[*field as usize] = line.get(start..end).unwrap_or_default();
        }
        column += 1;
        if end >= line.len() {
            return Some(column);
        }
        start = end + 1;
    }
}

/// The position of the first `,` or `"` at or after `from`, or `line.len()` when none.
/// Scans eight bytes at a time (SWAR): a zero byte of `word ^ broadcast(c)` marks `c`.
#[inline]
fn find_comma_or_quote(line: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const COMMAS: u64 = ONES * b',' as u64;
    const QUOTES: u64 = ONES * b'"' as u64;
    // High bit set in each zero byte; bits above the first zero byte may be spurious, but the
    // lowest set bit is always exact, which is all we use.
    #[inline]
    fn zero_bytes(y: u64) -> u64 {
        y.wrapping_sub(ONES) & !y & HIGHS
    }
    let mut i = from;
    while let Some(chunk) = line.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(bytes);
        let hits = zero_bytes(word ^ COMMAS) | zero_bytes(word ^ QUOTES);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    let tail = line.get(i..).unwrap_or_default();
    i + tail
        .iter()
        .position(|&b| b == b',' || b == b'"')
        .unwrap_or(tail.len())
}

/// The general RFC 4180 splitter: splits one record (without its line terminator) into
/// fields, calling `emit(column, value)` for each, and returns the number of fields.
fn split_fields<'a>(
    line: &'a [u8],
    mut emit: impl FnMut(usize, Cow<'a, [u8]>),
) -> Result<usize, SplitError> {
    let mut pos = 0;
    let mut column = 0;
    loop {
        let rest = line.get(pos..).unwrap_or_default();
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            // Quoted field: runs to the first quote not followed by another quote.
            let mut owned: Option<Vec<u8>> = None;
            let mut seg = 0; // start of the current unescaped segment within `quoted`
            let close = loop {
                let Some(k) = quoted
                    .get(seg..)
                    .and_then(|s| s.iter().position(|&b| b == b'"'))
                else {
                    return Err(SplitError {
                        column,
                        kind: SplitErrorKind::Unterminated,
                    });
                };
                let q = seg + k;
                if quoted.get(q + 1) == Some(&b'"') {
                    // `""`: keep one quote.
                    owned
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&quoted[seg..=q]);
                    seg = q + 2;
                } else {
                    break q;
                }
            };
            let value = match owned {
                None => Cow::Borrowed(&quoted[seg..close]),
                Some(mut v) => {
                    v.extend_from_slice(&quoted[seg..close]);
                    Cow::Owned(v)
                }
            };
            emit(column, value);
            column += 1;
            match quoted.get(close + 1) {
                None => return Ok(column),
                Some(b',') => pos += close + 3, // opening quote, content, closing quote, comma
                Some(_) => {
                    return Err(SplitError {
                        column: column - 1,
                        kind: SplitErrorKind::TextAfterQuote,
                    })
                }
            }
        } else {
            match rest.iter().position(|&b| b == b',' || b == b'"') {
                None => {
                    emit(column, Cow::Borrowed(rest));
                    return Ok(column + 1);
                }
                Some(k) if rest[k] == b'"' => {
                    return Err(SplitError {
                        column,
                        kind: SplitErrorKind::StrayQuote,
                    });
                }
                Some(k) => {
                    emit(column, Cow::Borrowed(&rest[..k]));
                    column += 1;
                    pos += k + 1;
                }
            }
        }
    }
}

/// A required field's bytes, or an error when it is null.
#[inline]
fn required(field: Field, value: &[u8]) -> Result<&[u8], DecodeError> {
    if value.is_empty() {
        Err(field.error("required but empty"))
    } else {
        Ok(value)
    }
}

#[inline]
fn id(field: Field, value: &[u8]) -> Result<u64, DecodeError> {
    parse_unsigned(required(field, value)?).map_err(|reason| field.error(reason))
}

/// A nullable text field: `None` when empty, else valid UTF-8.
#[inline]
fn text(field: Field, value: &[u8]) -> Result<Option<&str>, DecodeError> {
    if value.is_empty() {
        return Ok(None);
    }
    match std::str::from_utf8(value) {
        Ok(s) => Ok(Some(s)),
        Err(e) => Err(field.error(format!(
            "invalid UTF-8 at byte {} of {}",
            e.valid_up_to(),
            show(value)
        ))),
    }
}

// ---- Field rules shared with the JSON decoder (`super::json`), so both speak alike. ----

/// Parses an unsigned 64-bit decimal (digits only); the error is the reason, without the
/// field name.
#[inline]
pub(super) fn parse_unsigned(b: &[u8]) -> Result<u64, String> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(format!("{} is not an unsigned integer", show(b)));
    }
    if b.len() <= 19 {
        // At most 19 digits cannot overflow (10^19 - 1 < 2^64).
        return Ok(b.iter().fold(0u64, |v, &c| v * 10 + u64::from(c - b'0')));
    }
    b.iter()
        .try_fold(0u64, |v, &c| {
            v.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        })
        .ok_or_else(|| format!("{} is out of range for an unsigned 64-bit integer", show(b)))
}

/// [`SessionId::parse`], with a branch-free path for the canonical lower-case UUID form (the
/// REES46 norm): the same result for every input (tested). `SessionId::parse` branches on
/// digit-or-letter for each random hex character; on REES46-shaped lines that alone cost
/// ~115 ns of a ~200 ns decode (CSV throughput 3.2M -> 5.0M lines/s with this path).
/// If `parse_uuid_lower` in `clickstream/mod.rs` adopts the table, this can go.
#[inline]
pub(super) fn session(text: &str) -> SessionId {
    match uuid_lower(text.as_bytes()) {
        Some(v) => SessionId::Uuid(v),
        None => SessionId::parse(text),
    }
}

/// The 128 bits of `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lower-case hex.
#[inline]
fn uuid_lower(b: &[u8]) -> Option<u128> {
    /// Lower-case hex digit values; 0xff for every other byte.
    const HEX: [u8; 256] = {
        let mut t = [0xff; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let b: &[u8; 36] = b.try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut hi = 0u64;
    let mut lo = 0u64;
    let mut bad = 0u8;
    for &c in b[0..8].iter().chain(&b[9..13]).chain(&b[14..18]) {
        let d = HEX[c as usize];
        bad |= d;
        hi = hi << 4 | u64::from(d);
    }
    for &c in b[19..23].iter().chain(&b[24..36]) {
        let d = HEX[c as usize];
        bad |= d;
        lo = lo << 4 | u64::from(d);
    }
    (bad < 16).then_some(u128::from(hi) << 64 | u128::from(lo))
}

/// Why an event-time text was rejected.
#[cold]
pub(super) fn time_reason(b: &[u8]) -> String {
    format!(
        "{} is not a timestamp (expected `YYYY-MM-DD HH:MM:SS UTC` or RFC 3339)",
        show(b)
    )
}

/// Why an event-type text was rejected.
#[cold]
pub(super) fn event_type_reason(b: &[u8]) -> String {
    format!(
        "unknown event type {} (expected view, cart, remove_from_cart or purchase)",
        show(b)
    )
}

/// Why a channel text was rejected.
#[cold]
pub(super) fn channel_reason(b: &[u8]) -> String {
    format!("unknown channel {} (expected web, app or social)", show(b))
}

/// Why a price text was rejected.
#[cold]
pub(super) fn price_reason(b: &[u8]) -> String {
    format!("{} is not a finite decimal number in range", show(b))
}

/// A value quoted for a message: lossy UTF-8, control characters escaped, cut after 64 bytes.
#[cold]
pub(super) fn show(b: &[u8]) -> String {
    const MAX: usize = 64;
    let cut = b.get(..MAX).unwrap_or(b);
    let mut s = String::with_capacity(cut.len() + 8);
    s.push('`');
    for c in String::from_utf8_lossy(cut).chars() {
        if c.is_control() {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    if b.len() > MAX {
        s.push_str("...");
    }
    s.push('`');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE: `unwrap_used` outside tests)
pub(crate) mod tests {
    use super::super::encode::{write_csv, CSV_HEADER, CSV_HEADER_EXTENDED};
    use super::*;
    use cap_engine::time::ms_from_civil;

    /// A tiny deterministic PRNG (xorshift64*), so tests need no extra crates.
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    fn cs(s: &str) -> Option<CompactString> {
        Some(CompactString::from(s))
    }

    /// The first REES46 sample row at `time` (shared with the JSON tests).
    pub(crate) fn base(time: i64) -> Event {
        Event {
            event_time: time,
            event_type: EventType::View,
            product_id: 1003461,
            category_id: 2053013555631882655,
            category_code: cs("electronics.smartphone"),
            brand: cs("xiaomi"),
            price_cents: 48907,
            user_id: 520088904,
            user_session: Some(SessionId::parse("4d3b30da-a5e4-49df-b1a8-ba5943f1dd33")),
            ip: None,
            user_agent: None,
            channel: None,
            country: None,
        }
    }

    /// Hand-built events covering nulls, awkward text, odd sessions and prices. The first
    /// `REES46_ONLY` have no extension fields (they round-trip through the plain header).
    pub(crate) const REES46_ONLY: usize = 6;

    pub(crate) fn sample_events() -> Vec<Event> {
        let t = ms_from_civil(2019, 11, 1, 0, 0, 0, 0);
        vec![
            base(t),
            Event {
                category_code: None,
                brand: None,
                user_session: None,
                ..base(t + 1000)
            },
            Event {
                event_type: EventType::Purchase,
                price_cents: 0,
                ..base(t + 1)
            },
            Event {
                event_type: EventType::Cart,
                price_cents: -5,
                user_id: u64::MAX,
                product_id: 0,
                ..base(t)
            },
            Event {
                event_type: EventType::RemoveFromCart,
                user_session: Some(SessionId::parse("not-a-uuid, \"really\"")),
                brand: cs("l'oréal"),
                category_code: cs("a.very.long.category.code.that.does.not.fit.inline"),
                ..base(ms_from_civil(2099, 12, 31, 23, 59, 59, 999))
            },
            Event {
                user_session: Some(SessionId::parse("4D3B30DA-A5E4-49DF-B1A8-BA5943F1DD33")),
                price_cents: -123_456_789,
                ..base(ms_from_civil(2000, 1, 1, 0, 0, 0, 0))
            },
            // With extensions.
            Event {
                ip: cs("192.0.2.1"),
                user_agent: cs("Mozilla/5.0 (X11; Linux x86_64) \"quoted\", with commas"),
                channel: Some(Channel::Web),
                country: cs("DE"),
                ..base(t + 7)
            },
            Event {
                ip: cs("2001:db8::1"),
                channel: Some(Channel::App),
                ..base(t)
            },
            Event {
                user_agent: cs("multi\nline\r\nagent"),
                channel: Some(Channel::Social),
                ..base(t)
            },
            Event {
                country: cs("\"\""),
                user_agent: cs(" padded "),
                ..base(t)
            },
        ]
    }

    /// A random plausible event (REES46-like value shapes), for fuzzing and throughput.
    pub(crate) fn random_event(rng: &mut XorShift, extended: bool) -> Event {
        const CODES: [&str; 6] = [
            "electronics.smartphone",
            "appliances.kitchen.refrigerators",
            "computers.notebook",
            "apparel.shoes",
            "electronics.audio.headphone",
            "",
        ];
        const BRANDS: [&str; 6] = ["xiaomi", "samsung", "apple", "huawei", "lucente", ""];
        let t0 = ms_from_civil(2019, 10, 1, 0, 0, 0, 0);
        let code = *rng.pick(&CODES);
        let brand = *rng.pick(&BRANDS);
        let session = if rng.below(20) == 0 {
            None
        } else {
            Some(SessionId::Uuid(
                u128::from(rng.next()) << 64 | u128::from(rng.next()),
            ))
        };
        let ext = extended && rng.below(2) == 0;
        Event {
            event_time: t0 + (rng.below(61 * 86_400) * 1000) as i64,
            event_type: *rng.pick(&[
                EventType::View,
                EventType::View,
                EventType::View,
                EventType::Cart,
                EventType::Purchase,
            ]),
            product_id: 1_000_000 + rng.below(60_000_000),
            category_id: 2_053_013_552_000_000_000 + rng.below(10_000_000_000),
            category_code: Some(code)
                .filter(|c| !c.is_empty())
                .map(CompactString::from),
            brand: Some(brand)
                .filter(|c| !c.is_empty())
                .map(CompactString::from),
            price_cents: rng.below(250_000) as i64,
            user_id: 500_000_000 + rng.below(100_000_000),
            user_session: session,
            ip: ext.then(|| {
                CompactString::from(format!(
                    "10.{}.{}.{}",
                    rng.below(256),
                    rng.below(256),
                    rng.below(256)
                ))
            }),
            user_agent: ext
                .then(|| CompactString::from("Mozilla/5.0 (Linux; Android 10; SM-G975F)")),
            channel: ext.then(|| *rng.pick(&[Channel::Web, Channel::App, Channel::Social])),
            country: ext.then(|| CompactString::from("PL")),
        }
    }

    fn plain() -> CsvDecoder {
        CsvDecoder::from_header(CSV_HEADER.as_bytes(), DecodeOptions::default()).unwrap()
    }

    fn extended() -> CsvDecoder {
        CsvDecoder::from_header(CSV_HEADER_EXTENDED.as_bytes(), DecodeOptions::default()).unwrap()
    }

    const LINE1: &[u8] = b"2019-11-01 00:00:00 UTC,view,1003461,2053013555631882655,electronics.smartphone,xiaomi,489.07,520088904,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33";
    const LINE2: &[u8] = b"2019-11-01 00:00:01 UTC,view,17302664,2053013553853497655,,creed,28.31,561587266,755422e7-9040-477b-9bd2-6a6e8fd97387";

    #[test]
    fn field_names_are_the_schema_columns() {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names[..9], REQUIRED_COLUMNS);
        assert_eq!(names[9..], EXTENSION_COLUMNS);
        assert_eq!(CSV_HEADER_EXTENDED, names.join(","));
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(Field::from_name(f.name().as_bytes()), Some(*f));
        }
        assert_eq!(Field::from_name(b"Price"), None);
    }

    #[test]
    fn fast_session_parse_matches_session_id_parse() {
        let mut rng = XorShift(3);
        let canonical = "4d3b30da-a5e4-49df-b1a8-ba5943f1dd33";
        assert_eq!(session(canonical), SessionId::parse(canonical));
        assert!(matches!(session(canonical), SessionId::Uuid(_)));
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEFg-_ \xff";
        for _ in 0..50_000 {
            let mut text = canonical.as_bytes().to_vec();
            for _ in 0..=rng.below(2) {
                let at = rng.below(40) as usize;
                match rng.below(3) {
                    0 if at < text.len() => text[at] = *rng.pick(ALPHABET),
                    1 => text.insert(at.min(text.len()), *rng.pick(ALPHABET)),
                    _ if at < text.len() => {
                        text.remove(at);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&text);
            assert_eq!(session(&text), SessionId::parse(&text), "{text}");
        }
        for v in [0u128, u128::MAX, 1 << 64, (1 << 64) - 1] {
            let text = SessionId::Uuid(v).to_string();
            assert_eq!(session(&text), SessionId::Uuid(v));
        }
    }

    #[test]
    fn rees46_sample_lines() {
        let d = plain();
        let e1 = d.decode(LINE1).unwrap();
        assert_eq!(e1, base(ms_from_civil(2019, 11, 1, 0, 0, 0, 0)));
        assert!(matches!(e1.user_session, Some(SessionId::Uuid(_))));
        let e2 = d.decode(&[LINE2, b"\r\n"].concat()).unwrap();
        assert_eq!(e2.event_time, ms_from_civil(2019, 11, 1, 0, 0, 1, 0));
        assert_eq!(e2.product_id, 17302664);
        assert_eq!(e2.category_id, 2053013553853497655);
        assert_eq!(e2.category_code, None);
        assert_eq!(e2.brand, cs("creed"));
        assert_eq!(e2.price_cents, 2831);
        assert_eq!(e2.user_id, 561587266);
        assert_eq!(
            e2.user_session.map(|s| s.to_string()).as_deref(),
            Some("755422e7-9040-477b-9bd2-6a6e8fd97387")
        );
        assert_eq!(
            (e2.ip, e2.user_agent, e2.channel, e2.country),
            (None, None, None, None)
        );
    }

    /// Splits a buffer of encoded records with `record_len` and decodes each.
    fn decode_all(d: &CsvDecoder, mut buf: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(n) = record_len(buf) {
            out.push(
                d.decode(&buf[..n])
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf[..n]))),
            );
            buf = &buf[n..];
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn round_trips_through_the_encoder() {
        let events = sample_events();
        let mut buf = Vec::new();
        for e in &events[..REES46_ONLY] {
            write_csv(e, false, &mut buf);
        }
        assert_eq!(decode_all(&plain(), &buf), events[..REES46_ONLY]);
        buf.clear();
        for e in &events {
            write_csv(e, true, &mut buf);
        }
        assert_eq!(decode_all(&extended(), &buf), events);
        // Random events, with and without extensions.
        let mut rng = XorShift(7);
        let (d_plain, d_ext) = (plain(), extended());
        let mut line = Vec::new();
        for _ in 0..2000 {
            let e = random_event(&mut rng, true);
            line.clear();
            write_csv(&e, true, &mut line);
            assert_eq!(d_ext.decode(&line), Ok(e.clone()));
            let e = Event {
                ip: None,
                user_agent: None,
                channel: None,
                country: None,
                ..e
            };
            line.clear();
            write_csv(&e, false, &mut line);
            assert_eq!(d_plain.decode(&line), Ok(e));
        }
    }

    #[test]
    fn header_columns_match_by_name_in_any_order() {
        let header = b"\xEF\xBB\xBFuser_id,price,\"brand\",junk,event_type,event_time,user_session, category_code ,category_id,product_id,country\r\n";
        let d = CsvDecoder::from_header(header, DecodeOptions::default()).unwrap();
        assert_eq!(d.column_count(), 11);
        let e = d
            .decode(b"520088904,489.07,xiaomi,whatever \"ignored\",view,2019-11-01 00:00:00 UTC,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33,electronics.smartphone,2053013555631882655,1003461,PL\r\n")
            .unwrap_err();
        // The ignored column is still CSV: a stray quote is an error naming it.
        assert!(e.message.contains("field `junk`"), "{e}");
        let e = d
            .decode(b"520088904,489.07,xiaomi,\"whatever, \"\"ignored\"\"\",view,2019-11-01 00:00:00 UTC,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33,electronics.smartphone,2053013555631882655,1003461,PL\r\n")
            .unwrap();
        assert_eq!(
            e,
            Event {
                country: cs("PL"),
                ..base(ms_from_civil(2019, 11, 1, 0, 0, 0, 0))
            }
        );
    }

    #[test]
    fn header_errors_name_the_column() {
        let missing = CsvDecoder::from_header(
            b"event_time,event_type,product_id,category_id,category_code,brand,user_id,user_session\n",
            DecodeOptions::default(),
        )
        .unwrap_err();
        assert!(
            missing.message.contains("missing required column `price`"),
            "{missing}"
        );
        let twice = CsvDecoder::from_header(
            format!("{CSV_HEADER},price").as_bytes(),
            DecodeOptions::default(),
        )
        .unwrap_err();
        assert!(twice.message.contains("`price` appears twice"), "{twice}");
        let case = CsvDecoder::from_header(
            CSV_HEADER.to_uppercase().as_bytes(),
            DecodeOptions::default(),
        )
        .unwrap_err();
        assert!(case.message.contains("`event_time`"), "{case}");
        let unterminated = CsvDecoder::from_header(
            format!("{CSV_HEADER},\"ip").as_bytes(),
            DecodeOptions::default(),
        )
        .unwrap_err();
        assert!(
            unterminated.message.contains("column 10: unterminated"),
            "{unterminated}"
        );
        assert!(CsvDecoder::from_header(b"", DecodeOptions::default()).is_err());
    }

    #[test]
    fn quoting_follows_rfc_4180() {
        let d = extended();
        let t = ms_from_civil(2019, 11, 1, 0, 0, 0, 0);
        let e = d
            .decode(b"\"2019-11-01 00:00:00 UTC\",\"view\",\"1003461\",2053013555631882655,\"\",\"x,y\",\"489.07\",520088904,\"\",\"\",\"say \"\"hi\"\"\",,\"\"\"\"\n")
            .unwrap();
        assert_eq!(
            e,
            Event {
                category_code: None,
                brand: cs("x,y"),
                user_session: None,
                user_agent: cs("say \"hi\""),
                country: cs("\""),
                ..base(t)
            }
        );
        // A trailing empty field after a quoted one, and an embedded line break.
        let e = d
            .decode(b"2019-11-01 00:00:00 UTC,view,1003461,2053013555631882655,electronics.smartphone,xiaomi,489.07,520088904,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33,,\"a\nb\",\"web\",")
            .unwrap();
        assert_eq!(
            e,
            Event {
                user_agent: cs("a\nb"),
                channel: Some(Channel::Web),
                ..base(t)
            }
        );
        // Absent extension columns are null.
        assert_eq!(plain().decode(LINE1).unwrap().channel, None);
    }

    #[test]
    fn record_len_honours_quoted_line_breaks() {
        assert_eq!(record_len(b"a,b\nc"), Some(4));
        assert_eq!(record_len(b"a,b"), None);
        assert_eq!(record_len(b"a,\"b\nc\",d\ne"), Some(10));
        assert_eq!(record_len(b"a,\"b\"\"\nc\"\nx"), Some(10));
        assert_eq!(record_len(b"a,\"b\nc"), None);
        // A stray quote inside an unquoted field does not open a quoted field.
        assert_eq!(record_len(b"a,b\"c\nd,\"e\"\n"), Some(6));
        assert_eq!(record_len(b""), None);
    }

    /// Replaces the field at `column` of LINE1 (or the extended variant) with `value`.
    fn with_field(column: usize, value: &str) -> Vec<u8> {
        let base_line = format!("{},,,,", String::from_utf8_lossy(LINE1));
        let mut fields: Vec<&str> = base_line.split(',').collect();
        fields[column] = value;
        fields.join(",").into_bytes()
    }

    fn column_of(name: &str) -> usize {
        CSV_HEADER_EXTENDED
            .split(',')
            .position(|c| c == name)
            .unwrap()
    }

    #[test]
    fn malformed_rows_name_the_offending_field() {
        let d = extended();
        let cases: &[(&str, &str, &str)] = &[
            (
                "event_time",
                "1999-12-31 23:59:59 UTC",
                "1999-12-31 23:59:59 UTC is outside the accepted years 2000-2099",
            ),
            (
                "event_time",
                "2100-01-01 00:00:00 UTC",
                "outside the accepted years",
            ),
            (
                "event_time",
                "2019-13-01 00:00:00 UTC",
                "`2019-13-01 00:00:00 UTC` is not a timestamp",
            ),
            (
                "event_time",
                "2019-02-30 00:00:00 UTC",
                "is not a timestamp",
            ),
            (
                "event_time",
                "2019-11-01 25:00:00 UTC",
                "is not a timestamp",
            ),
            ("event_time", "garbage", "`garbage` is not a timestamp"),
            ("event_time", "1572566400000", "is not a timestamp"),
            ("event_time", "", "required but empty"),
            ("event_type", "click", "unknown event type `click`"),
            ("event_type", "VIEW", "unknown event type `VIEW`"),
            ("event_type", "\"\"", "required but empty"),
            ("product_id", "", "required but empty"),
            ("product_id", "12a", "`12a` is not an unsigned integer"),
            ("product_id", "-1", "`-1` is not an unsigned integer"),
            ("product_id", "+1", "`+1` is not an unsigned integer"),
            ("product_id", " 1", "is not an unsigned integer"),
            ("product_id", "1.0", "`1.0` is not an unsigned integer"),
            (
                "category_id",
                "18446744073709551616",
                "out of range for an unsigned 64-bit integer",
            ),
            ("category_id", "99999999999999999999999", "out of range"),
            ("user_id", "12a", "`12a` is not an unsigned integer"),
            ("user_id", "\"\"", "required but empty"),
            ("price", "NaN", "`NaN` is not a finite decimal number"),
            ("price", "inf", "`inf` is not a finite decimal number"),
            ("price", "-infinity", "is not a finite decimal number"),
            ("price", "1e400", "is not a finite decimal number"),
            ("price", "12.3.4", "is not a finite decimal number"),
            ("price", "abc", "`abc` is not a finite decimal number"),
            (
                "price",
                "99999999999999999999",
                "is not a finite decimal number",
            ),
            ("price", "", "required but empty"),
            ("channel", "tv", "unknown channel `tv`"),
            ("channel", "Web", "unknown channel `Web`"),
            ("user_agent", "\"unterminated", "unterminated quoted field"),
            (
                "user_agent",
                "\"closed\"junk",
                "text after the closing quote",
            ),
            ("brand", "x\"y", "a quote inside an unquoted field"),
        ];
        for (field, value, reason) in cases {
            let line = with_field(column_of(field), value);
            let err = d.decode(&line).expect_err(value);
            let expected = format!("field `{field}`: ");
            assert!(err.message.starts_with(&expected), "{value}: {err}");
            assert!(err.message.contains(reason), "{value}: {err}");
        }
        // Exact wording of the typical messages.
        assert_eq!(
            d.decode(&with_field(column_of("user_id"), "12a"))
                .unwrap_err()
                .message,
            "field `user_id`: `12a` is not an unsigned integer"
        );
        assert_eq!(
            d.decode(&with_field(column_of("event_type"), "click")).unwrap_err().message,
            "field `event_type`: unknown event type `click` (expected view, cart, remove_from_cart or purchase)"
        );
    }

    #[test]
    fn invalid_utf8_in_text_fields_is_an_error_naming_the_field() {
        let d = extended();
        for field in [
            "category_code",
            "brand",
            "user_session",
            "ip",
            "user_agent",
            "country",
        ] {
            let mut line = with_field(column_of(field), "PLACEHOLDER");
            let at = line.windows(11).position(|w| w == b"PLACEHOLDER").unwrap();
            line.splice(at..at + 11, b"ab\xff\xfecd".iter().copied());
            let err = d.decode(&line).unwrap_err();
            assert!(
                err.message
                    .starts_with(&format!("field `{field}`: invalid UTF-8 at byte 2")),
                "{err}"
            );
        }
        // In a numeric or enum field it is simply not a valid value.
        let mut line = LINE1.to_vec();
        line[0] = 0xff;
        assert!(plain()
            .decode(&line)
            .unwrap_err()
            .message
            .starts_with("field `event_time`: "));
        let mut line = with_field(column_of("channel"), "X");
        let at = line.iter().rposition(|&b| b == b'X').unwrap();
        line[at] = 0xc3;
        assert!(d
            .decode(&line)
            .unwrap_err()
            .message
            .starts_with("field `channel`: "));
    }

    #[test]
    fn field_count_must_match_the_header() {
        let d = plain();
        let short = b"2019-11-01 00:00:00 UTC,view,1003461,2053013555631882655,electronics.smartphone,xiaomi,489.07";
        assert_eq!(
            d.decode(short).unwrap_err().message,
            "expected 9 fields, found 7"
        );
        let long = [LINE1, b",extra"].concat();
        assert_eq!(
            d.decode(&long).unwrap_err().message,
            "expected 9 fields, found 10"
        );
        assert_eq!(
            extended().decode(LINE1).unwrap_err().message,
            "expected 13 fields, found 9"
        );
        assert_eq!(
            d.decode(b"\r\n").unwrap_err().message,
            "empty line (expected 9 fields)"
        );
        // A quote error beyond the header's columns is located by position.
        let beyond = [LINE1, b",\"open"].concat();
        assert!(d
            .decode(&beyond)
            .unwrap_err()
            .message
            .starts_with("field 10 (beyond the header's 9 columns)"));
    }

    #[test]
    fn year_range_is_configurable() {
        let d = CsvDecoder::from_header(
            CSV_HEADER.as_bytes(),
            DecodeOptions {
                min_year: 2020,
                max_year: 2030,
            },
        )
        .unwrap();
        assert_eq!(d.options().min_year, 2020);
        let err = d.decode(LINE1).unwrap_err();
        assert!(
            err.message.contains("outside the accepted years 2020-2030"),
            "{err}"
        );
        // RFC 3339 is accepted too, with its offset applied.
        let line = String::from_utf8_lossy(LINE1)
            .replace("2019-11-01 00:00:00 UTC", "2019-11-01T02:00:00+02:00");
        assert_eq!(
            plain().decode(line.as_bytes()),
            Ok(base(ms_from_civil(2019, 11, 1, 0, 0, 0, 0)))
        );
    }

    /// Mutates a valid line: flips, inserts, deletes or duplicates bytes, favouring the
    /// characters that matter to the grammar.
    pub(crate) fn mutate(rng: &mut XorShift, line: &mut Vec<u8>) {
        const INTERESTING: &[u8] = b",\"\r\n0123456789-.:eE+ \\{}[]tfnu\xff\xc3\x80";
        for _ in 0..=rng.below(4) {
            let at = rng.below(line.len() as u64 + 1) as usize;
            match rng.below(5) {
                0 if at < line.len() => line[at] = *rng.pick(INTERESTING),
                1 => line.insert(at, *rng.pick(INTERESTING)),
                2 if at < line.len() => {
                    line.remove(at);
                }
                3 => line.insert(at, rng.next() as u8),
                _ => line.truncate(at),
            }
        }
    }

    #[test]
    fn never_panics_on_random_or_mutated_input() {
        let (d_plain, d_ext) = (plain(), extended());
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut buf = Vec::new();
        let mut accepted = 0;
        for i in 0..20_000 {
            buf.clear();
            if i % 2 == 0 {
                let len = rng.below(200) as usize;
                buf.extend((0..len).map(|_| rng.next() as u8));
            } else {
                let e = if i % 4 == 1 {
                    sample_events()[rng.below(10) as usize].clone()
                } else {
                    random_event(&mut rng, true)
                };
                write_csv(&e, true, &mut buf);
                mutate(&mut rng, &mut buf);
            }
            for d in [&d_plain, &d_ext] {
                let _ = record_len(&buf);
                if let Ok(e) = d.decode(&buf) {
                    accepted += 1;
                    // Whatever is accepted re-encodes to something that decodes identically.
                    let mut again = Vec::new();
                    write_csv(&e, d.column_count() > 9, &mut again);
                    assert_eq!(d.decode(&again), Ok(e));
                }
            }
            let _ = CsvDecoder::from_header(&buf, DecodeOptions::default());
        }
        assert!(
            accepted > 100,
            "mutations should leave some lines valid, got {accepted}"
        );
    }
}
