//! Packed rows: an output row's columns as typed binary values, so that a sink storing
//! columns (the Parquet lakehouse) never formats or parses JSON.
//!
//! ```text
//!  row (Serialize) --pack(row, schema)--> bytes: [tag][value] per column, in schema order
//!  bytes --for_each_cell(bytes, schema)--> one Cell per column --> column builders
//! ```
//!
//! A row is packed from the same serde form as its JSON (`is_human_readable()` is true),
//! so the packed row holds exactly the values of the JSON row, each read by its column's
//! declared type ([`ColumnType`]):
//!
//! | column type | takes | cell |
//! |---|---|---|
//! | `bool` | a bool | `Bool` |
//! | `u_int8`, `u_int32`, `u_int64` | an integer in range | `UInt` |
//! | `int64` | an integer in range | `Int` |
//! | `float64` | a number | `Float` |
//! | `text` | a string, a char or a unit enum variant | `Text` |
//! | `date` | `YYYY-MM-DD` text, or a day number | `Int` (days since 1970-01-01) |
//! | `timestamp` | RFC 3339 UTC text, or milliseconds | `Int` (ms since the epoch) |
//! | `money` | a number of units (a decimal, as [`crate::values::Money`] prints) | `Int` (cents) |
//!
//! Nullable columns take `None`, `()` or JSON `null` as a null, and may be left out of
//! the row. A row is a struct whose fields come in schema order (as `#[derive(Serialize)]`
//! gives them), or a map (such as a `serde_json::Value` object) in any order.
//!
//! Encoding, per column in schema order: a nullable column starts with a tag byte (0 null,
//! 1 a value); then `bool` and `u_int8` 1 byte, `u_int32` and `date` 4, `u_int64`,
//! `int64`, `timestamp`, `money` and `float64` 8 (little-endian, floats as IEEE bits),
//! `text` a 4-byte length and its UTF-8.
//!
//! Guarantees: a typed row and its JSON (parsed to a `serde_json::Value`) pack to the same
//! bytes; a value that does not fit its column is an error naming the column, never a
//! silently different value. Non-guarantees: the bytes are not a storage format (they live
//! in memory between a sink operator and its writer) and are not self-describing: they are
//! read with the schema they were packed with.

use std::fmt::Display;

use serde::ser::{self, Impossible, Serialize};

use crate::sink::{Column, ColumnType, TableSchema};

/// One column's value in a packed row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// No value (nullable columns only).
    Null,
    /// A `bool` column.
    Bool(bool),
    /// A `u_int8`, `u_int32` or `u_int64` column.
    UInt(u64),
    /// An `int64` column; a `timestamp` (ms), `money` (cents) or `date` (days).
    Int(i64),
    /// A `float64` column.
    Float(f64),
    /// A `text` column.
    Text(&'a str),
}

/// A value that does not fit its column, or packed bytes that do not fit their schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PackError(String);

impl PackError {
    /// An error saying `what`.
    pub fn new(what: impl Into<String>) -> PackError {
        PackError(what.into())
    }
}

impl ser::Error for PackError {
    fn custom<T: Display>(msg: T) -> Self {
        PackError(msg.to_string())
    }
}

/// Packs `row` by `schema` into `out` (appended). On an error `out` holds a partial row
/// and should be discarded.
pub fn pack<T: Serialize + ?Sized>(
    row: &T,
    schema: &TableSchema,
    out: &mut Vec<u8>,
) -> Result<(), PackError> {
    row.serialize(RowPacker { schema, out })
}

