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
    /// Binds `name` to a BOOLEAN, or to null.
    pub(crate) fn bool_or_null(mut self, name: &'static str, v: Option<bool>) -> Self {
        self.0.push((name, v.map(CqlValue::Boolean)));
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
/// `seq, ts, type_name, version, payload, metadata, crc` of an event row.
pub(crate) type EventRow =
    (i64, Option<i64>, Option<String>, Option<i32>, Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>);

/// The checksum of an event row (schema 5): CRC32 of its seq, type name,
/// version, payload and metadata, each length-prefixed.
pub(crate) fn event_crc(seq: u64, type_name: &str, version: u32, payload: &[u8], metadata: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_be_bytes());
    for part in [type_name.as_bytes(), &version.to_be_bytes(), payload, metadata] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize()
}

/// The event a row holds, its checksum checked (rows of older schemas have none).
pub(crate) fn to_event(
    entity: &crate::types::EntityKey,
    (seq, ts, type_name, version, payload, metadata, crc): EventRow,
) -> Result<PersistedEvent, crate::error::JournalError> {
    let e = PersistedEvent {
        seq: seq as u64,
        timestamp_ms: ts.unwrap_or(0),
        type_name: type_name.unwrap_or_default(),
        version: version.unwrap_or(0) as u32,
        payload: payload.unwrap_or_default(),
        metadata: metadata.unwrap_or_default(),
    };
    if let Some(stored) = crc {
        let actual = event_crc(e.seq, &e.type_name, e.version, &e.payload, &e.metadata);
        if stored != i64::from(actual) {
            return Err(crate::error::JournalError::Corrupt {
                entity: entity.to_string(),
                seq: e.seq,
                detail: format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"),
            });
        }
    }
    Ok(e)
}

/// Hostile rows (a Scylla row's columns as the driver hands them over):
/// an event or a `Corrupt` error naming the entity and seq, never a panic;
/// a row whose payload changed after it was written fails its checksum.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::types::EntityKey;

    /// Cases per property: 3000 in the suite, `TESSERA_FUZZ_CASES` for long runs (docs/fuzzing.md).
    fn fuzz_cases() -> u32 {
        std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_row_is_an_event_or_a_named_corruption(
            seq in any::<i64>(),
            ts in any::<Option<i64>>(),
            type_name in proptest::option::of("\\PC{0,20}"),
            version in any::<Option<i32>>(),
            payload in proptest::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            metadata in proptest::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            crc in any::<Option<i64>>(),
        ) {
            let e = EntityKey::new("t", "a");
            if let Err(err) = to_event(&e, (seq, ts, type_name, version, payload, metadata, crc)) {
                prop_assert!(err.to_string().contains("t/a"), "{err}");
            }
        }

        #[test]
        fn a_changed_payload_fails_its_checksum(payload in prop::collection::vec(any::<u8>(), 1..64), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let crc = i64::from(event_crc(7, "E", 1, &payload, b"m"));
            let row = |p: Vec<u8>| (7i64, Some(1i64), Some("E".to_owned()), Some(1i32), Some(p), Some(b"m".to_vec()), Some(crc));
            let e = EntityKey::new("t", "a");
            prop_assert!(to_event(&e, row(payload.clone())).is_ok());
            let mut flipped = payload;
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
            let err = to_event(&e, row(flipped)).unwrap_err().to_string();
            prop_assert!(err.contains("t/a") && err.contains("seq 7") && err.contains("checksum"), "{err}");
        }
    }
}
