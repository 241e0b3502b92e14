//! The bodies of the HTTP API (JSON) and of NATS replies (JSON or
//! MessagePack): one type each, used to write them and to read them back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::results::{InvocationResult, ResultStatus};

/// Every error, on every edge: `{"error": {...}}` with the HTTP status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable name of the kind, e.g. `rejected`, `shard_moved`.
    pub kind: String,
    /// The whole message, for people.
    pub message: String,
    /// The HTTP(-equivalent) status.
    pub status: u16,
    /// The kind's own part of the message (what a forwarded error is rebuilt from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A rejection's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A rejection's structured details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorBody {
    /// An error of `kind` with `message`, e.g. a route that does not exist.
    pub fn new(kind: &str, status: u16, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                kind: kind.to_owned(),
                message: message.into(),
                status,
                detail: None,
                code: None,
                details: None,
            },
        }
    }
}

/// `GET /v1/entities/{type}/{id}`, and the owner's answer to a state read over NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateBody {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The seq of the last event the state includes.
    pub seq: u64,
    /// The state.
    pub state: Value,
    /// Its pending timers (`{id, seq, at_ms, command}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Value>,
    /// Messages and calls it committed that are not delivered yet (`{seq, record}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undelivered: Vec<Value>,
    /// Its messages given up (the target could not take them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<Value>,
}

/// `DELETE /v1/entities/{type}/{id}`: the tombstone, and when the purge is due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeletedBody {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The seq of its tombstone.
    pub deleted_at_seq: u64,
    /// When its journal is purged, ms since the Unix epoch.
    pub purge_at_ms: i64,
    /// The same, RFC 3339.
    pub purge_at: String,
}

/// One journal event as JSON (payloads are self-describing MessagePack, so
/// no user type is needed to show them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventBody {
    /// Its seq.
    pub seq: u64,
    /// Commit time, RFC 3339 UTC.
    pub time: String,
    /// Commit time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The event's type name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its schema version.
    pub version: u32,
    /// The invocation that wrote it.
    pub invocation_id: String,
    /// The event (`{"undecodable": "..."}` when its payload does not decode).
    pub event: Value,
    /// In a cluster: the node that committed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// In a cluster: the lease epoch it committed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// `GET /v1/entities/{type}/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsBody {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// Events in seq order.
    pub events: Vec<EventBody>,
    /// Where the next page starts, when there may be more.
    pub next_from: Option<u64>,
}

/// One entity of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityBody {
    /// Its id.
    pub id: String,
    /// Its last seq.
    pub last_seq: u64,
    /// Events up to this seq were deleted (0: none).
    pub deleted_to: u64,
}

/// `GET /v1/entities/{type}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntitiesBody {
    /// The entity type.
    pub entity_type: String,
    /// Entities ordered by id.
    pub entities: Vec<EntityBody>,
    /// Where the next page starts (`?after=`), when there may be more.
    pub next_after: Option<String>,
}

/// `POST /v1/functions/{name}?mode=async` (202, or 200 when the key's call is already done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AcceptedBody {
    /// The invocation id.
    pub invocation_id: String,
    /// Where it is.
    pub status: ResultStatus,
    /// Where to poll: `/v1/invocations/{id}`.
    pub result_url: String,
}

/// `GET /v1/invocations/{id}`: the result row, its reply as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationBody {
    /// The invocation id.
    pub invocation_id: String,
    /// What was invoked: `function:NAME`.
    pub target: String,
    /// Where it is.
    pub status: ResultStatus,
    /// The HTTP-equivalent status code (0 while not final).
    pub status_code: u16,
    /// The caller's content type.
    pub content_type: String,
    /// The reply (or the error body) as JSON; null while pending or when truncated.
    pub body: Value,
    /// Size of the reply in bytes.
    pub body_size: u64,
    /// True when the reply was larger than the inline limit and not kept.
    pub truncated: bool,
    /// The error, for `error` and `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node that ran it.
    pub node_id: String,
    /// The executor that ran it.
    pub executor_id: String,
    /// The caller's request id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How many times it was delivered.
    pub attempts: u32,
    /// When it was accepted (ms since the epoch).
    pub accepted_ms: i64,
    /// When it last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<i64>,
    /// When the row expires.
    pub expires_ms: i64,
}

impl From<&InvocationResult> for InvocationBody {
    fn from(r: &InvocationResult) -> Self {
        let body = r.body.as_deref().map(|b| tessera_entities::codec::msgpack_to_json(b).unwrap_or_default());
        Self {
            invocation_id: r.invocation_id.clone(),
            target: r.target.clone(),
            status: r.status,
            status_code: r.status_code,
            content_type: r.content_type.clone(),
            body: body.unwrap_or(Value::Null),
            body_size: r.body_size,
            truncated: r.truncated,
            error: r.error.clone(),
            node_id: r.node_id.clone(),
            executor_id: r.executor_id.clone(),
            request_id: r.request_id.clone(),
            attempts: r.attempts,
            accepted_ms: r.accepted_ms,
            started_ms: r.started_ms,
            completed_ms: r.completed_ms,
            expires_ms: r.expires_ms,
        }
    }
}

