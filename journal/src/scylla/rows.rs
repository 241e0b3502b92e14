//! What goes over the wire to and from the database: values bound to
//! statements by name, and the rows read back.

use std::collections::HashMap;

use scylla::response::query_result::QueryResult;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::RowWriter;
use scylla::value::{CqlValue, Row};

use super::session::unavailable;
use crate::error::JournalError;
use crate::types::PersistedEvent;

/// Values bound to a statement's markers by name (`:last_seq`, ...), in
/// whatever order the statement names them; a marker without a value is a
/// serialization error naming it. No statement binds by position.
#[derive(Debug, Default, Clone)]
pub(crate) struct Named(Vec<(&'static str, Option<CqlValue>)>);

impl Named {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    /// Adds a value for the marker `name`.
    pub(crate) fn with(mut self, name: &'static str, value: CqlValue) -> Self {
        self.0.push((name, Some(value)));
        self
    }
    /// Binds `name` to a BIGINT, or to null.
    pub(crate) fn big_or_null(mut self, name: &'static str, v: Option<i64>) -> Self {
        self.0.push((name, v.map(CqlValue::BigInt)));
        self
    }
    pub(crate) fn big(self, name: &'static str, v: i64) -> Self {
        self.with(name, CqlValue::BigInt(v))
    }
    pub(crate) fn text(self, name: &'static str, v: &str) -> Self {
        self.with(name, CqlValue::Text(v.to_owned()))
    }
    /// The partition key of an events partition.
    pub(crate) fn partition(entity_type: &str, entity_id: &str, bucket: u64) -> Self {
        Self::new().text("entity_type", entity_type).text("entity_id", entity_id).big("bucket", bucket as i64)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no value for the bind marker `:{0}`")]
struct Unbound(String);

impl SerializeRow for Named {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter<'_>,
    ) -> Result<(), SerializationError> {
        for col in ctx.columns() {
            let value = self
                .0
                .iter()
                .find(|(name, _)| *name == col.name())
                .map(|(_, v)| v)
                .ok_or_else(|| SerializationError::new(Unbound(col.name().to_owned())))?;
            value.serialize(col.typ(), writer.make_cell_writer())?;
        }
        Ok(())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The statics of one events partition: `last_seq`, `sealed`, `fence`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Statics {
    pub(crate) last_seq: Option<i64>,
    pub(crate) sealed: Option<i64>,
    pub(crate) fence: Option<i64>,
}

impl Statics {
    /// The current values a refused conditional write returns.
    pub(crate) fn from_cols(cols: &HashMap<String, CqlValue>) -> Self {
        Self {
            last_seq: as_i64(cols.get("last_seq")),
            sealed: as_i64(cols.get("sealed")),
            fence: as_i64(cols.get("fence")),
        }
    }
    /// The fence as an epoch (a partition never fenced: 0).
    pub(crate) fn fence(&self) -> u64 {
        self.fence.unwrap_or(0).max(0) as u64
    }
    /// The last seq (0 when unset).
    pub(crate) fn last(&self) -> u64 {
        self.last_seq.unwrap_or(0).max(0) as u64
    }
}

/// The `[applied]` flag of a conditional statement, and the row's columns.
pub(crate) fn lwt_outcome(r: QueryResult) -> Result<(bool, HashMap<String, CqlValue>), JournalError> {
    let rows = r.into_rows_result().map_err(unavailable)?;
    let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
    let first: Option<Row> = rows.maybe_first_row::<Row>().map_err(unavailable)?;
    let mut cols = HashMap::new();
    if let Some(row) = first {
        for (name, v) in names.into_iter().zip(row.columns) {
            if let Some(v) = v {
                cols.insert(name, v);
            }
        }
    }
    let applied = matches!(cols.get("[applied]"), Some(CqlValue::Boolean(true)));
    Ok((applied, cols))
}

pub(crate) fn as_i64(v: Option<&CqlValue>) -> Option<i64> {
    match v {
        Some(CqlValue::BigInt(i)) => Some(*i),
        _ => None,
    }
}

/// The columns of an event row: seq, ts, type_name, version, payload, metadata.
pub(crate) type EventRow = (i64, Option<i64>, Option<String>, Option<i32>, Option<Vec<u8>>, Option<Vec<u8>>);

pub(crate) fn to_event((seq, ts, type_name, version, payload, metadata): EventRow) -> PersistedEvent {
    PersistedEvent {
        seq: seq as u64,
        timestamp_ms: ts.unwrap_or(0),
        type_name: type_name.unwrap_or_default(),
        version: version.unwrap_or(0) as u32,
        payload: payload.unwrap_or_default(),
        metadata: metadata.unwrap_or_default(),
    }
}
