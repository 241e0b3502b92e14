//! Every CQL statement the journal runs, prepared once per session, each
//! bound by name (`:marker`, see `rows::Named`).

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::config::ScyllaConfig;
use crate::error::JournalError;

/// The head update of an append: its shape depends on the partition's
/// state (the last one holding events, or a new one), on a snapshot, and
/// on a fence.
pub(crate) struct HeadStatements {
    /// `IF last_seq = :expected AND sealed = null [AND fence = :fence]`.
    pub(crate) eq: PreparedStatement,
    /// The same, also writing a snapshot into the partition's statics.
    pub(crate) eq_snap: PreparedStatement,
    /// `IF last_seq = null` (opening a partition; a fenced writer also sets the fence).
    pub(crate) new: PreparedStatement,
    /// The same, with a snapshot.
    pub(crate) new_snap: PreparedStatement,
}

pub(crate) struct Statements {
    pub(crate) head: HeadStatements,
    pub(crate) head_fenced: HeadStatements,
    /// Unconditional head updates (the opt-in fast mode).
    pub(crate) head_plain: PreparedStatement,
    pub(crate) head_plain_snap: PreparedStatement,
    pub(crate) insert_event: PreparedStatement,
    pub(crate) seal: PreparedStatement,
    pub(crate) seal_fenced: PreparedStatement,
    /// Raising the fence of the head partition from a known value (or from null).
    pub(crate) raise_fence: PreparedStatement,
    pub(crate) raise_fence_from_null: PreparedStatement,
    pub(crate) statics_of: PreparedStatement,
    pub(crate) snap_of: PreparedStatement,
    pub(crate) read: PreparedStatement,
    pub(crate) save_snapshot: PreparedStatement,
    pub(crate) load_snapshot: PreparedStatement,
    /// The feed (per entity type and shard, owner-assigned offsets).
    pub(crate) feed_put: PreparedStatement,
    pub(crate) feed_void: PreparedStatement,
    pub(crate) feed_range: PreparedStatement,
    pub(crate) feed_first: PreparedStatement,
    pub(crate) segments: PreparedStatement,
    pub(crate) segment_open: PreparedStatement,
    /// The watermark and intent floor, written while nobody closed the segment.
    pub(crate) segment_watermark: PreparedStatement,
    pub(crate) segment_seal: PreparedStatement,
    /// A successor closes a segment before it settles it (no more watermark moves).
    pub(crate) segment_close: PreparedStatement,
    /// A segment's watermark and intent floor, read at serial consistency.
    pub(crate) segment_serial: PreparedStatement,
    /// The intents of a unit's appends, per owner epoch.
    pub(crate) intent_put: PreparedStatement,
    pub(crate) intent_range: PreparedStatement,
    /// An event's intent, read at serial consistency (settles a conditional
    /// append whose outcome was unknown, or a crashed owner's).
    pub(crate) event_intent_serial: PreparedStatement,
    /// An event with its feed offset (the feed's readers check the entry is the event's).
    pub(crate) read_fed: PreparedStatement,
    /// Idempotency keys by time.
    pub(crate) key_get: PreparedStatement,
    pub(crate) key_put: PreparedStatement,
    pub(crate) event_key: PreparedStatement,
    pub(crate) index_insert: PreparedStatement,
    pub(crate) index_read: PreparedStatement,
    pub(crate) delete_to: PreparedStatement,
    /// A purge: one events partition, the snapshot, the keys, the index
    /// entry, a feed entry's entity columns, an intent.
    pub(crate) purge_partition: PreparedStatement,
    pub(crate) purge_snapshot: PreparedStatement,
    pub(crate) purge_keys: PreparedStatement,
    pub(crate) purge_index: PreparedStatement,
    pub(crate) feed_scrub: PreparedStatement,
    pub(crate) intent_delete: PreparedStatement,
}

const PK: &str = "entity_type = :entity_type AND entity_id = :entity_id AND bucket = :bucket";
const SNAP: &str =
    "snap_seq = :snap_seq, snap_version = :snap_version, snap_ts = :snap_ts, snap_payload = :snap_payload";