/// An entity type a node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityTypeBody {
    /// Its name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its command names.
    pub commands: Vec<String>,
    /// The version its events are written with.
    pub event_version: u32,
}

/// A function a node serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionBody {
    /// Its name.
    pub name: String,
    /// What it needs to run (CPU, or a GPU with memory).
    pub resources: Value,
}

/// `GET /v1/registry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryBody {
    /// Entity types.
    pub entities: Vec<EntityTypeBody>,
    /// Functions.
    pub functions: Vec<FunctionBody>,
}

/// `GET /v1/autoscaler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AutoscalerBody {
    /// This node.
    pub node_id: String,
    /// Whether this node runs the autoscaler (holds the `leader` singleton).
    pub leader: bool,
    /// Live members this node sees (absent outside a cluster).
    pub members: Option<usize>,
    /// The policy state while it runs here (of the entities group).
    #[schema(value_type = Option<Object>)]
    pub state: Option<tessera_cluster::autoscaler::PolicyState>,
    /// Every sized group's policy state while it runs here.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub groups: std::collections::BTreeMap<tessera_cluster::ScaleGroup, tessera_cluster::autoscaler::PolicyState>,
    /// Its recent decisions, oldest first.
    pub decisions: Vec<DecisionBody>,
}

/// One scaling decision of the autoscaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionBody {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The scale group (`entities`, `functions`).
    #[serde(default)]
    pub group: String,
    /// Nodes before.
    pub from: usize,
    /// Nodes asked for.
    pub to: usize,
    /// Why, in words.
    pub reason: String,
    /// Live nodes seen when deciding.
    pub live: usize,
    /// The averaged load it decided on.
    #[schema(value_type = Object)]
    pub observation: tessera_cluster::autoscaler::Observation,
    /// The scaler that applied it.
    pub scaler: String,
    /// The scaler's error, if it failed.
    pub error: Option<String>,
}

/// `cluster locate TYPE ID --json`: where an entity lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocateBody {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// Its Murmur3 token (Cassandra's `token(entity_type, entity_id)`).
    pub token: i64,
    /// Its shard.
    pub shard: u32,
    /// The cluster's shard count.
    pub shards: u32,
    /// The node holding the shard's lease, if any.
    pub owner: Option<String>,
    /// The lease's epoch.
    pub epoch: Option<u64>,
    /// The lease's state (owned, releasing).
    pub state: Option<tessera_cluster::LeaseState>,
    /// The owner's HTTP address.
    pub owner_http: Option<String>,
}

/// One entry of a unit's feed (`GET /v1/feed/{type}/{shard}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedEntryBody {
    /// Its offset in the unit's feed.
    pub offset: u64,
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The event, as in an entity's journal.
    #[serde(flatten)]
    pub event: EventBody,
}

impl From<&tessera_journal::ShardEvent> for FeedEntryBody {
    fn from(e: &tessera_journal::ShardEvent) -> Self {
        Self {
            offset: e.offset,
            entity_type: e.entity.entity_type.clone(),
            entity_id: e.entity.entity_id.clone(),
            event: crate::inspect::event_body(&e.event),
        }
    }
}

/// A page of a unit's feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedBody {
    /// The unit's entity type.
    pub entity_type: String,
    /// The unit's shard.
    pub shard: u32,
    /// Entries in offset order.
    pub events: Vec<FeedEntryBody>,
    /// The `from` of the next page.
    pub next_from: u64,
    /// The feed's last visible offset.
    pub last: u64,
    /// Offsets up to here expired.
    pub expired_to: u64,
}

/// A projection (`GET /v1/projections/{name}`; in the list, without units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectionBody {
    /// Its name.
    pub name: String,
    /// The entity types it reads.
    pub entity_types: Vec<String>,
    /// True when it keeps state with its checkpoints (reset only).
    pub keeps_state: bool,
    /// Events it is behind, summed over the units listed (or run here).
    pub lag: u64,
    /// Units whose last batch failed.
    pub errors: usize,
    /// Units this node runs.
    pub running_here: usize,
    /// Per unit: checkpoint, feed end, lag, last error.
    #[serde(default)]
    pub units: Vec<crate::projection::UnitStatus>,
}

/// `GET /v1/projections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectionsBody {
    /// The node answering.
    pub node_id: String,
    /// Its projections.
    pub projections: Vec<ProjectionBody>,
}

/// The body of `POST /v1/projections/{name}/rewind` (and `reset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewindBody {
    /// The offset to deliver after (0: from the start).
    #[serde(default)]
    pub to: u64,
    /// Only this entity type's units.
    #[serde(default)]
    pub entity_type: Option<String>,
    /// Only this shard's units.
    #[serde(default)]
    pub shard: Option<u32>,
}

/// What a rewind or reset moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RewoundBody {
    /// The projection.
    pub projection: String,
    /// The offset its checkpoints are at now.
    pub to: u64,
    /// How many units' checkpoints moved.
    pub units: usize,
}
