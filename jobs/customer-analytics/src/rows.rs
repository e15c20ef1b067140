//! Output rows of the customer-analytics tables, with their primary keys and JSON forms
//! (see `docs/output-contract.md`).

use cap_engine::dead_letter::DeadLetter;
use cap_engine::sink::{TableRow, TableSchema};
use cap_engine::time::UtcDay;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// `daily_visitors`: per UTC day, distinct visitors, distinct sessions and events.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DailyVisitorsRow {
    /// The day (`YYYY-MM-DD`).
    pub day: UtcDay,
    /// Distinct user_id with any event that day.
    pub visitors: u64,
    /// Distinct non-null user_session with an event that day.
    pub sessions: u64,
    /// Events that day.
    pub events: u64,
}

/// Primary key of `daily_visitors`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DayKey {
    /// The day.
    pub day: UtcDay,
}

impl TableRow for DailyVisitorsRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["day"],
            &[
                ("day", Date),
                ("visitors", UInt64),
                ("sessions", UInt64),
                ("events", UInt64),
            ],
        ))
    }
    type Key = DayKey;
    fn key(&self) -> DayKey {
        DayKey { day: self.day }
    }
}

/// The funnel's step names, 1-based.
pub const STEP_NAMES: [&str; 3] = ["view", "cart", "purchase"];

/// `session_funnel_daily`: per day (of the session's first event) and step, the sessions
/// that reached at least that step.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FunnelRow {
    /// Day of the sessions' first event.
    pub day: UtcDay,
    /// Step, 1-based.
    pub step: u8,
    /// Sessions that reached at least this step.
    pub sessions: u64,
    /// Sessions that reached step 1 that day (the conversion denominator).
    pub step1_sessions: u64,
}

/// The wire form of [`FunnelRow`] between workers.
#[derive(Serialize, Deserialize)]
struct FunnelWire {
    day: UtcDay,
    step: u8,
    sessions: u64,
    step1_sessions: u64,
}

/// Human-readable formats (JSON output) get the contract's columns, `step_name` and
/// `conversion` included; binary formats (bincode between workers) get the four fields.
impl Serialize for FunnelRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return FunnelWire {
                day: self.day,
                step: self.step,
                sessions: self.sessions,
                step1_sessions: self.step1_sessions,
            }
            .serialize(s);
        }
        let mut st = s.serialize_struct("FunnelRow", 5)?;
        st.serialize_field("day", &self.day)?;
        st.serialize_field("step", &self.step)?;
        st.serialize_field(
            "step_name",
            STEP_NAMES
                .get(usize::from(self.step).wrapping_sub(1))
                .copied()
                .unwrap_or("?"),
        )?;
        st.serialize_field("sessions", &self.sessions)?;
        struct Ratio(u64, u64);
        impl Serialize for Ratio {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::ratio(self.0, self.1, s)
            }
        }
        st.serialize_field("conversion", &Ratio(self.sessions, self.step1_sessions))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for FunnelRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FunnelRow, D::Error> {
        let w = FunnelWire::deserialize(d)?;
        Ok(FunnelRow {
            day: w.day,
            step: w.step,
            sessions: w.sessions,
            step1_sessions: w.step1_sessions,
        })
    }
}

/// Primary key of `session_funnel_daily`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DayStepKey {
    /// The day.
    pub day: UtcDay,
    /// The step.
    pub step: u8,
}

impl TableRow for FunnelRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["day", "step"],
            &[
                ("day", Date),
                ("step", UInt8),
                ("step_name", Text),
                ("sessions", UInt64),
                ("conversion", Float64),
            ],
        ))
    }
    type Key = DayStepKey;
    fn key(&self) -> DayStepKey {
        DayStepKey {
            day: self.day,
            step: self.step,
        }
    }
}

/// `dead_letters`: a record that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// Source name and partition (`clickstream:events.csv`).
    pub source: String,
    /// Line or offset within the partition.
    pub position: u64,
    /// Why it was rejected.
    pub reason: String,
    /// The raw record as text (invalid UTF-8 replaced by U+FFFD), at most 4 KiB of bytes.
    pub raw: String,
    /// Whether `raw` was truncated.
    pub truncated: bool,
}

impl From<&DeadLetter> for DeadLetterRow {
    fn from(d: &DeadLetter) -> DeadLetterRow {
        DeadLetterRow {
            source: d.source.clone(),
            position: d.position,
            reason: d.reason.clone(),
            raw: String::from_utf8_lossy(&d.raw).into_owned(),
            truncated: d.truncated,
        }
    }
}

/// Primary key of `dead_letters`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SourcePositionKey {
    /// Source and partition.
    pub source: String,
    /// Position.
    pub position: u64,
}

impl TableRow for DeadLetterRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["source", "position"],
            &[
                ("source", Text),
                ("position", UInt64),
                ("reason", Text),
                ("raw", Text),
                ("truncated", Bool),
            ],
        ))
    }
    type Key = SourcePositionKey;
    fn key(&self) -> SourcePositionKey {
        SourcePositionKey {
            source: self.source.clone(),
            position: self.position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a row whose JSON form differs from its wire form must still round-trip
    /// through bincode, or rows exchanged between processes arrive as garbage.
    #[test]
    fn rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let day = UtcDay(cap_engine::time::days_from_civil(2019, 11, 3));
        let f = FunnelRow {
            day,
            step: 2,
            sessions: 40,
            step1_sessions: 100,
        };
        assert_eq!(
            bincode::deserialize::<FunnelRow>(&bincode::serialize(&f)?)?,
            f
        );
        let json: serde_json::Value = serde_json::to_value(&f)?;
        assert_eq!(
            json,
            serde_json::json!({"day": "2019-11-03", "step": 2, "step_name": "cart", "sessions": 40, "conversion": 0.4})
        );
        let v = DailyVisitorsRow {
            day,
            visitors: 1,
            sessions: 2,
            events: 3,
        };
        assert_eq!(
            bincode::deserialize::<DailyVisitorsRow>(&bincode::serialize(&v)?)?,
            v
        );
        let d = DeadLetterRow {
            source: "s:f".into(),
            position: 7,
            reason: "bad".into(),
            raw: "x".into(),
            truncated: false,
        };
        assert_eq!(
            bincode::deserialize::<DeadLetterRow>(&bincode::serialize(&d)?)?,
            d
        );
        Ok(())
    }
}
