//! Ordering JSON primary keys as the typed keys they were serialized from.
//!
//! Sinks receive each key as JSON text. Text order is wrong for numbers (`{"rank":10}`
//! sorts before `{"rank":2}`), so a snapshot sorted by text would list a ranked table as
//! 1, 10, 2, .... [`JsonKey`] compares the two texts token by token instead: numbers
//! numerically, strings by the UTF-8 bytes of their decoded content, `null` before any
//! value (as `None < Some` in Rust). For keys that serialize a struct or tuple of integers,
//! strings and options, field by field in declaration order (what `serde_json` writes),
//! this is exactly the order of the typed key, which is the order the engine sorts changes
//! in within an epoch.
//!
//! Non-guarantee: keys of different shapes (different fields) still get a total,
//! deterministic order, but not a meaningful one.

use std::borrow::Cow;
use std::cmp::Ordering;

/// A JSON key text with the typed order described in the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonKey(pub String);

impl Ord for JsonKey {
    fn cmp(&self, other: &JsonKey) -> Ordering {
        compare_json(&self.0, &other.0)
    }
}

impl PartialOrd for JsonKey {
    fn partial_cmp(&self, other: &JsonKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two JSON texts token by token (see the module docs); equal texts are equal.
pub fn compare_json(a: &str, b: &str) -> Ordering {
    let (mut ta, mut tb) = (Tokens { s: a, at: 0 }, Tokens { s: b, at: 0 });
    loop {
        match (ta.next(), tb.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match x.cmp_token(&y) {
                Ordering::Equal => {}
                unequal => return unequal,
            },
        }
    }
}

#[derive(Debug)]
enum Token<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    Punct(u8),
}

impl Token<'_> {
    fn kind(&self) -> u8 {
        match self {
            Token::Null => 0,
            Token::Bool(_) => 1,
            Token::Int(_) | Token::Float(_) => 2,
            Token::Str(_) => 3,
            Token::Punct(_) => 4,
        }
    }

    fn cmp_token(&self, other: &Token<'_>) -> Ordering {
        match (self, other) {
            (Token::Bool(x), Token::Bool(y)) => x.cmp(y),
            (Token::Int(x), Token::Int(y)) => x.cmp(y),
            (Token::Int(x), Token::Float(y)) => (*x as f64).total_cmp(y),
            (Token::Float(x), Token::Int(y)) => x.total_cmp(&(*y as f64)),
            (Token::Float(x), Token::Float(y)) => x.total_cmp(y),
            (Token::Str(x), Token::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Token::Punct(x), Token::Punct(y)) => x.cmp(y),
            _ => self.kind().cmp(&other.kind()),
        }
    }
}

struct Tokens<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let bytes = self.s.as_bytes();
        while bytes.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
        let start = self.at;
        let first = *bytes.get(start)?;
        match first {
            b'"' => {
                let mut i = start + 1;
                let mut escaped = false;
                while let Some(&b) = bytes.get(i) {
                    match b {
                        b'\\' => {
                            escaped = true;
                            i += 2;
                        }
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                let end = i.min(bytes.len());
                self.at = (end + 1).min(bytes.len());
                let raw = self.s.get(start..self.at).unwrap_or("");
                let inner = self.s.get(start + 1..end).unwrap_or("");
                if escaped {
                    // Decode escapes so `"\u00e9"` and `"é"` compare as the same text.
                    match serde_json::from_str::<String>(raw) {
                        Ok(decoded) => Some(Token::Str(Cow::Owned(decoded))),
                        Err(_) => Some(Token::Str(Cow::Borrowed(inner))),
                    }
                } else {
                    Some(Token::Str(Cow::Borrowed(inner)))
                }
            }
            b'-' | b'0'..=b'9' => {
                let mut i = start + 1;
                while bytes.get(i).is_some_and(|b| {
                    b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')
                }) {
                    i += 1;
                }
                self.at = i;
                let text = self.s.get(start..i).unwrap_or("");
                Some(match text.parse::<i128>() {
                    Ok(n) => Token::Int(n),
                    Err(_) => Token::Float(text.parse::<f64>().unwrap_or(f64::NAN)),
                })
            }
            b'n' if self.s[start..].starts_with("null") => {
                self.at += 4;
                Some(Token::Null)
            }
            b't' if self.s[start..].starts_with("true") => {
                self.at += 4;
                Some(Token::Bool(true))
            }
            b'f' if self.s[start..].starts_with("false") => {
                self.at += 5;
                Some(Token::Bool(false))
            }
            other => {
                self.at += 1;
                Some(Token::Punct(other))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord, Clone, Debug)]
    struct Key {
        day: String,
        rank: u32,
        delta: i64,
        name: Option<String>,
        id: u64,
    }

    /// A small deterministic generator (splitmix64), so the test needs no extra crate.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn json_keys_sort_like_the_typed_keys() -> anyhow::Result<()> {
        let mut state = 7;
        let names = [
            "",
            "a",
            "ab",
            "b",
            "é",
            "z\"q",
            "a\\b",
            "Zebra",
            "\u{1F600}",
        ];
        let mut keys = Vec::new();
        for _ in 0..3000 {
            let r = next(&mut state);
            keys.push(Key {
                day: format!("2019-11-{:02}", r % 3 + 1),
                rank: (r >> 8) as u32 % 12,
                delta: ((r >> 16) % 2001) as i64 - 1000,
                name: match (r >> 32) % 10 {
                    0 => None,
                    i => names.get(i as usize % names.len()).map(|s| (*s).to_owned()),
                },
                id: if r.is_multiple_of(7) {
                    u64::MAX - (r >> 40)
                } else {
                    r >> 40
                },
            });
        }
        let mut typed = keys.clone();
        typed.sort();
        let mut json: Vec<(JsonKey, Key)> = keys
            .into_iter()
            .map(|k| Ok((JsonKey(serde_json::to_string(&k)?), k)))
            .collect::<anyhow::Result<_>>()?;
        json.sort_by(|a, b| a.0.cmp(&b.0));
        let from_json: Vec<Key> = json.into_iter().map(|(_, k)| k).collect();
        assert_eq!(from_json, typed);
        Ok(())
    }

    #[test]
    fn ranks_sort_numerically_and_floats_compare_with_integers() {
        let mut v: Vec<JsonKey> = ["{\"rank\":10}", "{\"rank\":2}", "{\"rank\":1}"]
            .iter()
            .map(|s| JsonKey((*s).into()))
            .collect();
        v.sort();
        let texts: Vec<&str> = v.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(texts, ["{\"rank\":1}", "{\"rank\":2}", "{\"rank\":10}"]);
        assert_eq!(compare_json("[1.5]", "[2]"), Ordering::Less);
        // Numerically equal, textually different: the text breaks the tie (a total order).
        assert_eq!(compare_json("[2.0]", "[2]"), "[2.0]".cmp("[2]"));
        assert_eq!(compare_json("[null]", "[0]"), Ordering::Less);
    }
}
