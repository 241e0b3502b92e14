//! Errors of the cluster layer.

/// Why a cluster operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS or its KV bucket could not be reached or set up.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set lost: somebody else wrote the key since we read it.
    #[error("lease `{key}` changed hands (revision moved past {revision})")]
    Conflict {
        /// The KV key.
        key: String,
        /// The revision we expected.
        revision: u64,
    },
    /// A name cannot be used as a KV key (letters, digits, `-`, `_`, `=`, `.`, `/`).
    #[error("`{0}` cannot be used in a cluster key: use letters, digits, `-`, `_`, `=` or `.`")]
    InvalidName(String),
    /// This node disagrees with the running cluster (e.g. another shard count).
    #[error("incompatible with the running cluster: {0}")]
    Incompatible(String),
}
