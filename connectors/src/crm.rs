//! CRM customer profiles, read as keyed upserts: each message sets a customer's whole
//! profile, and a tombstone (a message with no value) deletes it.
//!
//! ```text
//!  Kafka topic `crm-profiles` (keyed by user id, compacted)
//!    key "520088904"  value {"user_id":520088904,"tier":"gold","country":"DE",...}
//!    key "520088904"  value null                       -> the profile is deleted
//!         │ ProfileDecoder
//!         ▼
//!  ProfileUpsert { user_id, seq: (offset, partition), profile: Some(..) | None }
//!         │ cap_operators::upsert::latest_by_key
//!         ▼
//!  collection (user_id, CrmProfile): each customer's current profile
//! ```
//!
//! # What a message holds
//! The key: the user id as decimal digits, optionally as a JSON string (`"42"`), or absent.
//! The value: one JSON object, or nothing (a tombstone, which needs a key). Fields:
//!
//! | field | accepted values | in [`CrmProfile`] |
//! |---|---|---|
//! | `user_id` | an unsigned integer, or a string of decimal digits; required unless the key gives it, and equal to the key when both do | `user_id` |
//! | `updated_at` | a time text (RFC 3339 or REES46) or epoch milliseconds | `updated_at_ms` |
//! | `signup_time` | as `updated_at` | `signup_ms` |
//! | `email_opt_in` | `true` or `false` (missing: `false`) | `email_opt_in` |
//! | `tier`, `country`, `city` | a string (`""` is null) | the same names |
//! | `birth_year` | an integer from 1900 to 2100 | `birth_year` |
//! | `lifetime_value` | a decimal number or string: money, kept as integer cents | `lifetime_value_cents` |
//! | any other field | a string, number or boolean (kept as its text); objects and arrays as compact JSON | `attributes`, sorted by name |
//!
//! `null` is the same as a missing field. Anything else (invalid JSON, a value of the wrong
//! type, a key that disagrees with `user_id`) makes the message a dead letter naming the
//! partition, the offset and the field.
//!
//! # Order
//! A record's `seq` is `(offset, partition index)`: a topic's records for one key are in
//! offset order when the producer keys by user id (Kafka keeps a key on one partition),
//! which is the order `cap_operators::upsert::latest_by_key` applies them
//! in. `updated_at` is carried, not used for ordering: the log's order is the truth, as in
//! a compacted topic.
//!
//! # Cost
//! Profiles change far less often than clickstream events arrive; a message is parsed
//! through `serde_json::Value`, a few microseconds each.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clickstream::parse_price_cents;
use crate::clickstream::timestamp::parse_event_time;

/// A customer's CRM profile: what the CRM system last said about them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CrmProfile {
    /// The customer (the clickstream's `user_id`).
    pub user_id: u64,
    /// When the CRM last changed the profile, epoch ms.
    pub updated_at_ms: Option<i64>,
    /// When the customer signed up, epoch ms.
    pub signup_ms: Option<i64>,
    /// Whether the customer agreed to marketing e-mail.
    pub email_opt_in: bool,
    /// Loyalty tier (`bronze`, `gold`, ... as the CRM names them).
    pub tier: Option<CompactString>,
    /// Country code or name, as the CRM gives it.
    pub country: Option<CompactString>,
    /// City.
    pub city: Option<CompactString>,
    /// Year of birth.
    pub birth_year: Option<u16>,
    /// Lifetime value in integer cents.
    pub lifetime_value_cents: Option<i64>,
    /// Every other field, by name (sorted), with its value as text.
    pub attributes: Vec<(CompactString, CompactString)>,
}

/// The order of an upsert in its source: `(offset, partition index)`.
pub type UpsertSeq = (u64, u32);

/// One keyed upsert of a profile: set it (`Some`) or delete it (`None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProfileUpsert {
    /// The customer.
    pub user_id: u64,
    /// Where the upsert sits in its source; later wins.
    pub seq: UpsertSeq,
    /// The new profile, or `None` for a deletion.
    pub profile: Option<CrmProfile>,
}

impl ProfileUpsert {
    /// The `(key, seq, value)` triple `cap_operators::upsert::latest_by_key` reads.
    pub fn into_log(self) -> (u64, UpsertSeq, Option<CrmProfile>) {
        (self.user_id, self.seq, self.profile)
    }
}

