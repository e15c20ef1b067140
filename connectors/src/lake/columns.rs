//! Packed rows ([`cap_engine::packed`]) into Arrow columns and back, by a table's schema.
//!
//! ```text
//!  packed row --RowColumns::push--> one builder per column --finish--> Arrow arrays
//!  Arrow arrays (a changelog read back) --RowCells::pack--> packed row
//! ```
//!
//! The Arrow types are those of [`super::schema`]; a cell of another kind than its column's
//! is an error (the rows were packed with another schema), never a silent cast.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float64Type, Int64Type, TimestampMillisecondType, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, PrimitiveArray, StringArray};
use cap_engine::packed::{for_each_cell, push_cell, Cell, PackError};
use cap_engine::sink::{ColumnType, TableSchema};

use super::schema::UTC;

/// One column's builder.
enum Builder {
    Bool(BooleanBuilder),
    UInt8(UInt8Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Text(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMillisecondBuilder),
    Money(Decimal128Builder),
}

impl Builder {
    fn new(ty: ColumnType, rows: usize) -> Builder {
        match ty {
            ColumnType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::UInt8 => Builder::UInt8(UInt8Builder::with_capacity(rows)),
            ColumnType::UInt32 => Builder::UInt32(UInt32Builder::with_capacity(rows)),
            ColumnType::UInt64 => Builder::UInt64(UInt64Builder::with_capacity(rows)),
            ColumnType::Int64 => Builder::Int64(Int64Builder::with_capacity(rows)),
            ColumnType::Float64 => Builder::Float64(Float64Builder::with_capacity(rows)),
            ColumnType::Text => Builder::Text(StringBuilder::with_capacity(rows, rows * 16)),
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            ColumnType::Timestamp => Builder::Timestamp(
                TimestampMillisecondBuilder::with_capacity(rows).with_timezone(UTC),
            ),
            ColumnType::Money => Builder::Money(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(18, 2)
                    .unwrap_or_else(|_| Decimal128Builder::with_capacity(rows)),
            ),
        }
    }

    /// Appends a cell; false when it is not of this column's kind.
    fn push(&mut self, cell: Cell<'_>) -> bool {
        match (self, cell) {
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::UInt8(b), Cell::UInt(v)) => match u8::try_from(v) {
                Ok(v) => b.append_value(v),
                Err(_) => return false,
            },
            (Builder::UInt32(b), Cell::UInt(v)) => match u32::try_from(v) {
                Ok(v) => b.append_value(v),
                Err(_) => return false,
            },
            (Builder::UInt64(b), Cell::UInt(v)) => b.append_value(v),
            (Builder::Int64(b), Cell::Int(v)) => b.append_value(v),
            (Builder::Float64(b), Cell::Float(v)) => b.append_value(v),
            (Builder::Text(b), Cell::Text(v)) => b.append_value(v),
            (Builder::Date(b), Cell::Int(v)) => match i32::try_from(v) {
                Ok(v) => b.append_value(v),
                Err(_) => return false,
            },
            (Builder::Timestamp(b), Cell::Int(v)) => b.append_value(v),
            (Builder::Money(b), Cell::Int(v)) => b.append_value(i128::from(v)),
            (builder, Cell::Null) => builder.push_null(),
            _ => return false,
        }
        true
    }

    fn push_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::UInt8(b) => b.append_null(),
            Builder::UInt32(b) => b.append_null(),
            Builder::UInt64(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Money(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::UInt8(b) => Arc::new(b.finish()),
            Builder::UInt32(b) => Arc::new(b.finish()),
            Builder::UInt64(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Money(b) => Arc::new(b.finish()),
        }
    }
}

/// The columns of a table's rows being built.
pub struct RowColumns {
    schema: TableSchema,
    builders: Vec<Builder>,
    rows: usize,
}

impl RowColumns {
    /// Empty columns of `schema`, with room for `rows` rows.
    pub fn new(schema: &TableSchema, rows: usize) -> RowColumns {
        RowColumns {
            schema: schema.clone(),
            builders: schema
                .columns
                .iter()
                .map(|c| Builder::new(c.ty, rows))
                .collect(),
            rows: 0,
        }
    }

