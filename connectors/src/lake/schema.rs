//! Arrow schemas of the gold tables, from the tables' declared columns
//! ([`cap_engine::sink::TableSchema`]).
//!
//! | column type | Arrow / Parquet |
//! |---|---|
//! | `bool` | Boolean |
//! | `u_int8`, `u_int32`, `u_int64` | UInt8, UInt32, UInt64 |
//! | `int64` | Int64 |
//! | `float64` | Float64 |
//! | `text` | Utf8 |
//! | `date` | Date32 (days since 1970-01-01) |
//! | `timestamp` | Timestamp(millisecond, "+00:00"): an instant, adjusted to UTC |
//! | `money` | Decimal128(18, 2): exact cents |
//!
//! The changelog adds, before the row's columns, `epoch` (UInt64), `seq` (UInt32: the
//! line's index within its epoch), `diff` (Int8: +1 the row enters, -1 it leaves) and
//! `key` (Utf8: the primary key as the JSON object the Kafka topic keys by).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use cap_engine::sink::{ColumnType, TableSchema};

/// The time zone of timestamp columns: an offset rather than the name `UTC`, since Arrow
/// parses named zones only with chrono-tz.
pub const UTC: &str = "+00:00";

/// The changelog's own leading columns.
pub const CHANGELOG_COLUMNS: [&str; 4] = ["epoch", "seq", "diff", "key"];

fn data_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::UInt8 => DataType::UInt8,
        ColumnType::UInt32 => DataType::UInt32,
        ColumnType::UInt64 => DataType::UInt64,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Text => DataType::Utf8,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
        ColumnType::Money => DataType::Decimal128(18, 2),
    }
}

fn row_fields(schema: &TableSchema) -> Vec<Field> {
    schema
        .columns
        .iter()
        .map(|c| Field::new(c.name.as_str(), data_type(c.ty), c.nullable))
        .collect()
}

/// The snapshot's schema: the row's columns.
pub fn snapshot_schema(schema: &TableSchema) -> Arc<Schema> {
    Arc::new(Schema::new(row_fields(schema)))
}

/// The changelog's schema: `epoch`, `seq`, `diff`, `key`, then the row's columns.
pub fn changelog_schema(schema: &TableSchema) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("epoch", DataType::UInt64, false),
        Field::new("seq", DataType::UInt32, false),
        Field::new("diff", DataType::Int8, false),
        Field::new("key", DataType::Utf8, false),
    ];
    fields.extend(row_fields(schema));
    Arc::new(Schema::new(fields))
}

/// Checks that a table's columns can be stored beside the changelog's own.
pub fn check(schema: &TableSchema) -> Result<(), String> {
    schema.check()?;
    for c in &schema.columns {
        if CHANGELOG_COLUMNS.contains(&c.name.as_str()) {
            return Err(format!(
                "column `{}` clashes with the changelog's own column of that name",
                c.name
            ));
        }
    }
    Ok(())
}
