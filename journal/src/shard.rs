//! Which shard an entity lives in: the slice of the Cassandra/ScyllaDB token
//! ring that holds the Murmur3 token of its composite key
//! `(entity_type, entity_id)`. One function, used by every layer.

use scylla::routing::partitioner::{Murmur3Partitioner, Partitioner, PartitionerHasher};

/// The default number of shards of a cluster (fixed for its life).
pub const DEFAULT_SHARDS: u32 = 1024;

/// The Murmur3 token Cassandra/ScyllaDB compute for the partition key
/// `(entity_type, entity_id)` (text, text): each component as a big-endian
/// u16 length, the bytes, and a 0 byte, hashed as one.
pub fn token(entity_type: &str, entity_id: &str) -> i64 {
    let mut hasher = Murmur3Partitioner.build_hasher();
    for part in [entity_type.as_bytes(), entity_id.as_bytes()] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        hasher.write(&len.to_be_bytes());
        hasher.write(part);
        hasher.write(&[0]);
    }
    hasher.finish().value()
}

/// The shard of a token: `(token + 2^63) >> (64 - log2(shards))`, so shards are
/// contiguous token ranges in ring order.
///
/// # Panics
/// If `shards` is not a power of two between 1 and 2^16.
pub fn shard_of_token(token: i64, shards: u32) -> u32 {
    assert!(shards.is_power_of_two() && shards <= 1 << 16, "shards must be a power of two ≤ 65536");
    if shards == 1 {
        return 0;
    }
    let unsigned = (token as u64) ^ (1 << 63); // token + 2^63, as an unsigned ring position
    (unsigned >> (64 - shards.trailing_zeros())) as u32
}

/// The shard of entity `(entity_type, entity_id)` among `shards`.
pub fn shard_of(entity_type: &str, entity_id: &str, shards: u32) -> u32 {
    shard_of_token(token(entity_type, entity_id), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cassandra_single_component_vector() {
        assert_eq!(Murmur3Partitioner.hash_one(b"test").value(), -6017608668500074083);
    }

    #[test]
    fn shards_are_contiguous_token_ranges() {
        assert_eq!(shard_of_token(i64::MIN, 1024), 0);
        assert_eq!(shard_of_token(-1, 1024), 511);
        assert_eq!(shard_of_token(0, 1024), 512);
        assert_eq!(shard_of_token(i64::MAX, 1024), 1023);
        assert_eq!(shard_of_token(12345, 1), 0);
    }

    #[test]
    fn stable_and_spread() {
        let a = shard_of("stock", "store-1:sku-1", DEFAULT_SHARDS);
        assert_eq!(a, shard_of("stock", "store-1:sku-1", DEFAULT_SHARDS));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(shard_of("stock", &format!("store-{i}:sku-ü{i}"), DEFAULT_SHARDS));
        }
        assert!(seen.len() > 1000, "10k keys should touch most of 1024 shards, got {}", seen.len());
    }
}
