//! Rebuilding an entity from its journal: latest usable snapshot, then the
//! events after it, streamed page by page.

use std::sync::Arc;

use futures::StreamExt;
use tessera_entities::{DynEntity, DynState, StoredEvent};
use tessera_journal::{EntityKey, Journal};

use super::dedup::{DedupLimits, DedupWindow};
use crate::envelope::{DedupEntry, EventMeta, SNAPSHOT_FORMAT, SnapshotEnvelope};
use crate::error::InvokeError;

/// A rebuilt entity.
pub(crate) struct Rebuilt {
    pub(crate) state: DynState,
    pub(crate) seq: u64,
    pub(crate) dedup: DedupWindow,
    pub(crate) events_since_snapshot: u64,
}

/// Rebuilds `key` up to `to_seq` (`u64::MAX`: everything). With
/// `use_snapshot`, starts from the latest snapshot at or before `to_seq`
/// whose versions this code understands.
pub(crate) async fn rebuild(
    entity: &Arc<dyn DynEntity>,
    journal: &Arc<dyn Journal>,
    key: &EntityKey,
    to_seq: u64,
    use_snapshot: bool,
    limits: DedupLimits,
) -> Result<Rebuilt, InvokeError> {
    let mut state = None;
    let mut seq = 0;
    let mut dedup = DedupWindow::default();
    let snap = if use_snapshot { journal.load_snapshot(key).await? } else { None };
    if let Some(snap) = snap
        && snap.seq <= to_seq
        && snap.version == SNAPSHOT_FORMAT
    {
        match rmp_serde::from_slice::<SnapshotEnvelope>(&snap.payload) {
            Ok(env) if env.state_version == entity.state_version() => match entity.decode_state(&env.state) {
                Ok(s) => {
                    state = Some(s);
                    seq = snap.seq;
                    dedup = DedupWindow::from_entries(env.dedup);
                }
                Err(e) => tracing::warn!(%key, error = %e, "snapshot does not decode; replaying from events"),
            },
            Ok(_) => tracing::info!(%key, "snapshot of another state version; replaying from events"),
            Err(e) => tracing::warn!(%key, error = %e, "snapshot envelope does not decode; replaying"),
        }
    }
    let mut state = state.unwrap_or_else(|| entity.initial_state());
    let from = seq + 1;
    let mut replayed = 0;
    let mut events = journal.read(key, from..=to_seq);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if ev.seq != seq + 1 {
            // Events were deleted and no usable snapshot covers them: the state would be a guess.
            return Err(gap(key, seq, ev.seq));
        }
        let stored = StoredEvent { seq: ev.seq, type_name: &ev.type_name, version: ev.version, payload: &ev.payload };
        entity.apply_stored(&mut state, stored).map_err(|e| InvokeError::Replay(format!("{key}: {e}")))?;
        let meta = EventMeta::decode(&ev.metadata);
        if let Some(reply) = meta.reply {
            dedup.insert(DedupEntry { id: meta.invocation, seq: ev.seq, at_ms: ev.timestamp_ms, reply }, limits);
        }
        seq = ev.seq;
        replayed += 1;
    }
    if replayed == 0 && to_seq == u64::MAX {
        let last = journal.last_seq(key).await?;
        if last > seq {
            return Err(gap(key, seq, last + 1));
        }
    }
    Ok(Rebuilt { state, seq, dedup, events_since_snapshot: replayed })
}

fn gap(key: &EntityKey, have: u64, next: u64) -> InvokeError {
    InvokeError::Replay(format!(
        "{key}: events {}..{} were deleted and no usable snapshot covers them",
        have + 1,
        next - 1
    ))
}

/// Encodes the snapshot envelope of an entity.
pub(crate) fn snapshot_payload(
    entity: &Arc<dyn DynEntity>,
    state: &DynState,
    dedup: &DedupWindow,
) -> Result<Vec<u8>, InvokeError> {
    let state = entity.encode_state(state).map_err(|e| InvokeError::Internal(format!("state does not encode: {e}")))?;
    let env = SnapshotEnvelope { state_version: entity.state_version(), state, dedup: dedup.to_entries() };
    rmp_serde::to_vec_named(&env).map_err(|e| InvokeError::Internal(e.to_string()))
}