/// Appends one cell of `column` to a packed row.
pub fn push_cell(out: &mut Vec<u8>, column: &Column, cell: Cell<'_>) -> Result<(), PackError> {
    use ColumnType::*;
    if cell == Cell::Null {
        if !column.nullable {
            return Err(PackError(format!(
                "column `{}`: null, and the column is not nullable",
                column.name
            )));
        }
        out.push(0);
        return Ok(());
    }
    if column.nullable {
        out.push(1);
    }
    let range = |v: &dyn Display| {
        PackError(format!(
            "column `{}`: {v} is out of range for {:?}",
            column.name, column.ty
        ))
    };
    match (column.ty, cell) {
        (Bool, Cell::Bool(b)) => out.push(u8::from(b)),
        (UInt8, Cell::UInt(v)) => out.push(u8::try_from(v).map_err(|_| range(&v))?),
        (UInt32, Cell::UInt(v)) => {
            out.extend_from_slice(&u32::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (UInt64, Cell::UInt(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (Int64 | Timestamp | Money, Cell::Int(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (Date, Cell::Int(v)) => {
            out.extend_from_slice(&i32::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Float64, Cell::Float(v)) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        (Text, Cell::Text(s)) => {
            let len = u32::try_from(s.len()).map_err(|_| range(&s.len()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        (ty, cell) => {
            return Err(PackError(format!(
                "column `{}`: {cell:?} is not a {ty:?} cell",
                column.name
            )))
        }
    }
    Ok(())
}

/// Reads a packed row: calls `each` with every column's index and cell, in schema order.
pub fn for_each_cell<'a>(
    bytes: &'a [u8],
    schema: &TableSchema,
    mut each: impl FnMut(usize, Cell<'a>),
) -> Result<(), PackError> {
    let mut rest = bytes;
    let short = |c: &Column| PackError(format!("packed row ends inside column `{}`", c.name));
    for (i, column) in schema.columns.iter().enumerate() {
        let mut take = |n: usize| -> Result<&'a [u8], PackError> {
            if rest.len() < n {
                return Err(short(column));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if column.nullable && take(1)?[0] == 0 {
            each(i, Cell::Null);
            continue;
        }
        let le8 = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            a
        };
        let le4 = |b: &[u8]| {
            let mut a = [0u8; 4];
            a.copy_from_slice(b);
            a
        };
        let cell = match column.ty {
            ColumnType::Bool => Cell::Bool(take(1)?[0] != 0),
            ColumnType::UInt8 => Cell::UInt(u64::from(take(1)?[0])),
            ColumnType::UInt32 => Cell::UInt(u64::from(u32::from_le_bytes(le4(take(4)?)))),
            ColumnType::UInt64 => Cell::UInt(u64::from_le_bytes(le8(take(8)?))),
            ColumnType::Int64 | ColumnType::Timestamp | ColumnType::Money => {
                Cell::Int(i64::from_le_bytes(le8(take(8)?)))
            }
            ColumnType::Date => Cell::Int(i64::from(i32::from_le_bytes(le4(take(4)?)))),
            ColumnType::Float64 => Cell::Float(f64::from_bits(u64::from_le_bytes(le8(take(8)?)))),
            ColumnType::Text => {
                let len = u32::from_le_bytes(le4(take(4)?)) as usize;
                let text = std::str::from_utf8(take(len)?).map_err(|e| {
                    PackError(format!(
                        "column `{}`: packed text is not UTF-8: {e}",
                        column.name
                    ))
                })?;
                Cell::Text(text)
            }
        };
        each(i, cell);
    }
    if !rest.is_empty() {
        return Err(PackError(format!(
            "packed row has {} bytes after its last column",
            rest.len()
        )));
    }
    Ok(())
}

/// Exact cents of a decimal like `-1682.5` or `12.00`; `None` for other forms (exponents,
/// more than two non-zero decimals).
fn decimal_cents(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let (cents_text, beyond) = fraction.split_at(fraction.len().min(2));
    if beyond.bytes().any(|b| b != b'0') {
        return None;
    }
    let mut cents: i64 = whole.parse::<i64>().ok()?.checked_mul(100)?;
    let frac: i64 = format!("{cents_text:0<2}").parse().ok()?;
    cents = cents.checked_add(frac)?;
    Some(if negative { -cents } else { cents })
}

/// Turns the serde values of one column into its cell.
struct CellPacker<'s> {
    column: &'s Column,
    out: &'s mut Vec<u8>,
}

impl CellPacker<'_> {
    fn unfit(&self, what: impl Display) -> PackError {
        PackError(format!(
            "column `{}`: {what} does not fit a {:?} column",
            self.column.name, self.column.ty
        ))
    }

    fn push(self, cell: Cell<'_>) -> Result<(), PackError> {
        push_cell(self.out, self.column, cell)
    }

    fn int(self, v: i64) -> Result<(), PackError> {
        use ColumnType::*;
        match self.column.ty {
            UInt8 | UInt32 | UInt64 => match u64::try_from(v) {
                Ok(u) => self.push(Cell::UInt(u)),
                Err(_) => Err(self.unfit(v)),
            },
            Int64 | Timestamp | Date => self.push(Cell::Int(v)),
            Money => match v.checked_mul(100) {
                Some(cents) => self.push(Cell::Int(cents)),
                None => Err(self.unfit(v)),
            },
            Float64 => self.push(Cell::Float(v as f64)),
            Bool | Text => Err(self.unfit(format!("the integer {v}"))),
        }
    }

    fn uint(self, v: u64) -> Result<(), PackError> {
        match self.column.ty {
            ColumnType::UInt8 | ColumnType::UInt32 | ColumnType::UInt64 => self.push(Cell::UInt(v)),
            ColumnType::Float64 => self.push(Cell::Float(v as f64)),
            _ => match i64::try_from(v) {
                Ok(i) => self.int(i),
                Err(_) => Err(self.unfit(v)),
            },
        }
    }

    fn float(self, v: f64) -> Result<(), PackError> {
        match self.column.ty {
            ColumnType::Float64 => self.push(Cell::Float(v)),
            ColumnType::Money if v.is_finite() && (v * 100.0).abs() < 9.2e18 => {
                self.push(Cell::Int((v * 100.0).round() as i64))
            }
            _ => Err(self.unfit(format!("the number {v}"))),
        }
    }

    fn text(self, v: &str) -> Result<(), PackError> {
        match self.column.ty {
            ColumnType::Text => self.push(Cell::Text(v)),
            ColumnType::Timestamp => match crate::time::parse_rfc3339(v) {
                Some(ms) => self.push(Cell::Int(ms)),
                None => Err(self.unfit(format!("text `{v}` (expected 2019-11-01T13:05:09Z)"))),
            },
            ColumnType::Date => match crate::time::parse_day(v) {
                Some(day) => self.push(Cell::Int(i64::from(day))),
                None => Err(self.unfit(format!("text `{v}` (expected YYYY-MM-DD)"))),
            },
            _ => Err(self.unfit(format!("text `{v}`"))),
        }
    }

    /// The text of a `serde_json::value::RawValue` (how [`crate::values::Money`] prints).
    fn raw(self, json: &str) -> Result<(), PackError> {
        let json = json.trim();
        match json {
            "null" => return self.push(Cell::Null),
            "true" => return self.bool(true),
            "false" => return self.bool(false),
            _ => {}
        }
        if json.starts_with('"') {
            let text: String = serde_json::from_str(json)
                .map_err(|e| self.unfit(format!("raw JSON `{json}` ({e})")))?;
            return self.text(&text);
        }
        if self.column.ty == ColumnType::Money {
            if let Some(cents) = decimal_cents(json) {
                return self.push(Cell::Int(cents));
            }
        }
        if let Ok(v) = json.parse::<i64>() {
            return self.int(v);
        }
        if let Ok(v) = json.parse::<u64>() {
            return self.uint(v);
        }
        match json.parse::<f64>() {
            Ok(v) => self.float(v),
            Err(_) => Err(self.unfit(format!("raw JSON `{json}`"))),
        }
    }

    fn bool(self, v: bool) -> Result<(), PackError> {
        match self.column.ty {
            ColumnType::Bool => self.push(Cell::Bool(v)),
            _ => Err(self.unfit(v)),
        }
    }
}

/// The token `serde_json` names a `RawValue` by when serializing it.
const RAW_VALUE: &str = "$serde_json::private::RawValue";

impl<'s> ser::Serializer for CellPacker<'s> {
    type Ok = ();
    type Error = PackError;
    type SerializeSeq = Impossible<(), PackError>;
    type SerializeTuple = Impossible<(), PackError>;
    type SerializeTupleStruct = Impossible<(), PackError>;
    type SerializeTupleVariant = Impossible<(), PackError>;
    type SerializeMap = Impossible<(), PackError>;
    type SerializeStruct = RawCell<'s>;
    type SerializeStructVariant = Impossible<(), PackError>;

    fn serialize_bool(self, v: bool) -> Result<(), PackError> {
        self.bool(v)
    }
    fn serialize_i8(self, v: i8) -> Result<(), PackError> {
        self.int(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), PackError> {
        self.int(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), PackError> {
        self.int(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), PackError> {
        self.int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), PackError> {
        self.uint(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), PackError> {
        self.uint(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), PackError> {
        self.uint(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), PackError> {
        self.uint(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), PackError> {
        self.float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), PackError> {
        self.float(v)
    }
    fn serialize_char(self, v: char) -> Result<(), PackError> {
        self.text(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), PackError> {
        self.text(v)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), PackError> {
        Err(self.unfit("bytes"))
    }
    fn serialize_none(self) -> Result<(), PackError> {
        self.push(Cell::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PackError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), PackError> {
        self.push(Cell::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), PackError> {
        self.push(Cell::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), PackError> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), PackError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<(), PackError> {
        Err(self.unfit(format!("the enum variant `{variant}` with a value")))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, PackError> {
        Err(self.unfit("a list"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, PackError> {
        Err(self.unfit("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, PackError> {
        Err(self.unfit("a tuple"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, PackError> {
        Err(self.unfit("an enum variant with values"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, PackError> {
        Err(self.unfit("a nested object"))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, PackError> {
        if name == RAW_VALUE {
            Ok(RawCell { cell: Some(self) })
        } else {
            Err(self.unfit(format!("the nested struct `{name}`")))
        }
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, PackError> {
        Err(self.unfit(format!("the enum variant `{variant}` with fields")))
    }
}

/// A `RawValue` in a column: its one field is the JSON text.
struct RawCell<'s> {
    cell: Option<CellPacker<'s>>,
}

impl ser::SerializeStruct for RawCell<'_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), PackError> {
        let cell = self
            .cell
            .take()
            .ok_or_else(|| PackError("a raw JSON value with two fields".into()))?;
        let json = value.serialize(TextOnly)?;
        cell.raw(&json)
    }
    fn end(self) -> Result<(), PackError> {
        match self.cell {
            None => Ok(()),
            Some(cell) => Err(cell.unfit("an empty raw JSON value")),
        }
    }
}

/// Serializes a string (the text of a `RawValue`), refusing anything else.
struct TextOnly;

fn not_text() -> PackError {
    PackError("a raw JSON value that is not text".into())
}

impl ser::Serializer for TextOnly {
    type Ok = String;
    type Error = PackError;
    type SerializeSeq = Impossible<String, PackError>;
    type SerializeTuple = Impossible<String, PackError>;
    type SerializeTupleStruct = Impossible<String, PackError>;
    type SerializeTupleVariant = Impossible<String, PackError>;
    type SerializeMap = Impossible<String, PackError>;
    type SerializeStruct = Impossible<String, PackError>;
    type SerializeStructVariant = Impossible<String, PackError>;

    fn serialize_str(self, v: &str) -> Result<String, PackError> {
        Ok(v.to_owned())
    }
    fn serialize_bool(self, _v: bool) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_i8(self, _v: i8) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_i16(self, _v: i16) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_i32(self, _v: i32) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_i64(self, _v: i64) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_u8(self, _v: u8) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_u16(self, _v: u16) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_u32(self, _v: u32) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_u64(self, _v: u64) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_f32(self, _v: f32) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_f64(self, _v: f64) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_char(self, _v: char) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_none(self) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_unit(self) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _value: &T,
    ) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, PackError> {
        Err(not_text())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, PackError> {
        Err(not_text())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, PackError> {
        Err(not_text())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, PackError> {
        Err(not_text())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, PackError> {
        Err(not_text())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, PackError> {
        Err(not_text())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, PackError> {
        Err(not_text())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, PackError> {
        Err(not_text())
    }
}

/// Packs a whole row: a struct (fields in schema order) or a map (any order).
struct RowPacker<'s> {
    schema: &'s TableSchema,
    out: &'s mut Vec<u8>,
}

fn not_a_row(what: &str) -> PackError {
    PackError(format!("a row must be a struct or a map, not {what}"))
}

impl<'s> ser::Serializer for RowPacker<'s> {
    type Ok = ();
    type Error = PackError;
    type SerializeSeq = Impossible<(), PackError>;
    type SerializeTuple = Impossible<(), PackError>;
    type SerializeTupleStruct = Impossible<(), PackError>;
    type SerializeTupleVariant = Impossible<(), PackError>;
    type SerializeMap = MapRow<'s>;
    type SerializeStruct = StructRow<'s>;
    type SerializeStructVariant = Impossible<(), PackError>;

    fn serialize_bool(self, _v: bool) -> Result<(), PackError> {
        Err(not_a_row("a bool"))
    }
    fn serialize_i8(self, _v: i8) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_i16(self, _v: i16) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_i32(self, _v: i32) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_i64(self, _v: i64) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_u8(self, _v: u8) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_u16(self, _v: u16) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_u32(self, _v: u32) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_u64(self, _v: u64) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_f32(self, _v: f32) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_f64(self, _v: f64) -> Result<(), PackError> {
        Err(not_a_row("a number"))
    }
    fn serialize_char(self, _v: char) -> Result<(), PackError> {
        Err(not_a_row("text"))
    }
    fn serialize_str(self, _v: &str) -> Result<(), PackError> {
        Err(not_a_row("text"))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), PackError> {
        Err(not_a_row("bytes"))
    }
    fn serialize_none(self) -> Result<(), PackError> {
        Err(not_a_row("null"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PackError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), PackError> {
        Err(not_a_row("null"))
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), PackError> {
        Err(not_a_row(name))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), PackError> {
        Err(not_a_row(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), PackError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<(), PackError> {
        Err(not_a_row(variant))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, PackError> {
        Err(not_a_row("a list"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, PackError> {
        Err(not_a_row("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, PackError> {
        Err(not_a_row(name))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, PackError> {
        Err(not_a_row(variant))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, PackError> {
        Ok(MapRow {
            schema: self.schema,
            out: self.out,
            cells: vec![None; self.schema.columns.len()],
            column: None,
        })
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, PackError> {
        Ok(StructRow {
            schema: self.schema,
            out: self.out,
            next: 0,
        })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, PackError> {
        Err(not_a_row(variant))
    }
}

/// A struct row: fields in schema order; nullable columns may be skipped.
struct StructRow<'s> {
    schema: &'s TableSchema,
    out: &'s mut Vec<u8>,
    next: usize,
}

impl StructRow<'_> {
    /// Nulls for the nullable columns before `column` (fields the row skipped).
    fn skip_to(&mut self, column: Option<&str>) -> Result<(), PackError> {
        while let Some(c) = self.schema.columns.get(self.next) {
            if Some(c.name.as_str()) == column {
                return Ok(());
            }
            if !c.nullable {
                return Err(PackError(match column {
                    Some(field) => format!(
                        "field `{field}` comes where column `{}` was expected (the row's fields must follow the schema's columns)",
                        c.name
                    ),
                    None => format!("column `{}` is missing from the row", c.name),
                }));
            }
            push_cell(self.out, c, Cell::Null)?;
            self.next += 1;
        }
        match column {
            Some(field) => Err(PackError(format!(
                "field `{field}` is not a column of the table"
            ))),
            None => Ok(()),
        }
    }
}

impl ser::SerializeStruct for StructRow<'_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), PackError> {
        self.skip_to(Some(key))?;
        let column = &self.schema.columns[self.next];
        value.serialize(CellPacker {
            column,
            out: self.out,
        })?;
        self.next += 1;
        Ok(())
    }
    fn end(mut self) -> Result<(), PackError> {
        self.skip_to(None)
    }
}

/// A map row: fields in any order, each packed alone, then joined in schema order.
struct MapRow<'s> {
    schema: &'s TableSchema,
    out: &'s mut Vec<u8>,
    cells: Vec<Option<Vec<u8>>>,
    column: Option<usize>,
}

impl ser::SerializeMap for MapRow<'_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PackError> {
        let name = key
            .serialize(TextOnly)
            .map_err(|_| PackError("a row's field names must be text".into()))?;
        let index = self
            .schema
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| PackError(format!("field `{name}` is not a column of the table")))?;
        if self.cells[index].is_some() {
            return Err(PackError(format!("field `{name}` appears twice")));
        }
        self.column = Some(index);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PackError> {
        let index = self
            .column
            .take()
            .ok_or_else(|| PackError("a map value without a key".into()))?;
        let mut bytes = Vec::new();
        value.serialize(CellPacker {
            column: &self.schema.columns[index],
            out: &mut bytes,
        })?;
        self.cells[index] = Some(bytes);
        Ok(())
    }
    fn end(self) -> Result<(), PackError> {
        for (column, cell) in self.schema.columns.iter().zip(self.cells) {
            match cell {
                Some(bytes) => self.out.extend_from_slice(&bytes),
                None => push_cell(self.out, column, Cell::Null).map_err(|_| {
                    PackError(format!("column `{}` is missing from the row", column.name))
                })?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{UtcDay, UtcTime};
    use crate::values::{Money, Ratio};

    fn schema() -> TableSchema {
        use ColumnType::*;
        TableSchema::new(
            1,
            &["id"],
            &[
                ("id", UInt64),
                ("step", UInt8),
                ("rank", UInt32),
                ("delta", Int64),
                ("day", Date),
                ("at", Timestamp),
                ("revenue", Money),
                ("score", Float64),
                ("name", Text),
                ("kind", Text),
                ("flag", Bool),
            ],
        )
        .nullable("name")
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        BigSpender,
    }

    #[derive(serde::Serialize)]
    struct Row {
        id: u64,
        step: u8,
        rank: u32,
        delta: i64,
        day: UtcDay,
        at: UtcTime,
        revenue: Money,
        score: Ratio,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        kind: Kind,
        flag: bool,
    }

    fn row(i: u64) -> Row {
        Row {
            id: i * 7919,
            step: (i % 4) as u8,
            rank: i as u32,
            delta: -(i as i64) * 13,
            day: UtcDay(18_000 + (i % 30) as i32),
            at: UtcTime(1_572_566_400_000 + (i as i64) * 1_234_567),
            revenue: Money((i as i64 - 50) * 10_001),
            score: Ratio::new(i as i64, 7),
            name: (i % 3 != 0).then(|| format!("n\"{i}é")),
            kind: Kind::BigSpender,
            flag: i % 2 == 0,
        }
    }

    fn cells(bytes: &[u8], schema: &TableSchema) -> Result<Vec<String>, PackError> {
        let mut out = Vec::new();
        for_each_cell(bytes, schema, |_, c| out.push(format!("{c:?}")))?;
        Ok(out)
    }

    #[test]
    fn a_typed_row_and_its_json_pack_alike() -> anyhow::Result<()> {
        let schema = schema();
        for i in 0..100 {
            let r = row(i);
            let mut typed = Vec::new();
            pack(&r, &schema, &mut typed)?;
            let value: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r)?)?;
            let mut json = Vec::new();
            pack(&value, &schema, &mut json)?;
            assert_eq!(typed, json, "row {i}");
            let read = cells(&typed, &schema)?;
            assert_eq!(read.len(), schema.columns.len());
            assert_eq!(read[0], format!("UInt({})", i * 7919));
            assert_eq!(read[3], format!("Int({})", -(i as i64) * 13));
            assert_eq!(read[4], format!("Int({})", 18_000 + i % 30));
            assert_eq!(
                read[5],
                format!("Int({})", 1_572_566_400_000 + (i as i64) * 1_234_567)
            );
            assert_eq!(read[6], format!("Int({})", (i as i64 - 50) * 10_001));
            assert_eq!(
                read[7],
                format!("Float({:?})", Ratio::new(i as i64, 7).value())
            );
            let name = if i % 3 == 0 {
                "Null".to_owned()
            } else {
                format!("Text({:?})", format!("n\"{i}é"))
            };
            assert_eq!(read[8], name);
            assert_eq!(read[9], "Text(\"big_spender\")");
            assert_eq!(read[10], format!("Bool({})", i % 2 == 0));
        }
        Ok(())
    }

    #[test]
    fn money_is_exact_cents_from_its_decimal_text() {
        assert_eq!(decimal_cents("1682.00"), Some(168_200));
        assert_eq!(decimal_cents("-0.05"), Some(-5));
        assert_eq!(decimal_cents("12.5"), Some(1250));
        assert_eq!(decimal_cents("7"), Some(700));
        assert_eq!(decimal_cents("1.230"), Some(123));
        assert_eq!(decimal_cents("1.234"), None);
        assert_eq!(decimal_cents("1e3"), None);
        assert_eq!(decimal_cents(".5"), None);
    }

    #[test]
    fn values_that_do_not_fit_name_their_column() -> anyhow::Result<()> {
        let schema = schema();
        let bad = |json: serde_json::Value| {
            let mut out = Vec::new();
            pack(&json, &schema, &mut out).err().map(|e| e.to_string())
        };
        let mut good: serde_json::Value = serde_json::from_str(&serde_json::to_string(&row(4))?)?;
        assert_eq!(bad(good.clone()), None);
        let with = |field: &str, v: serde_json::Value| {
            let mut g = good.clone();
            g[field] = v;
            g
        };
        let cases = [
            (
                with("step", 300.into()),
                "column `step`: 300 is out of range",
            ),
            (with("id", (-1).into()), "column `id`: -1 does not fit"),
            (
                with("at", "yesterday".into()),
                "column `at`: text `yesterday`",
            ),
            (with("day", "2019-13-01".into()), "column `day`"),
            (with("flag", 1.into()), "column `flag`"),
            (with("revenue", "12".into()), "column `revenue`: text `12`"),
            (
                with("delta", serde_json::Value::Null),
                "column `delta`: null",
            ),
            (with("extra", 1.into()), "field `extra` is not a column"),
        ];
        for (row, expected) in cases {
            let got = bad(row).unwrap_or_default();
            assert!(got.contains(expected), "{got:?} should say {expected:?}");
        }
        if let Some(map) = good.as_object_mut() {
            map.remove("rank");
            map.remove("name");
        }
        let got = bad(good).unwrap_or_default();
        assert!(got.contains("column `rank` is missing"), "{got}");
        Ok(())
    }

    #[test]
    fn struct_fields_out_of_schema_order_are_refused() {
        #[derive(serde::Serialize)]
        struct Swapped {
            step: u8,
            id: u64,
        }
        let schema = TableSchema::new(
            1,
            &["id"],
            &[("id", ColumnType::UInt64), ("step", ColumnType::UInt8)],
        );
        let mut out = Vec::new();
        let err = pack(&Swapped { step: 1, id: 2 }, &schema, &mut out)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("field `step` comes where column `id` was expected"),
            "{err}"
        );
    }

    #[test]
    fn truncated_or_overlong_bytes_are_refused() -> anyhow::Result<()> {
        let schema = schema();
        let mut bytes = Vec::new();
        pack(&row(5), &schema, &mut bytes)?;
        for cut in [1, 9, bytes.len() - 1] {
            assert!(cells(&bytes[..cut], &schema).is_err(), "cut at {cut}");
        }
        bytes.push(0);
        let err = cells(&bytes, &schema)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("1 bytes after its last column"), "{err}");
        Ok(())
    }
}
