//! Every CQL statement the journal runs, prepared once per session.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::config::ScyllaConfig;
use crate::error::JournalError;

pub(crate) struct Statements {
    /// Head update when the partition holds the entity's last event.
    pub(crate) head_eq: PreparedStatement,
    /// Head update opening a new partition.
    pub(crate) head_new: PreparedStatement,
    /// The same two, also writing a snapshot into the partition's static columns.
    pub(crate) head_eq_snap: PreparedStatement,
    pub(crate) head_new_snap: PreparedStatement,
    /// Unconditional head update (the opt-in fast mode).
    pub(crate) head_plain: PreparedStatement,
    pub(crate) head_plain_snap: PreparedStatement,
    /// Fenced appends: the same conditions plus `fence = ?`.
    pub(crate) head_eq_fenced: PreparedStatement,
    pub(crate) head_eq_snap_fenced: PreparedStatement,
    /// A fenced writer opening a new partition (it also writes the fence);
    /// without events, the fence raise that opens an empty head partition.
    pub(crate) head_new_fenced: PreparedStatement,
    pub(crate) head_new_snap_fenced: PreparedStatement,
    pub(crate) insert_event: PreparedStatement,
    pub(crate) seal: PreparedStatement,
    pub(crate) seal_fenced: PreparedStatement,
    /// Raising the fence of the head partition from a known value (or from null).
    pub(crate) raise_fence: PreparedStatement,
    pub(crate) raise_fence_from_null: PreparedStatement,
    pub(crate) head_of: PreparedStatement,
    pub(crate) snap_of: PreparedStatement,
    pub(crate) read: PreparedStatement,
    pub(crate) read_one: PreparedStatement,
    pub(crate) save_snapshot: PreparedStatement,
    pub(crate) load_snapshot: PreparedStatement,
    pub(crate) feed_insert: PreparedStatement,
    pub(crate) feed_read: PreparedStatement,
    pub(crate) index_insert: PreparedStatement,
    pub(crate) index_read: PreparedStatement,
    pub(crate) delete_to: PreparedStatement,
}

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
        let pk = "entity_type = ? AND entity_id = ? AND bucket = ?";
        let snap = "snap_seq = ?, snap_version = ?, snap_ts = ?, snap_payload = ?";
        Ok(Self {
            head_eq: prep(format!("UPDATE {ks}.events SET last_seq = ? WHERE {pk} IF last_seq = ? AND sealed = null"), false, true).await?,
            head_new: prep(format!("UPDATE {ks}.events SET last_seq = ? WHERE {pk} IF last_seq = null"), false, true).await?,
            head_eq_snap: prep(
                format!("UPDATE {ks}.events SET last_seq = ?, {snap} WHERE {pk} IF last_seq = ? AND sealed = null"),
                false,
                true,
            )
            .await?,
            head_new_snap: prep(format!("UPDATE {ks}.events SET last_seq = ?, {snap} WHERE {pk} IF last_seq = null"), false, true)
                .await?,
            head_eq_fenced: prep(
                format!("UPDATE {ks}.events SET last_seq = ? WHERE {pk} IF last_seq = ? AND sealed = null AND fence = ?"),
                false,
                true,
            )
            .await?,
            head_eq_snap_fenced: prep(
                format!(
                    "UPDATE {ks}.events SET last_seq = ?, {snap} WHERE {pk} IF last_seq = ? AND sealed = null AND fence = ?"
                ),
                false,
                true,
            )
            .await?,
            head_new_fenced: prep(
                format!("UPDATE {ks}.events SET last_seq = ?, fence = ? WHERE {pk} IF last_seq = null"),
                false,
                true,
            )
            .await?,
            head_new_snap_fenced: prep(
                format!("UPDATE {ks}.events SET last_seq = ?, {snap}, fence = ? WHERE {pk} IF last_seq = null"),
                false,
                true,
            )
            .await?,
            seal_fenced: prep(
                format!("UPDATE {ks}.events SET sealed = ? WHERE {pk} IF last_seq = ? AND fence = ?"),
                false,
                true,
            )
            .await?,
            raise_fence: prep(
                format!("UPDATE {ks}.events SET fence = ? WHERE {pk} IF fence = ? AND sealed = null"),
                false,
                true,
            )
            .await?,
            raise_fence_from_null: prep(
                format!("UPDATE {ks}.events SET fence = ? WHERE {pk} IF fence = null AND sealed = null"),
                false,
                true,
            )
            .await?,
            head_plain: prep(format!("UPDATE {ks}.events SET last_seq = ? WHERE {pk}"), false, false).await?,
            head_plain_snap: prep(format!("UPDATE {ks}.events SET last_seq = ?, {snap} WHERE {pk}"), false, false).await?,
            insert_event: prep(
                format!(
                    "INSERT INTO {ks}.events (entity_type, entity_id, bucket, seq, ts, type_name, version, payload, metadata) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                false,
                false,
            )
            .await?,
            seal: prep(format!("UPDATE {ks}.events SET sealed = ? WHERE {pk} IF last_seq = ?"), false, true).await?,
            head_of: prep(format!("SELECT last_seq, sealed, fence FROM {ks}.events WHERE {pk} LIMIT 1"), true, false)
                .await?,
            snap_of: prep(
                format!("SELECT snap_seq, snap_version, snap_ts, snap_payload FROM {ks}.events WHERE {pk} LIMIT 1"),
                true,
                false,
            )
            .await?,
            read: prep(
                format!(
                    "SELECT seq, ts, type_name, version, payload, metadata FROM {ks}.events WHERE {pk} AND seq >= ? AND seq <= ? LIMIT 1024"
                ),
                true,
                false,
            )
            .await?,
            read_one: prep(
                format!("SELECT seq, ts, type_name, version, payload, metadata FROM {ks}.events WHERE {pk} AND seq = ?"),
                true,
                false,
            )
            .await?,
            save_snapshot: prep(
                format!("INSERT INTO {ks}.snapshots (entity_type, entity_id, seq, version, ts, payload) VALUES (?, ?, ?, ?, ?, ?)"),
                true,
                false,
            )
            .await?,
            load_snapshot: prep(
                format!("SELECT seq, version, ts, payload FROM {ks}.snapshots WHERE entity_type = ? AND entity_id = ?"),
                true,
                false,
            )
            .await?,
            feed_insert: prep(
                format!(
                    "INSERT INTO {ks}.events_by_shard (shard, hour, offset, entity_type, entity_id, bucket, seq) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                true,
                false,
            )
            .await?,
            feed_read: prep(
                format!(
                    "SELECT offset, entity_type, entity_id, bucket, seq FROM {ks}.events_by_shard WHERE shard = ? AND hour = ? AND offset > ? LIMIT 1024"
                ),
                true,
                false,
            )
            .await?,
            index_insert: prep(format!("INSERT INTO {ks}.entity_ids (entity_type, shard, entity_id) VALUES (?, ?, ?)"), true, false)
                .await?,
            index_read: prep(format!("SELECT entity_id FROM {ks}.entity_ids WHERE entity_type = ? AND shard = ?"), true, false).await?,
            delete_to: prep(format!("DELETE FROM {ks}.events WHERE {pk} AND seq <= ?"), true, false).await?,
        })
    }
}
