//! On-disk layout of the local journal: keys that sort by entity then seq,
//! and CRC32-checked records.

use crate::types::{EntityKey, PersistedEvent, Snapshot};

/// `[type len u16][type][id len u32][id]`: the prefix of an entity's events.
pub(crate) fn entity_prefix(key: &EntityKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + key.entity_type.len() + key.entity_id.len() + 8);
    out.extend_from_slice(&(key.entity_type.len() as u16).to_be_bytes());
    out.extend_from_slice(key.entity_type.as_bytes());
    out.extend_from_slice(&(key.entity_id.len() as u32).to_be_bytes());
    out.extend_from_slice(key.entity_id.as_bytes());
    out
}

/// The prefix plus a big-endian seq: one event's key.
pub(crate) fn event_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// The seq of the last event stored under an entity's `prefix` (0: none).
pub(crate) fn last_event_seq(events: &fjall::Keyspace, prefix: &[u8]) -> Result<u64, fjall::Error> {
    match events.prefix(prefix).next_back() {
        None => Ok(0),
        Some(item) => {
            let key = item.key()?;
            Ok(key.len().checked_sub(8).and_then(|i| key[i..].try_into().ok()).map_or(0, u64::from_be_bytes))
        }
    }
}

/// `[type len u16][type]`: the prefix of a type's entries in the entity index.
pub(crate) fn type_prefix(entity_type: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entity_type.len());
    out.extend_from_slice(&(entity_type.len() as u16).to_be_bytes());
    out.extend_from_slice(entity_type.as_bytes());
    out
}

/// The entity type an index key starts with.
pub(crate) fn type_of_key(key: &[u8]) -> Option<String> {
    let mut r = Reader(key);
    let len = r.u16()? as usize;
    std::str::from_utf8(r.take(len)?).ok().map(str::to_owned)
}

/// The entity index key: `[type len u16][type][id]` (ids sort as bytes).
pub(crate) fn index_key(key: &EntityKey) -> Vec<u8> {
    let mut out = type_prefix(&key.entity_type);
    out.extend_from_slice(key.entity_id.as_bytes());
    out
}

/// `[type len u16][type][shard u32]`: the prefix of one feed (the events
/// of one entity type in one shard: the unit a node holds a lease on).
pub(crate) fn unit_prefix(entity_type: &str, shard: u32) -> Vec<u8> {
    let mut out = type_prefix(entity_type);
    out.extend_from_slice(&shard.to_be_bytes());
    out
}

