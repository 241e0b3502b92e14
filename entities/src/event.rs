//! Events as stored: type name, schema version and a self-describing MessagePack payload.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, CodecError};
use crate::entity::Entity;

/// An event encoded for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The event's type name (the enum variant's name).
    pub type_name: String,
    /// The entity's [`Entity::EVENT_VERSION`] when it was written.
    pub version: u32,
    /// MessagePack with field names (`rmp_serde::to_vec_named`).
    pub payload: Vec<u8>,
}

/// A persisted event as replay sees it.
#[derive(Debug, Clone, Copy)]
pub struct StoredEvent<'a> {
    /// The event's sequence number within its entity (1-based).
    pub seq: u64,
    /// The stored type name.
    pub type_name: &'a str,
    /// The stored schema version.
    pub version: u32,
    /// The stored payload.
    pub payload: &'a [u8],
}

/// An event written with an older schema version, handed to [`Entity::upcast`].
#[derive(Debug, Clone)]
pub struct OldEvent {
    /// The stored type name.
    pub type_name: String,
    /// The stored version (older than the current one).
    pub version: u32,
    /// The stored payload as JSON (the MessagePack decoded without the user's types).
    pub value: serde_json::Value,
}

/// Why an upcast failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The entity has no upcast for this type and version.
    #[error("no upcast from version {version} of event `{type_name}`")]
    Unsupported {
        /// The stored type name.
        type_name: String,
        /// The stored version.
        version: u32,
    },
    /// The upcast ran and failed.
    #[error("upcast failed: {0}")]
    Failed(String),
}

/// Why a stored event could not be replayed. Replay stops at the first such
/// event: state is never built from a guess.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The event was written by a newer version of the entity's code.
    #[error(
        "event seq {seq} (`{type_name}`) has schema version {found}, newer than the {supported} this code understands: upgrade the code before replaying this journal"
    )]
    NewerVersion {
        /// Sequence number of the event.
        seq: u64,
        /// Its type name.
        type_name: String,
        /// Its stored version.
        found: u32,
        /// The newest version this code knows.
        supported: u32,
    },
    /// The payload does not decode into the event type.
    #[error("event seq {seq} (`{type_name}` v{version}) does not decode: {message}")]
    Decode {
        /// Sequence number of the event.
        seq: u64,
        /// Its type name.
        type_name: String,
        /// Its stored version.
        version: u32,
        /// The decoder's message.
        message: String,
    },
    /// The upcast hook failed.
    #[error("event seq {seq}: {source}")]
    Upcast {
        /// Sequence number of the event.
        seq: u64,
        /// The upcast's error.
        source: UpcastError,
    },
}

/// Encodes one event of entity `E`.
pub fn encode_event<E: Entity>(event: &E::Event) -> Result<EncodedEvent, CodecError> {
    let payload = codec::to_msgpack(event)?;
    let type_name = codec::variant_name(&payload).unwrap_or_else(|| short_type_name::<E::Event>().to_owned());
    Ok(EncodedEvent { type_name, version: E::EVENT_VERSION, payload })
}

/// Decodes a stored event of entity `E`, upcasting older versions.
pub fn decode_event<E: Entity>(entity: &E, stored: StoredEvent<'_>) -> Result<E::Event, ReplayError> {
    let decode_err = |message: String| ReplayError::Decode {
        seq: stored.seq,
        type_name: stored.type_name.to_owned(),
        version: stored.version,
        message,
    };
    if stored.version == E::EVENT_VERSION {
        return codec::from_msgpack(stored.payload).map_err(|e| decode_err(e.to_string()));
    }
    if stored.version > E::EVENT_VERSION {
        return Err(ReplayError::NewerVersion {
            seq: stored.seq,
            type_name: stored.type_name.to_owned(),
            found: stored.version,
            supported: E::EVENT_VERSION,
        });
    }
    let value: serde_json::Value = codec::from_msgpack(stored.payload).map_err(|e| decode_err(e.to_string()))?;
    let old = OldEvent { type_name: stored.type_name.to_owned(), version: stored.version, value };
    let upcast = entity.upcast(old).map_err(|source| ReplayError::Upcast { seq: stored.seq, source })?;
    from_json_value(upcast).map_err(decode_err)
}

fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Encodes any serializable value the way events and replies are stored.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    codec::to_msgpack(value)
}