impl Statements {
    pub(crate) async fn prepare(session: &Session, c: &ScyllaConfig) -> Result<Self, JournalError> {
        let ks = &c.keyspace;
        let prep = |cql: String, idempotent: bool, lwt: bool| async move {
            let mut p = session
                .prepare(cql.clone())
                .await
                .map_err(|e| JournalError::Unavailable(format!("{e} (preparing: {cql})")))?;
            p.set_consistency(c.consistency);
            p.set_serial_consistency(Some(c.serial_consistency));
            p.set_request_timeout(Some(c.timeout));
            p.set_is_idempotent(idempotent && !lwt);
            p.set_page_size(1024);
            Ok::<_, JournalError>(p)
        };
        let lwt = |cql: String| prep(cql, false, true);
        // Safe to retry (reads, and writes of the same row with the same values).
        let idem = |cql: String| prep(cql, true, false);
        let head = |fenced: bool| async move {
            let (cond, set_fence) = if fenced { (" AND fence = :fence", ", fence = :fence") } else { ("", "") };
            let eq = format!("IF last_seq = :expected AND sealed = null{cond}");
            Ok::<_, JournalError>(HeadStatements {
                eq: lwt(format!("UPDATE {ks}.events SET last_seq = :last_seq WHERE {PK} {eq}")).await?,
                eq_snap: lwt(format!("UPDATE {ks}.events SET last_seq = :last_seq, {SNAP} WHERE {PK} {eq}")).await?,
                new: lwt(format!(
                    "UPDATE {ks}.events SET last_seq = :last_seq{set_fence} WHERE {PK} IF last_seq = null"
                ))
                .await?,
                new_snap: lwt(format!(
                    "UPDATE {ks}.events SET last_seq = :last_seq, {SNAP}{set_fence} WHERE {PK} IF last_seq = null"
                ))
                .await?,
            })
        };
        let serial = |mut p: PreparedStatement| {
            p.set_consistency(match c.serial_consistency {
                scylla::statement::SerialConsistency::Serial => scylla::statement::Consistency::Serial,
                scylla::statement::SerialConsistency::LocalSerial => scylla::statement::Consistency::LocalSerial,
            });
            p
        };
        Ok(Self {
            head: head(false).await?,
            head_fenced: head(true).await?,
            head_plain: prep(format!("UPDATE {ks}.events SET last_seq = :last_seq WHERE {PK}"), false, false).await?,
            head_plain_snap: prep(format!("UPDATE {ks}.events SET last_seq = :last_seq, {SNAP} WHERE {PK}"), false, false)
                .await?,
            insert_event: prep(
                format!(
                    "INSERT INTO {ks}.events (entity_type, entity_id, bucket, seq, ts, type_name, version, payload, metadata, \
                     feed_intent, idem_key, crc) VALUES (:entity_type, :entity_id, :bucket, :seq, :ts, :type_name, :version, \
                     :payload, :metadata, :feed_intent, :idem_key, :crc)"
                ),
                false,
                false,
            )
            .await?,
            seal: lwt(format!("UPDATE {ks}.events SET sealed = :sealed WHERE {PK} IF last_seq = :expected")).await?,
            seal_fenced: lwt(format!(
                "UPDATE {ks}.events SET sealed = :sealed WHERE {PK} IF last_seq = :expected AND fence = :fence"
            ))
            .await?,
            raise_fence: lwt(format!(
                "UPDATE {ks}.events SET fence = :fence WHERE {PK} IF fence = :current AND sealed = null"
            ))
            .await?,
            raise_fence_from_null: lwt(format!(
                "UPDATE {ks}.events SET fence = :fence WHERE {PK} IF fence = null AND sealed = null"
            ))
            .await?,
            statics_of: idem(format!("SELECT last_seq, sealed, fence FROM {ks}.events WHERE {PK} LIMIT 1")).await?,
            snap_of: idem(format!(
                "SELECT snap_seq, snap_version, snap_ts, snap_payload FROM {ks}.events WHERE {PK} LIMIT 1"
            ))
            .await?,
            read: idem(format!(
                "SELECT seq, ts, type_name, version, payload, metadata, crc FROM {ks}.events \
                 WHERE {PK} AND seq >= :from_seq AND seq <= :to_seq LIMIT 1024"
            ))
            .await?,
            save_snapshot: idem(format!(
                "INSERT INTO {ks}.snapshots (entity_type, entity_id, seq, version, ts, payload) \
                 VALUES (:entity_type, :entity_id, :seq, :version, :ts, :payload)"
            ))
            .await?,
            load_snapshot: idem(format!(
                "SELECT seq, version, ts, payload FROM {ks}.snapshots WHERE entity_type = :entity_type AND entity_id = :entity_id"
            ))
            .await?,
            feed_put: idem(format!(
                "INSERT INTO {ks}.feed (entity_type, shard, block, offset, epoch, entity_id, bucket, seq, ts, void, intent, record) \
                 VALUES (:entity_type, :shard, :block, :offset, :epoch, :entity_id, :bucket, :seq, :ts, false, :intent, :record) \
                 USING TTL :ttl"
            ))
            .await?,
            feed_void: idem(format!(
                "UPDATE {ks}.feed USING TTL :ttl SET void = true \
                 WHERE entity_type = :entity_type AND shard = :shard AND block = :block AND offset = :offset AND epoch = :epoch"
            ))
            .await?,
            feed_range: idem(format!(
                "SELECT offset, epoch, entity_id, bucket, seq, void, intent, ts, record FROM {ks}.feed \
                 WHERE entity_type = :entity_type AND shard = :shard AND block = :block AND offset > :after AND offset <= :upto \
                 LIMIT 1024"
            ))
            .await?,
            feed_first: idem(format!(
                "SELECT offset FROM {ks}.feed WHERE entity_type = :entity_type AND shard = :shard AND block = :block LIMIT 1"
            ))
            .await?,
            segments: idem(format!(
                "SELECT epoch, start, watermark, sealed_end, intent_floor, floor_offset FROM {ks}.feed_segments \
                 WHERE entity_type = :entity_type AND shard = :shard"
            ))
            .await?,
            segment_open: idem(format!(
                "INSERT INTO {ks}.feed_segments (entity_type, shard, epoch, start, watermark, intent_floor, floor_offset) \
                 VALUES (:entity_type, :shard, :epoch, :start, :watermark, :intent_floor, :floor_offset)"
            ))
            .await?,
            segment_watermark: lwt(format!(
                "UPDATE {ks}.feed_segments SET watermark = :watermark, intent_floor = :intent_floor, \
                 floor_offset = :floor_offset WHERE entity_type = :entity_type AND shard = :shard AND epoch = :epoch \
                 IF closed_by = null"
            ))
            .await?,
            segment_seal: idem(format!(
                "UPDATE {ks}.feed_segments SET sealed_end = :sealed_end \
                 WHERE entity_type = :entity_type AND shard = :shard AND epoch = :epoch"
            ))
            .await?,
            segment_close: lwt(format!(
                "UPDATE {ks}.feed_segments SET closed_by = :closed_by \
                 WHERE entity_type = :entity_type AND shard = :shard AND epoch = :epoch IF closed_by = null"
            ))
            .await?,
            segment_serial: serial(
                idem(format!(
                    "SELECT watermark, intent_floor, floor_offset FROM {ks}.feed_segments \
                     WHERE entity_type = :entity_type AND shard = :shard AND epoch = :epoch"
                ))
                .await?,
            ),
            intent_put: idem(format!(
                "INSERT INTO {ks}.feed_intents (entity_type, shard, epoch, block, id, entity_id, bucket, first_seq, n) \
                 VALUES (:entity_type, :shard, :epoch, :block, :id, :entity_id, :bucket, :first_seq, :n) USING TTL :ttl"
            ))
            .await?,
            intent_range: idem(format!(
                "SELECT id, entity_id, bucket, first_seq, n FROM {ks}.feed_intents \
                 WHERE entity_type = :entity_type AND shard = :shard AND epoch = :epoch AND block = :block AND id >= :from_id \
                 LIMIT 1024"
            ))
            .await?,
            event_intent_serial: serial(
                idem(format!("SELECT feed_intent FROM {ks}.events WHERE {PK} AND seq = :seq")).await?,
            ),
            read_fed: idem(format!(
                "SELECT seq, ts, type_name, version, payload, metadata, crc, feed_offset FROM {ks}.events WHERE {PK} AND seq = :seq"
            ))
            .await?,
            key_get: idem(format!(
                "SELECT seq FROM {ks}.idempotency WHERE entity_type = :entity_type AND entity_id = :entity_id AND key = :key"
            ))
            .await?,
            key_put: idem(format!(
                "INSERT INTO {ks}.idempotency (entity_type, entity_id, key, seq) \
                 VALUES (:entity_type, :entity_id, :key, :seq) USING TTL :ttl"
            ))
            .await?,
            event_key: idem(format!("SELECT idem_key FROM {ks}.events WHERE {PK} AND seq = :seq")).await?,
            index_insert: idem(format!(
                "INSERT INTO {ks}.entity_ids (entity_type, shard, entity_id) VALUES (:entity_type, :shard, :entity_id)"
            ))
            .await?,
            index_read: idem(format!(
                "SELECT entity_id FROM {ks}.entity_ids WHERE entity_type = :entity_type AND shard = :shard"
            ))
            .await?,
            delete_to: idem(format!("DELETE FROM {ks}.events WHERE {PK} AND seq <= :to_seq")).await?,
            purge_partition: idem(format!("DELETE FROM {ks}.events WHERE {PK}")).await?,
            purge_snapshot: idem(format!(
                "DELETE FROM {ks}.snapshots WHERE entity_type = :entity_type AND entity_id = :entity_id"
            ))
            .await?,
            purge_keys: idem(format!(
                "DELETE FROM {ks}.idempotency WHERE entity_type = :entity_type AND entity_id = :entity_id"
            ))
            .await?,
            purge_index: idem(format!(
                "DELETE FROM {ks}.entity_ids WHERE entity_type = :entity_type AND shard = :shard AND entity_id = :entity_id"
            ))
            .await?,
            // The entry stays (offsets are never given out twice) as a void
            // that names no entity.
            feed_scrub: idem(format!(
                "UPDATE {ks}.feed USING TTL :ttl SET void = true, entity_id = null, bucket = null, seq = null, \
                 ts = null, intent = null \
                 WHERE entity_type = :entity_type AND shard = :shard AND block = :block AND offset = :offset AND epoch = :epoch"
            ))
            .await?,
            intent_delete: idem(format!(
                "DELETE FROM {ks}.feed_intents \
                 WHERE entity_type = :entity_type AND shard = :shard AND epoch = :epoch AND block = :block AND id = :id"
            ))
            .await?,
        })
    }
}
