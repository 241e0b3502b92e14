//! What the runtime stores around the user's bytes: per-event metadata (the
//! invocation id and, for retryable invocations, the reply) and the snapshot
//! envelope (state + idempotency window).
//!
//! May import nothing of the runtime but `flow::records` (serde types only).

use serde::{Deserialize, Serialize};

/// Version of the snapshot envelope, stored as the journal snapshot's version.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Metadata stored with each event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// The invocation that wrote the event.
    #[serde(default)]
    pub invocation: String,
    /// The reply (MessagePack), on the last event of a retryable invocation,
    /// so a retry after a restart gets the original reply.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub reply: Option<Vec<u8>>,
    /// In a cluster: the node that committed the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// In a cluster: the shard-lease epoch it committed under (an audit
    /// trail of ownership: per entity, epochs never decrease along seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// With traces on, on events whose append sends messages or calls: the
    /// W3C `traceparent` of the invocation, so their delivery joins its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl EventMeta {
    /// Encodes to MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }
    /// Decodes; garbage yields empty metadata (it is informational).
    pub fn decode(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Self::default();
        }
        tessera_entities::codec::from_msgpack(bytes).unwrap_or_default()
    }
}

/// One remembered invocation of an entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// The idempotency key.
    pub id: String,
    /// The seq of the invocation's last event.
    pub seq: u64,
    /// When it committed, ms since the epoch.
    pub at_ms: i64,
    /// The reply (MessagePack).
    #[serde(with = "serde_bytes_vec")]
    pub reply: Vec<u8>,
}

/// The snapshot the runtime stores: the entity's state and its idempotency window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEnvelope {
    /// The entity's `STATE_VERSION` when taken.
    pub state_version: u32,
    /// The state, MessagePack.
    #[serde(with = "serde_bytes_vec")]
    pub state: Vec<u8>,
    /// The idempotency window at that seq.
    #[serde(default)]
    pub dedup: Vec<DedupEntry>,
    /// The entity's pending timers at that seq.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<crate::flow::PendingTimer>,
}

mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};
    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

mod opt_bytes {
    use serde::{Deserializer, Serializer};
    pub(crate) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        super::serde_bytes_vec::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_roundtrip_and_tolerance() {
        let m = EventMeta { invocation: "k1".into(), reply: Some(vec![0x91, 0x01]), ..Default::default() };
        assert_eq!(EventMeta::decode(&m.encode()), m);
        let m = EventMeta { invocation: "k2".into(), node: Some("n1".into()), epoch: Some(7), ..Default::default() };
        assert_eq!(EventMeta::decode(&m.encode()), m);
        assert_eq!(EventMeta::decode(b"\xc1garbage"), EventMeta::default());
    }

    #[test]
    fn snapshot_roundtrip() {
        let s = SnapshotEnvelope {
            state_version: 1,
            state: vec![1, 2, 3],
            dedup: vec![DedupEntry { id: "a".into(), seq: 2, at_ms: 9, reply: vec![0xc0] }],
            timers: vec![crate::flow::PendingTimer {
                id: "expire".into(),
                seq: 2,
                at_ms: 10,
                command: tessera_entities::CommandCall::named("expire", &()).unwrap(),
            }],
        };
        let bytes = rmp_serde::to_vec_named(&s).unwrap();
        assert_eq!(rmp_serde::from_slice::<SnapshotEnvelope>(&bytes).unwrap(), s);
        // A snapshot written before timers existed still reads.
        let old = SnapshotEnvelope { timers: Vec::new(), ..s };
        let bytes = rmp_serde::to_vec_named(&old).unwrap();
        assert_eq!(rmp_serde::from_slice::<SnapshotEnvelope>(&bytes).unwrap(), old);
    }
}

/// Hostile bytes where the runtime reads what a journal row holds — event
/// metadata, snapshot envelopes, flow records (sends, timers, calls), the
/// dispatcher's checkpoint state — whichever backend stored them (a local
/// record's payload, a Scylla row's blob columns): an error or a value,
/// never a panic, and no allocation sized by a claimed length. A short run
/// here; `fuzz/` for long ones.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::flow::FlowRecord;
    use crate::flow::records::{CALL, CANCEL, FIRED, SCHEDULE, SEND};

    fn decode_all(bytes: &[u8]) {
        let _ = EventMeta::decode(bytes);
        let _ = tessera_entities::codec::from_msgpack::<SnapshotEnvelope>(bytes);
        for t in [SEND, SCHEDULE, CANCEL, CALL, FIRED, "Restocked"] {
            if let Some(Ok(r)) = FlowRecord::decode(t, bytes) {
                let _ = r.json();
            }
        }
        let _ = crate::flow::DispatcherState::decode(Some(bytes));
    }

    fn sample() -> Vec<u8> {
        let s = SnapshotEnvelope {
            state_version: 1,
            state: vec![0x81, 0xa1, b'a', 0x01],
            dedup: vec![DedupEntry { id: "k".into(), seq: 2, at_ms: 9, reply: vec![0xc0] }],
            timers: Vec::new(),
        };
        rmp_serde::to_vec_named(&s).unwrap()
    }

    /// Cases per property: 3000 in the suite, `TESSERA_FUZZ_CASES` for long runs (docs/fuzzing.md).
    fn fuzz_cases() -> u32 {
        std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            decode_all(&bytes);
        }

        #[test]
        fn a_real_envelope_with_bytes_changed(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
            let mut b = sample();
            let i = at.index(b.len());
            if cut { b.truncate(i) } else { b[i] = byte }
            decode_all(&b);
        }
    }

    #[test]
    fn claimed_lengths_and_deep_nesting() {
        for head in [0xdd_u8, 0xdf, 0xc6, 0xdb] {
            decode_all(&[head, 0xff, 0xff, 0xff, 0xff]);
            decode_all(&[0x84, 0xa5, b's', b't', b'a', b't', b'e', head, 0xff, 0xff, 0xff, 0xff]);
        }
        let deep = std::thread::Builder::new().stack_size(1 << 20).spawn(|| decode_all(&vec![0x91; 100_000])).unwrap();
        deep.join().expect("no stack overflow");
    }
}