/// Decodes one message (key and value) at `seq` into a [`ProfileUpsert`], or says why not.
pub fn decode_upsert(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    seq: UpsertSeq,
) -> Result<ProfileUpsert, String> {
    let key_id = match key {
        None | Some(b"") => None,
        Some(k) => Some(parse_key(k)?),
    };
    let value = value.filter(|v| !v.iter().all(u8::is_ascii_whitespace));
    let Some(bytes) = value else {
        return match key_id {
            Some(user_id) => Ok(ProfileUpsert {
                user_id,
                seq,
                profile: None,
            }),
            None => Err(
                "a tombstone (no value) without a key: which profile to delete is unknown".into(),
            ),
        };
    };
    let profile = decode_profile(bytes, key_id)?;
    Ok(ProfileUpsert {
        user_id: profile.user_id,
        seq,
        profile: Some(profile),
    })
}

/// The user id of a message key: decimal digits, or a JSON string of them.
fn parse_key(key: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(key)
        .map_err(|_| format!("key {:?} is not UTF-8", String::from_utf8_lossy(key)))?;
    let digits = text
        .trim()
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text.trim());
    digits
        .parse::<u64>()
        .map_err(|_| format!("key `{text}` is not a user id (decimal digits)"))
}

/// Decodes a profile object; `key_id` is the message key's user id, if any.
fn decode_profile(bytes: &[u8], key_id: Option<u64>) -> Result<CrmProfile, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "expected a JSON object (a profile) or no value (a deletion), found {}",
            json_kind(&value)
        ));
    };
    let mut p = CrmProfile {
        user_id: 0,
        updated_at_ms: None,
        signup_ms: None,
        email_opt_in: false,
        tier: None,
        country: None,
        city: None,
        birth_year: None,
        lifetime_value_cents: None,
        attributes: Vec::new(),
    };
    let mut user_id = None;
    let mut attributes: BTreeMap<CompactString, CompactString> = BTreeMap::new();
    for (name, v) in &fields {
        if v.is_null() {
            continue;
        }
        let field = |why: String| format!("field `{name}`: {why}");
        match name.as_str() {
            "user_id" => user_id = Some(unsigned(v).map_err(field)?),
            "updated_at" => p.updated_at_ms = Some(time(v).map_err(field)?),
            "signup_time" => p.signup_ms = Some(time(v).map_err(field)?),
            "email_opt_in" => {
                p.email_opt_in = v
                    .as_bool()
                    .ok_or_else(|| field(format!("expected true or false, found {v}")))?
            }
            "tier" => p.tier = text(v).map_err(field)?,
            "country" => p.country = text(v).map_err(field)?,
            "city" => p.city = text(v).map_err(field)?,
            "birth_year" => {
                let year = v
                    .as_u64()
                    .filter(|y| (1900..=2100).contains(y))
                    .ok_or_else(|| {
                        field(format!("expected a year from 1900 to 2100, found {v}"))
                    })?;
                p.birth_year = Some(year as u16);
            }
            "lifetime_value" => p.lifetime_value_cents = Some(money(v).map_err(field)?),
            _ => {
                let text = match v {
                    Value::String(s) => CompactString::from(s.as_str()),
                    other => CompactString::from(other.to_string()),
                };
                attributes.insert(CompactString::from(name.as_str()), text);
            }
        }
    }
    p.user_id = match (user_id, key_id) {
        (Some(v), Some(k)) if v != k => {
            return Err(format!(
                "the key says user {k} but field `user_id` says {v}"
            ))
        }
        (Some(v), _) => v,
        (None, Some(k)) => k,
        (None, None) => {
            return Err("missing field `user_id`, and the message has no key".into());
        }
    };
    p.attributes = attributes.into_iter().collect();
    Ok(p)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn unsigned(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("`{n}` is not an unsigned integer")),
        Value::String(s) => s
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not an unsigned integer")),
        other => Err(format!(
            "expected an unsigned integer, found {}",
            json_kind(other)
        )),
    }
}

fn time(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("`{n}` is not an integer number of epoch milliseconds")),
        Value::String(s) => parse_event_time(s.as_bytes()).ok_or_else(|| {
            format!("`{s}` is not a time (RFC 3339, `2019-11-01 00:00:00 UTC`, or epoch ms)")
        }),
        other => Err(format!("expected a time, found {}", json_kind(other))),
    }
}