/// The unit prefix plus a big-endian offset: one feed entry's key.
pub(crate) fn feed_key(unit: &[u8], offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(unit.len() + 8);
    out.extend_from_slice(unit);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// The offset at the end of a feed entry's key.
pub(crate) fn feed_offset(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|i| key[i..].try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// Parses an entity prefix back into its key; also returns the bytes after it.
pub(crate) fn parse_entity_prefix(bytes: &[u8]) -> Option<(EntityKey, &[u8])> {
    let mut r = Reader(bytes);
    let tlen = r.u16()? as usize;
    let entity_type = std::str::from_utf8(r.take(tlen)?).ok()?.to_owned();
    let ilen = r.u32()? as usize;
    let entity_id = std::str::from_utf8(r.take(ilen)?).ok()?.to_owned();
    Some((EntityKey { entity_type, entity_id }, r.0))
}

/// Prepends a CRC32 of `body`.
fn seal(body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Checks the CRC32 and returns the body.
fn unseal(record: &[u8]) -> Result<&[u8], String> {
    if record.len() < 4 {
        return Err(format!("record of {} bytes is too short", record.len()));
    }
    let (crc, body) = record.split_at(4);
    let stored = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    Ok(body)
}

pub(crate) fn encode_event(
    timestamp_ms: i64,
    type_name: &str,
    version: u32,
    payload: &[u8],
    metadata: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 4 + 2 + type_name.len() + 8 + payload.len() + metadata.len());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&(type_name.len() as u16).to_be_bytes());
    b.extend_from_slice(type_name.as_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.extend_from_slice(&(metadata.len() as u32).to_be_bytes());
    b.extend_from_slice(metadata);
    seal(b)
}

pub(crate) fn decode_event(seq: u64, record: &[u8]) -> Result<PersistedEvent, String> {
    let body = unseal(record)?;
    let mut r = Reader(body);
    let bad = || "truncated event record".to_owned();
    let timestamp_ms = r.u64().ok_or_else(bad)? as i64;
    let version = r.u32().ok_or_else(bad)?;
    let tlen = r.u16().ok_or_else(bad)? as usize;
    let type_name = std::str::from_utf8(r.take(tlen).ok_or_else(bad)?).map_err(|e| e.to_string())?.to_owned();
    let plen = r.u32().ok_or_else(bad)? as usize;
    let payload = r.take(plen).ok_or_else(bad)?.to_vec();
    let mlen = r.u32().ok_or_else(bad)? as usize;
    let metadata = r.take(mlen).ok_or_else(bad)?.to_vec();
    Ok(PersistedEvent { seq, timestamp_ms, type_name, version, payload, metadata })
}

/// What the entity index holds per entity.
///
/// Since format version 2 the row is written when the entity's first event
/// is, and again only when `deleted_to` or `fence` changes (and on a
/// delete, with the last seq then current): an append writes its events
/// and feed entries, not this row. An entity's last seq is the larger of
/// the row's and its last event key's ([`last_event_seq`]); version-1
/// journals wrote the row on every append, so they read the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EntityMeta {
    pub(crate) last_seq: u64,
    pub(crate) deleted_to: u64,
    /// The writer epoch appends must carry (0: never raised). Records
    /// written before fences existed end after `deleted_to` and read as 0;
    /// older builds ignore the trailing field.
    pub(crate) fence: u64,
}

pub(crate) fn encode_meta(m: EntityMeta) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&m.last_seq.to_be_bytes());
    b.extend_from_slice(&m.deleted_to.to_be_bytes());
    if m.fence != 0 {
        b.extend_from_slice(&m.fence.to_be_bytes());
    }
    seal(b)
}

pub(crate) fn decode_meta(record: &[u8]) -> Result<EntityMeta, String> {
    let mut r = Reader(unseal(record)?);
    let bad = || "truncated entity record".to_owned();
    let (last_seq, deleted_to) = (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
    let fence = if r.0.is_empty() { 0 } else { r.u64().ok_or_else(bad)? };
    Ok(EntityMeta { last_seq, deleted_to, fence })
}

pub(crate) fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + s.payload.len());
    b.extend_from_slice(&s.seq.to_be_bytes());
    b.extend_from_slice(&s.timestamp_ms.to_be_bytes());
    b.extend_from_slice(&s.version.to_be_bytes());
    b.extend_from_slice(&s.payload);
    seal(b)
}

pub(crate) fn decode_snapshot(record: &[u8]) -> Result<Snapshot, String> {
    let mut r = Reader(unseal(record)?);
    let bad = || "truncated snapshot record".to_owned();
    let seq = r.u64().ok_or_else(bad)?;
    let timestamp_ms = r.u64().ok_or_else(bad)? as i64;
    let version = r.u32().ok_or_else(bad)?;
    Ok(Snapshot { seq, version, timestamp_ms, payload: r.0.to_vec() })
}

/// A feed entry: the event's entity prefix and seq, and its commit time.
pub(crate) fn encode_feed_ref(prefix: &[u8], seq: u64, ts: i64, internal: bool) -> Vec<u8> {
    let mut b = event_key(prefix, seq);
    b.extend_from_slice(&ts.to_be_bytes());
    b.push(if internal { FEED_INTERNAL } else { FEED_ENTITY });
    seal(b)
}

/// The last byte of a feed entry written since it says so: its event is one
/// of the runtime's records (a type under `INTERNAL_TYPE_PREFIX`).
const FEED_INTERNAL: u8 = 1;
/// … or an entity's own event.
const FEED_ENTITY: u8 = 2;

