//! Journal errors, per operation.

/// Why a read, snapshot or delete failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The store could not be reached or written (IO error, server down,
    /// timeout). The operation may be retried; an append that failed this way
    /// may or may not have been written, so re-read before deciding.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// A stored record failed its checksum or does not parse.
    #[error("corrupt journal record for {entity} at seq {seq}: {detail}")]
    Corrupt {
        /// The entity (`type/id`), or `-` when unknown.
        entity: String,
        /// The seq (0 when unknown).
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// The request itself is invalid (e.g. an empty append, a snapshot past the end).
    #[error("invalid journal request: {0}")]
    Invalid(String),
    /// The journal was closed.
    #[error("journal closed")]
    Closed,
    /// A feed read starts behind the shard's retention: the entries after
    /// `after` up to `expired_to` are gone (a reader that fell behind).
    #[error(
        "the feed of {entity_type}/{shard} after offset {after} has expired (retention removed it up to {expired_to})"
    )]
    FeedExpired {
        /// The entity type.
        entity_type: String,
        /// The shard.
        shard: u32,
        /// The offset the read started after.
        after: u64,
        /// The last offset removed.
        expired_to: u64,
    },
}

/// Why an append failed. Nothing was written unless the error is
/// [`JournalError::Unavailable`], whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// `expected_seq` was not the entity's last seq: another writer got there
    /// first. Nothing was written.
    #[error("append conflict on {entity}: expected last seq {expected}, journal has {actual}")]
    Conflict {
        /// The entity, `type/id`.
        entity: String,
        /// The seq the caller expected.
        expected: u64,
        /// The journal's last seq.
        actual: u64,
    },
    /// The writer's epoch is not the entity's fence: a newer owner raised
    /// the fence (the writer's lease is gone), or the writer never raised it.
    /// Nothing was written.
    #[error(
        "append to {entity} fenced off: the writer's lease epoch is {epoch}, the entity is fenced at {current} \
         (another node took the entity over)"
    )]
    Fenced {
        /// The entity, `type/id`.
        entity: String,
        /// The writer's epoch.
        epoch: u64,
        /// The entity's fence (0: never raised).
        current: u64,
    },
    /// The entity already committed this idempotency key (within its
    /// retention), at `seq` (the last event of that append). Nothing was written.
    #[error("{entity} already committed idempotency key `{key}` (at seq {seq})")]
    Duplicate {
        /// The entity, `type/id`.
        entity: String,
        /// The key.
        key: String,
        /// The last seq of the append that committed it.
        seq: u64,
    },
    /// Any other failure.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Why a local journal could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (or journal instance) has the directory open.
    #[error("journal directory {path} is in use by another process (lock held on {path}/LOCK)")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The directory holds files that are not a Tessera journal.
    #[error(
        "{path} is not a Tessera journal directory (it is not empty and has no tessera-journal.json); refusing to touch it"
    )]
    Foreign {
        /// The directory.
        path: String,
    },
    /// The directory was written by a newer Tessera (or another format).
    #[error(
        "{path} holds a `{format}` journal of format version {found}; this build reads `tessera-local-journal` up to version {supported}"
    )]
    Incompatible {
        /// The directory.
        path: String,
        /// The format name found.
        format: String,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An IO or storage engine error.
    #[error("cannot open journal at {path}: {message}")]
    Io {
        /// The directory.
        path: String,
        /// The underlying error.
        message: String,
    },
}