fn text(v: &Value) -> Result<Option<CompactString>, String> {
    match v {
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(CompactString::from(s.as_str()))),
        other => Err(format!("expected a string, found {}", json_kind(other))),
    }
}

fn money(v: &Value) -> Result<i64, String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => {
            return Err(format!(
                "expected a decimal amount, found {}",
                json_kind(other)
            ))
        }
    };
    parse_price_cents(text.as_bytes())
        .map_err(|_| format!("`{text}` is not a finite decimal amount"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_decodes_every_field_and_keeps_the_rest_as_attributes() -> Result<(), String> {
        let up = decode_upsert(
            Some(b"42"),
            Some(
                br#"{"user_id":42,"tier":"gold","country":"DE","city":"","birth_year":1990,
                "email_opt_in":true,"lifetime_value":"1234.565","updated_at":"2019-11-01T00:00:00Z",
                "signup_time":1500000000000,"favourite_brand":"apple","kids":2,"tags":["a","b"],"note":null}"#,
            ),
            (7, 1),
        )?;
        assert_eq!((up.user_id, up.seq), (42, (7, 1)));
        let p = up.profile.ok_or("no profile")?;
        assert_eq!(p.tier.as_deref(), Some("gold"));
        assert_eq!((p.country.as_deref(), p.city), (Some("DE"), None));
        assert_eq!((p.birth_year, p.email_opt_in), (Some(1990), true));
        assert_eq!(p.lifetime_value_cents, Some(123_457)); // half away from zero
        assert_eq!(p.updated_at_ms, Some(1_572_566_400_000));
        assert_eq!(p.signup_ms, Some(1_500_000_000_000));
        let attrs: Vec<(&str, &str)> = p
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            attrs,
            vec![
                ("favourite_brand", "apple"),
                ("kids", "2"),
                ("tags", r#"["a","b"]"#)
            ]
        );
        Ok(())
    }

    #[test]
    fn the_key_alone_identifies_a_profile_or_a_deletion() -> Result<(), String> {
        let up = decode_upsert(Some(br#""17""#), Some(br#"{"tier":"silver"}"#), (0, 0))?;
        assert_eq!(up.user_id, 17);
        let del = decode_upsert(Some(b"17"), None, (1, 0))?;
        assert_eq!((del.user_id, del.profile), (17, None));
        let blank = decode_upsert(Some(b"17"), Some(b"  \n"), (2, 0))?;
        assert_eq!(blank.profile, None);
        let keyless = decode_upsert(None, Some(br#"{"user_id":"9"}"#), (3, 0))?;
        assert_eq!(keyless.user_id, 9);
        Ok(())
    }

    #[test]
    fn bad_messages_say_which_field_and_why() {
        let err = |k: Option<&[u8]>, v: Option<&[u8]>| {
            decode_upsert(k, v, (0, 0)).err().unwrap_or_default()
        };
        assert!(err(None, None).contains("without a key"));
        assert!(err(Some(b"x1"), None).contains("key `x1` is not a user id"));
        assert!(err(Some(b"5"), Some(br#"{"user_id":6}"#)).contains("key says user 5"));
        assert!(err(None, Some(br#"{"tier":"gold"}"#)).contains("missing field `user_id`"));
        assert!(err(None, Some(b"[1]")).contains("found an array"));
        assert!(err(None, Some(b"{\"user_id\":1")).contains("invalid JSON"));
        assert!(err(None, Some(br#"{"user_id":-1}"#)).contains("field `user_id`"));
        assert!(err(None, Some(br#"{"user_id":1,"tier":3}"#))
            .contains("field `tier`: expected a string"));
        assert!(
            err(None, Some(br#"{"user_id":1,"birth_year":1800}"#)).contains("field `birth_year`")
        );
        assert!(err(None, Some(br#"{"user_id":1,"email_opt_in":"yes"}"#))
            .contains("field `email_opt_in`"));
        assert!(err(None, Some(br#"{"user_id":1,"lifetime_value":"lots"}"#))
            .contains("field `lifetime_value`"));
        assert!(
            err(None, Some(br#"{"user_id":1,"updated_at":"soon"}"#)).contains("field `updated_at`")
        );
    }
}