/// A feed entry's entity, seq, commit time (entries written before feeds
/// kept time read as time 0) and whether its event is one of the runtime's
/// records (`None`: an entry written before entries said so). Builds that
/// know only the time ignore the last byte.
pub(crate) fn decode_feed_ref(record: &[u8]) -> Result<(EntityKey, u64, i64, Option<bool>), String> {
    let body = unseal(record)?;
    let (key, rest) = parse_entity_prefix(body).ok_or("bad feed entry")?;
    let mut r = Reader(rest);
    let seq = r.u64().ok_or("bad feed entry seq")?;
    let ts = r.u64().map_or(0, |t| t as i64);
    let internal = match r.take(1) {
        Some([FEED_INTERNAL]) => Some(true),
        Some([FEED_ENTITY]) => Some(false),
        _ => None,
    };
    Ok((key, seq, ts, internal))
}

/// `feed_expired_to/{unit}` in the meta keyspace: the last offset
/// retention removed from the unit's feed.
pub(crate) fn expired_key(unit: &[u8]) -> Vec<u8> {
    let mut k = b"feed_expired_to/".to_vec();
    k.extend_from_slice(unit);
    k
}

/// `feed_floor/{unit}` in the meta keyspace: the unit's last offset when
/// a purge removed entries from it (the tail may have been among them, and
/// offsets are never given out twice).
pub(crate) fn floor_key(unit: &[u8]) -> Vec<u8> {
    let mut k = b"feed_floor/".to_vec();
    k.extend_from_slice(unit);
    k
}

/// `feed_unit/{unit}` in the meta keyspace: a feed that exists (the sweep's list).
pub(crate) const UNIT_MARK: &[u8] = b"feed_unit/";

/// An idempotency key of an entity: `[entity prefix][key]`.
pub(crate) fn key_key(entity: &EntityKey, key: &str) -> Vec<u8> {
    let mut k = entity_prefix(entity);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `[expires at BE][entity prefix][key]`: the sweep's order of keys.
pub(crate) fn key_expiry(expires_ms: i64, key_key: &[u8]) -> Vec<u8> {
    let mut k = (expires_ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(key_key);
    k
}

/// A remembered key: the seq of the event it names (its invocation's last), when it expires.
pub(crate) fn encode_key_record(seq: u64, expires_ms: i64) -> Vec<u8> {
    let mut b = seq.to_be_bytes().to_vec();
    b.extend_from_slice(&expires_ms.to_be_bytes());
    seal(b)
}

pub(crate) fn decode_key_record(record: &[u8]) -> Result<(u64, i64), String> {
    let mut r = Reader(unseal(record)?);
    let bad = || "truncated key record".to_owned();
    Ok((r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)? as i64))
}

/// An 8-byte big-endian number (meta records).
pub(crate) fn decode_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_records_roundtrip_and_detect_corruption() {
        let rec = encode_event(42, "Restocked", 2, b"payload", b"meta");
        let e = decode_event(7, &rec).unwrap();
        assert_eq!((e.seq, e.timestamp_ms, e.type_name.as_str(), e.version), (7, 42, "Restocked", 2));
        assert_eq!((e.payload.as_slice(), e.metadata.as_slice()), (&b"payload"[..], &b"meta"[..]));
        let mut bad = rec.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_event(7, &bad).unwrap_err().contains("checksum"));
    }

    #[test]
    fn entity_records_read_with_and_without_a_fence() {
        let old = EntityMeta { last_seq: 9, deleted_to: 2, fence: 0 };
        assert_eq!(encode_meta(old).len(), 4 + 16, "unfenced records keep the original layout");
        assert_eq!(decode_meta(&encode_meta(old)).unwrap(), old);
        let fenced = EntityMeta { fence: 41, ..old };
        assert_eq!(decode_meta(&encode_meta(fenced)).unwrap(), fenced);
    }

    #[test]
    fn feed_refs_carry_their_time_and_kind_and_old_ones_read_as_unknown() {
        let p = entity_prefix(&EntityKey::new("t", "a"));
        let (k, seq, ts, internal) = decode_feed_ref(&encode_feed_ref(&p, 3, 1_700, true)).unwrap();
        assert_eq!((k, seq, ts, internal), (EntityKey::new("t", "a"), 3, 1_700, Some(true)));
        assert_eq!(decode_feed_ref(&encode_feed_ref(&p, 3, 1_700, false)).unwrap().3, Some(false));
        let old = seal(event_key(&p, 3));
        assert_eq!(decode_feed_ref(&old).unwrap().2, 0);
        let mut timed = event_key(&p, 3);
        timed.extend_from_slice(&1_700i64.to_be_bytes());
        let (_, _, ts, internal) = decode_feed_ref(&seal(timed)).unwrap();
        assert_eq!((ts, internal), (1_700, None), "an entry from before the kind was kept: unknown");
        assert_eq!(decode_key_record(&encode_key_record(9, 42)).unwrap(), (9, 42));
    }

    #[test]
    fn prefixes_do_not_collide_and_parse_back() {
        let a = entity_prefix(&EntityKey::new("stock", "ab"));
        let b = entity_prefix(&EntityKey::new("stock", "abc"));
        assert!(!b.starts_with(&a));
        let key = event_key(&b, 9);
        let (k, rest) = parse_entity_prefix(&key).unwrap();
        assert_eq!(k, EntityKey::new("stock", "abc"));
        assert_eq!(rest, 9u64.to_be_bytes());
    }
}

