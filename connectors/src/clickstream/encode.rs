//! Encoders: an [`Event`] as a REES46 CSV row or a JSON object, appended to a byte buffer.
//!
//! The output decodes back to the same event with [`super::csv`] and [`super::json`]
//! (round-trip tested there). CSV fields are quoted (RFC 4180, quotes doubled) only when
//! they contain a comma, a quote or a line break; nulls are empty fields.

use std::io::Write;

use cap_engine::time::format_rees46;

use super::{format_cents, Event};

/// The REES46 header, without the extension columns.
pub const CSV_HEADER: &str =
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
/// The REES46 header with the extension columns `ip,user_agent,channel,country`.
pub const CSV_HEADER_EXTENDED: &str =
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session,ip,user_agent,channel,country";

fn csv_field(out: &mut Vec<u8>, value: Option<&str>) {
    let Some(v) = value else { return };
    if v.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for b in v.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v.as_bytes());
    }
}

/// Appends `event` as one CSV line (with the trailing `\n`).
pub fn write_csv(event: &Event, extended: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(format_rees46(event.event_time).as_bytes());
    out.push(b',');
    out.extend_from_slice(event.event_type.as_str().as_bytes());
    let _ = write!(out, ",{},{},", event.product_id, event.category_id);
    csv_field(out, event.category_code.as_deref());
    out.push(b',');
    csv_field(out, event.brand.as_deref());
    let _ = write!(
        out,
        ",{},{},",
        format_cents(event.price_cents),
        event.user_id
    );
    if let Some(s) = &event.user_session {
        csv_field(out, Some(&s.to_string()));
    }
    if extended {
        out.push(b',');
        csv_field(out, event.ip.as_deref());
        out.push(b',');
        csv_field(out, event.user_agent.as_deref());
        out.push(b',');
        csv_field(out, event.channel.map(|c| c.as_str()));
        out.push(b',');
        csv_field(out, event.country.as_deref());
    }
    out.push(b'\n');
}

fn json_str(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    let _ = write!(out, ",\"{key}\":");
    match value {
        None => out.extend_from_slice(b"null"),
        Some(v) => {
            // serde_json escapes exactly as JSON requires.
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
}

/// Appends `event` as one JSON object (with the trailing `\n`). Ids are JSON numbers,
/// `event_time` uses the REES46 text form, `price` a number with two decimals.
pub fn write_json(event: &Event, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "{{\"event_time\":\"{}\",\"event_type\":\"{}\",\"product_id\":{},\"category_id\":{}",
        format_rees46(event.event_time),
        event.event_type.as_str(),
        event.product_id,
        event.category_id
    );
    json_str(out, "category_code", event.category_code.as_deref());
    json_str(out, "brand", event.brand.as_deref());
    let _ = write!(
        out,
        ",\"price\":{},\"user_id\":{}",
        format_cents(event.price_cents),
        event.user_id
    );
    let session = event.user_session.as_ref().map(|s| s.to_string());
    json_str(out, "user_session", session.as_deref());
    if event.ip.is_some() {
        json_str(out, "ip", event.ip.as_deref());
    }
    if event.user_agent.is_some() {
        json_str(out, "user_agent", event.user_agent.as_deref());
    }
    if let Some(c) = event.channel {
        json_str(out, "channel", Some(c.as_str()));
    }
    if event.country.is_some() {
        json_str(out, "country", event.country.as_deref());
    }
    out.extend_from_slice(b"}\n");
}
