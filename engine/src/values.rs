//! Value types for output rows whose JSON form differs from their wire form.
//!
//! Rows travel between workers with bincode (compact, exact) and reach readers as JSON
//! (readable). serde's `is_human_readable()` tells the two apart: [`Money`] is integer
//! cents on the wire and a JSON number with exactly two decimals (`1682.00`) in output;
//! [`Ratio`] is a numerator and denominator on the wire and a JSON number rounded to six
//! decimals (0 when the denominator is 0) in output. Both deserialize from either form.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of money in integer cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

impl Money {
    /// `-0.05`, `1682.00`.
    pub fn to_decimal(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match serde_json::value::RawValue::from_string(self.to_decimal()) {
                Ok(raw) => raw.serialize(s),
                Err(e) => Err(serde::ser::Error::custom(e)),
            }
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        if d.is_human_readable() {
            let v = f64::deserialize(d)?;
            Ok(Money((v * 100.0).round() as i64))
        } else {
            i64::deserialize(d).map(Money)
        }
    }
}

/// A ratio `num / den` (0 when `den` is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ratio {
    /// Numerator.
    pub num: i64,
    /// Denominator.
    pub den: i64,
}

impl Ratio {
    /// `num / den`.
    pub fn new(num: i64, den: i64) -> Ratio {
        Ratio { num, den }
    }
    /// The value rounded to six decimals, 0 when the denominator is 0.
    pub fn value(self) -> f64 {
        if self.den == 0 {
            0.0
        } else {
            ((self.num as f64 / self.den as f64) * 1e6).round() / 1e6
        }
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_f64(self.value())
        } else {
            (self.num, self.den).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ratio, D::Error> {
        if d.is_human_readable() {
            // The output form lost the parts; keep the value at micro resolution.
            let v = f64::deserialize(d)?;
            Ok(Ratio {
                num: (v * 1e6).round() as i64,
                den: 1_000_000,
            })
        } else {
            <(i64, i64)>::deserialize(d).map(|(num, den)| Ratio { num, den })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_two_decimals_in_json_and_cents_on_the_wire() -> anyhow::Result<()> {
        assert_eq!(serde_json::to_string(&Money(168200))?, "1682.00");
        assert_eq!(serde_json::to_string(&Money(-5))?, "-0.05");
        assert_eq!(serde_json::from_str::<Money>("1682.00")?, Money(168200));
        let wire = bincode::serialize(&Money(12345))?;
        assert_eq!(bincode::deserialize::<Money>(&wire)?, Money(12345));
        Ok(())
    }

    #[test]
    fn ratio_is_a_rounded_number_in_json_and_exact_on_the_wire() -> anyhow::Result<()> {
        assert_eq!(serde_json::to_string(&Ratio::new(1, 3))?, "0.333333");
        assert_eq!(serde_json::to_string(&Ratio::new(5, 0))?, "0.0");
        let r = Ratio::new(2, 7);
        assert_eq!(bincode::deserialize::<Ratio>(&bincode::serialize(&r)?)?, r);
        Ok(())
    }
}