/// Hostile bytes at the record decoders (a short run here; `fuzz/` for
/// long ones): whatever a corrupted or crafted file holds is an error,
/// never a panic or an allocation sized by a length the record claims.
/// Bodies are sealed with a valid CRC so the decoding behind the checksum
/// is reached, not just the checksum.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(record: &[u8]) {
        let _ = decode_event(1, record);
        let _ = decode_meta(record);
        let _ = decode_snapshot(record);
        let _ = decode_feed_ref(record);
        let _ = decode_key_record(record);
        let _ = parse_entity_prefix(record);
        let _ = decode_u64(record);
    }

    /// Cases per property: 3000 in the suite, `TESSERA_FUZZ_CASES` for long runs (docs/fuzzing.md).
    fn fuzz_cases() -> u32 {
        std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn sealed_garbage_is_an_error_or_a_record(body in prop::collection::vec(any::<u8>(), 0..300)) {
            decode_all(&seal(body.clone()));
            decode_all(&body);
        }

        #[test]
        fn real_records_with_their_body_changed_and_resealed(
            payload in prop::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let p = entity_prefix(&EntityKey::new("stock", "s:1"));
            for rec in [
                encode_event(1, "Restocked", 1, &payload, b"m"),
                encode_meta(EntityMeta { last_seq: 3, deleted_to: 1, fence: 2 }),
                encode_snapshot(&Snapshot { seq: 1, version: 1, timestamp_ms: 2, payload: payload.clone() }),
                encode_feed_ref(&p, 4, 5, false),
                encode_key_record(6, 7),
            ] {
                let mut body = rec[4..].to_vec();
                if !body.is_empty() {
                    let i = at.index(body.len());
                    if cut { body.truncate(i) } else { body[i] = byte }
                }
                decode_all(&seal(body));
                // The stored CRC no longer matches: reported as such.
                let mut flipped = rec.clone();
                let i = at.index(flipped.len());
                flipped[i] ^= 0x5a;
                prop_assert!(decode_event(1, &flipped).is_err() || i < 4 && flipped == rec);
            }
        }
    }

    #[test]
    fn lengths_claiming_gigabytes_are_truncation_errors() {
        // An event record whose payload length says 4 GiB, and an entity
        // prefix whose id length says 4 GiB.
        let mut body = Vec::new();
        body.extend_from_slice(&1i64.to_be_bytes());
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.push(b'E');
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_event(1, &seal(body)).unwrap_err().contains("truncated"));
        let mut prefix = 5u16.to_be_bytes().to_vec();
        prefix.extend_from_slice(b"stock");
        prefix.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_feed_ref(&seal(prefix)).is_err());
    }
}