    /// Rows appended since the last [`RowColumns::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends a packed row. On an error the columns are left unequal in length: the
    /// caller stops using them (the bytes were packed with another schema, a bug).
    pub fn push(&mut self, packed: &[u8]) -> Result<(), PackError> {
        let mut unfit = None;
        let builders = &mut self.builders;
        let schema = &self.schema;
        for_each_cell(packed, schema, |i, cell| {
            if !builders[i].push(cell) && unfit.is_none() {
                unfit = Some(i);
            }
        })?;
        if let Some(i) = unfit {
            // Say which, with push_cell's own wording for a cell of the wrong kind.
            let mut scratch = Vec::new();
            let mut message = format!(
                "column `{}`: a cell of the wrong kind",
                schema.columns[i].name
            );
            for_each_cell(packed, schema, |j, cell| {
                if j == i {
                    if let Err(e) = push_cell(&mut scratch, &schema.columns[i], cell) {
                        message = e.to_string();
                    }
                }
            })?;
            return Err(PackError::new(message));
        }
        self.rows += 1;
        Ok(())
    }

    /// The columns built so far, as arrays; the builders start empty again.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.builders.iter_mut().map(Builder::finish).collect()
    }
}

/// One column of a batch read back, by kind.
enum Column<'a> {
    Bool(&'a BooleanArray),
    UInt8(&'a PrimitiveArray<UInt8Type>),
    UInt32(&'a PrimitiveArray<UInt32Type>),
    UInt64(&'a PrimitiveArray<UInt64Type>),
    Int64(&'a PrimitiveArray<Int64Type>),
    Float64(&'a PrimitiveArray<Float64Type>),
    Text(&'a StringArray),
    Date(&'a PrimitiveArray<Date32Type>),
    Timestamp(&'a PrimitiveArray<TimestampMillisecondType>),
    Money(&'a PrimitiveArray<Decimal128Type>),
}

/// The row columns of a batch read back (a changelog file), to pack row by row.
pub struct RowCells<'a> {
    schema: &'a TableSchema,
    columns: Vec<(Column<'a>, &'a dyn Array)>,
}

impl<'a> RowCells<'a> {
    /// The row columns `arrays` (in schema order) of a batch; an error names a column whose
    /// Arrow type is not its declared one.
    pub fn new(schema: &'a TableSchema, arrays: &'a [ArrayRef]) -> Result<RowCells<'a>, String> {
        if arrays.len() != schema.columns.len() {
            return Err(format!(
                "{} row columns, and the schema has {}",
                arrays.len(),
                schema.columns.len()
            ));
        }
        let mut columns = Vec::with_capacity(arrays.len());
        for (c, a) in schema.columns.iter().zip(arrays) {
            let column = match c.ty {
                ColumnType::Bool => a.as_boolean_opt().map(Column::Bool),
                ColumnType::UInt8 => a.as_primitive_opt().map(Column::UInt8),
                ColumnType::UInt32 => a.as_primitive_opt().map(Column::UInt32),
                ColumnType::UInt64 => a.as_primitive_opt().map(Column::UInt64),
                ColumnType::Int64 => a.as_primitive_opt().map(Column::Int64),
                ColumnType::Float64 => a.as_primitive_opt().map(Column::Float64),
                ColumnType::Text => a.as_string_opt::<i32>().map(Column::Text),
                ColumnType::Date => a.as_primitive_opt().map(Column::Date),
                ColumnType::Timestamp => a.as_primitive_opt().map(Column::Timestamp),
                ColumnType::Money => a.as_primitive_opt().map(Column::Money),
            };
            let column = column.ok_or_else(|| {
                format!(
                    "column `{}` is {}, and the schema says {:?}",
                    c.name,
                    a.data_type(),
                    c.ty
                )
            })?;
            columns.push((column, a.as_ref()));
        }
        Ok(RowCells { schema, columns })
    }

    /// Row `i`, packed, appended to `out`.
    pub fn pack(&self, i: usize, out: &mut Vec<u8>) -> Result<(), PackError> {
        for (c, (column, array)) in self.schema.columns.iter().zip(&self.columns) {
            let cell = if array.is_null(i) {
                Cell::Null
            } else {
                match column {
                    Column::Bool(a) => Cell::Bool(a.value(i)),
                    Column::UInt8(a) => Cell::UInt(u64::from(a.value(i))),
                    Column::UInt32(a) => Cell::UInt(u64::from(a.value(i))),
                    Column::UInt64(a) => Cell::UInt(a.value(i)),
                    Column::Int64(a) => Cell::Int(a.value(i)),
                    Column::Float64(a) => Cell::Float(a.value(i)),
                    Column::Text(a) => Cell::Text(a.value(i)),
                    Column::Date(a) => Cell::Int(i64::from(a.value(i))),
                    Column::Timestamp(a) => Cell::Int(a.value(i)),
                    Column::Money(a) => Cell::Int(i64::try_from(a.value(i)).map_err(|_| {
                        PackError::new(format!(
                            "column `{}`: {} cents do not fit 64 bits",
                            c.name,
                            a.value(i)
                        ))
                    })?),
                }
            };
            push_cell(out, c, cell)?;
        }
        Ok(())
    }
}
