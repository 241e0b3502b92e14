//! The OpenAPI 3.1 document of the HTTP API, served at `GET
//! /v1/openapi.json`: the bodies' schemas are derived from the wire types
//! (`utoipa::ToSchema` on `crate::wire`), the operations are declared here,
//! one function per route, next to nothing else so the route table reads
//! in one place. A test reads `http/mod.rs` and fails when a route is not
//! documented here (or documented and not routed); schemathesis, in the
//! test suite, checks a running node against this document.
//!
//! Command and reply bodies depend on the entity type (a serde enum per
//! type), so they are "any JSON" here; `GET /v1/registry` lists the
//! commands each type takes.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::wire;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "Stateful functions: entity commands, state and journal reads, stateless functions sync and async, the shard feed, projections. Errors are `{\"error\": {kind, message, status, ...}}`. With `[auth]` configured every route but `/healthz` and `/readyz` needs a bearer token (see docs/security.md).",
        license(name = "Apache-2.0")
    ),
    paths(
        command, state, delete_entity, events, entities, function, invocation, registry, autoscaler, cluster, shard_feed, type_feed,
        projections, projection, rewind, reset, healthz, readyz, metrics, openapi
    ),
    components(schemas(
        wire::ErrorBody, wire::ErrorDetail, wire::StateBody, wire::DeletedBody, wire::EventBody, wire::EventsBody, wire::EntityBody,
        wire::EntitiesBody, wire::AcceptedBody, wire::InvocationBody, wire::EntityTypeBody, wire::FunctionBody,
        wire::RegistryBody, wire::AutoscalerBody, wire::DecisionBody, wire::FeedEntryBody, wire::FeedBody,
        wire::ProjectionBody, wire::ProjectionsBody, wire::RewindBody, wire::RewoundBody,
        crate::results::ResultStatus, crate::projection::UnitStatus
    )),
    modifiers(&Bearer),
    security((), ("bearer" = []))
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("A JWT or an API key (only when the node has `[auth]` configured)"))
                        .build(),
                ),
            );
        }
    }
}

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Any JSON value (a command, a reply, a function's input or output).
#[derive(utoipa::ToSchema)]
#[schema(value_type = Object, description = "Any JSON value: its shape is the entity type's or function's own")]
#[allow(dead_code)]
struct Any(serde_json::Value);

// The operations. Their bodies are never called: axum routes to the
// handlers in `handlers.rs` and `feed.rs`.

/// Run a command on an entity.
///
/// The body is the command's fields as JSON (or MessagePack with
/// `Content-Type: application/msgpack`); the reply is the handler's reply
/// in the same format. The entity is created on its first command. With
/// `?mode=async` the command is queued (202 and an invocation id).
#[utoipa::path(
    post,
    path = "/v1/entities/{entity_type}/{entity_id}/{command}",
    tag = "entities",
    params(
        ("entity_type" = String, Path, description = "The entity type, e.g. `stock`"),
        ("entity_id" = String, Path, description = "The entity id: any UTF-8 without control characters, at most 1024 bytes"),
        ("command" = String, Path, description = "The command name (`GET /v1/registry` lists them)"),
        ("mode" = Option<String>, Query, description = "`sync` (default) or `async`"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first reply and appends nothing (1-200 letters, digits, `-`, `_`, `:`)"),
    ),
    request_body(content = Any, description = "The command's fields", content_type = "application/json"),
    responses(
        (status = 200, description = "The handler's reply (headers `Tessera-Seq`, `Tessera-Invocation-Id`)", body = Any),
        (status = 202, description = "Queued (`?mode=async`)", body = wire::AcceptedBody),
        (status = 400, description = "Malformed body, id, key or query", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Outside the caller's scopes (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type or command, or the entity was deleted (`entity_deleted`)", body = wire::ErrorBody),
        (status = 409, description = "The handler rejected it (`code`, `details`)", body = wire::ErrorBody),
        (status = 421, description = "Sent to a node that does not serve the entity's shard (NATS forwarding)", body = wire::ErrorBody),
        (status = 413, description = "Body over `http.max_body_bytes`", body = wire::ErrorBody),
        (status = 415, description = "Neither JSON nor MessagePack", body = wire::ErrorBody),
        (status = 429, description = "The entity's queue is full (`Retry-After`)", body = wire::ErrorBody),
        (status = 500, description = "The handler panicked (a bug in the entity's code; the entity is reset, nothing was written)", body = wire::ErrorBody),
        (status = 503, description = "Overloaded, the shard moving, or the journal down (`Retry-After`)", body = wire::ErrorBody),
        (status = 504, description = "No answer within the invocation timeout; the outcome is unknown (retry with the same key)", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn command() {}

/// An entity's state and last seq.
#[utoipa::path(
    get,
    path = "/v1/entities/{entity_type}/{entity_id}",
    tag = "entities",
    params(
        ("entity_type" = String, Path, description = "The entity type"),
        ("entity_id" = String, Path, description = "The entity id"),
        ("at" = Option<u64>, Query, description = "The state as of this seq (time travel)"),
        ("read" = Option<String>, Query, description = "`any` (default: committed state, replayed where needed) or `owner` (the owner's live entity)"),
        ("outbox" = Option<bool>, Query, description = "Also list undelivered messages and dead letters"),
    ),
    responses(
        (status = 200, description = "The state (seq 0 and the default state for an entity without events)", body = wire::StateBody),
        (status = 400, description = "Malformed id or query", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Outside the caller's scopes (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type, or the entity was deleted (`entity_deleted`)", body = wire::ErrorBody),
        (status = 416, description = "`at` past the last seq", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn state() {}

/// Delete an entity: its tombstone is written now (its commands and reads
/// answer 404 `entity_deleted` from then on); every row of it is purged
/// when `limits.delete_grace_secs` has passed, and the id starts afresh.
/// Needs the `entity:{type}:delete` scope when auth is on.
#[utoipa::path(
    delete,
    path = "/v1/entities/{entity_type}/{entity_id}",
    tag = "entities",
    params(
        ("entity_type" = String, Path, description = "The entity type"),
        ("entity_id" = String, Path, description = "The entity id"),
    ),
    responses(
        (status = 200, description = "Deleted (or deleted already: the first delete's outcome)", body = wire::DeletedBody),
        (status = 400, description = "Malformed id", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Outside the caller's scopes (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type, or nothing was ever written to the entity (`entity_not_found`)", body = wire::ErrorBody),
        (status = 503, description = "The journal is down, or the shard is moving", body = wire::ErrorBody),
        (status = 504, description = "No answer in time: retry (a delete is idempotent)", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn delete_entity() {}

/// An entity's journal.
#[utoipa::path(
    get,
    path = "/v1/entities/{entity_type}/{entity_id}/events",
    tag = "entities",
    params(
        ("entity_type" = String, Path, description = "The entity type"),
        ("entity_id" = String, Path, description = "The entity id"),
        ("from" = Option<u64>, Query, description = "First seq (default 1)"),
        ("to" = Option<u64>, Query, description = "Last seq (default: the last)"),
        ("limit" = Option<u64>, Query, description = "Events per page (1-10000, default 1000)"),
    ),
    responses(
        (status = 200, description = "A page of events in seq order", body = wire::EventsBody),
        (status = 400, description = "Malformed id or query", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn events() {}

/// The ids of an entity type, in order.
#[utoipa::path(
    get,
    path = "/v1/entities/{entity_type}",
    tag = "entities",
    params(
        ("entity_type" = String, Path, description = "The entity type"),
        ("after" = Option<String>, Query, description = "Start after this id"),
        ("limit" = Option<u64>, Query, description = "Ids per page (1-10000, default 1000)"),
        ("prefix" = Option<String>, Query, description = "Only ids starting with this (a scan of the type's list)"),
    ),
    responses(
        (status = 200, description = "A page of entities", body = wire::EntitiesBody),
        (status = 400, description = "Malformed query", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Outside the caller's scopes (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn entities() {}

/// Call a stateless function.
#[utoipa::path(
    post,
    path = "/v1/functions/{name}",
    tag = "functions",
    params(
        ("name" = String, Path, description = "The function, e.g. `product.image`"),
        ("mode" = Option<String>, Query, description = "`sync` (default) or `async` (202 and an invocation id to poll)"),
        ("Idempotency-Key" = Option<String>, Header, description = "For async calls: the invocation id (a second call with it is the same invocation)"),
    ),
    request_body(content = Any, description = "The function's input", content_type = "application/json"),
    responses(
        (status = 200, description = "The output (sync), or the finished invocation's row (async, key already done)", body = Any),
        (status = 202, description = "Accepted (async)", body = wire::AcceptedBody),
        (status = 400, description = "Malformed input, key or query", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Outside the caller's scopes (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown function", body = wire::ErrorBody),
        (status = 409, description = "The function refused the input", body = wire::ErrorBody),
        (status = 413, description = "Body over `http.max_body_bytes`", body = wire::ErrorBody),
        (status = 415, description = "Neither JSON nor MessagePack", body = wire::ErrorBody),
        (status = 429, description = "Executor queues full (`Retry-After`)", body = wire::ErrorBody),
        (status = 503, description = "No node can run it now (`Retry-After`)", body = wire::ErrorBody),
        (status = 504, description = "No answer within the timeout", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn function() {}

/// An async invocation's result.
#[utoipa::path(
    get,
    path = "/v1/invocations/{id}",
    tag = "functions",
    params(("id" = String, Path, description = "The invocation id")),
    responses(
        (status = 200, description = "Final: ok, error or timed_out", body = wire::InvocationBody),
        (status = 202, description = "Pending or running", body = wire::InvocationBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown, expired, or another tenant's", body = wire::ErrorBody),
        (status = 503, description = "The result store is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn invocation() {}

/// The entity types (with their commands) and functions this node serves.
#[utoipa::path(
    get,
    path = "/v1/registry",
    tag = "node",
    responses(
        (status = 200, description = "The registry", body = wire::RegistryBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn registry() {}

/// Whether this node runs the autoscaler, and its recent decisions.
#[utoipa::path(
    get,
    path = "/v1/autoscaler",
    tag = "node",
    responses(
        (status = 200, description = "The autoscaler's state here", body = wire::AutoscalerBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn autoscaler() {}

/// The cluster as its bucket shows it now: members, the leader, every
/// shard lease (`clustered: false` and this node alone outside a cluster).
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "node",
    responses(
        (status = 200, description = "Members, leader and shard map", body = Object),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 503, description = "The cluster bucket cannot be read", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn cluster() {}

/// A page of one unit's shard feed (or its live SSE stream).
#[utoipa::path(
    get,
    path = "/v1/feed/{entity_type}/{shard}",
    tag = "feed",
    params(
        ("entity_type" = String, Path, description = "The entity type"),
        ("shard" = u32, Path, description = "The shard"),
        ("from" = Option<String>, Query, description = "First offset: a number, `start` or `end`"),
        ("limit" = Option<u64>, Query, description = "Entries per page (1-10000, default 1000)"),
    ),
    responses(
        (status = 200, description = "A page in offset order (`Accept: text/event-stream`: a live stream)", body = wire::FeedBody),
        (status = 400, description = "Malformed query or shard", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type", body = wire::ErrorBody),
        (status = 410, description = "The offsets asked for expired", body = wire::ErrorBody),
        (status = 416, description = "Past the end of the feed", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn shard_feed() {}

/// Every shard of a type, live, as server-sent events (never ends).
#[utoipa::path(
    get,
    path = "/v1/feed/{entity_type}",
    tag = "feed",
    params(
        ("entity_type" = String, Path, description = "The entity type"),
        ("from" = Option<String>, Query, description = "`end` (default) or `start`"),
    ),
    responses(
        (status = 200, description = "Server-sent events, one per feed entry (`id` = offset)", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed query", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown entity type", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn type_feed() {}

/// The projections this node knows.
#[utoipa::path(
    get,
    path = "/v1/projections",
    tag = "projections",
    responses(
        (status = 200, description = "Projections with their lag", body = wire::ProjectionsBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn projections() {}

/// One projection, per unit.
#[utoipa::path(
    get,
    path = "/v1/projections/{name}",
    tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 200, description = "Checkpoints, feed ends, lag and errors per unit", body = wire::ProjectionBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown projection", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn projection() {}

/// Move a projection's checkpoints back (projections without state only).
#[utoipa::path(
    post,
    path = "/v1/projections/{name}/rewind",
    tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    request_body(content = wire::RewindBody, description = "Where to (optional: all units to 0)", content_type = "application/json"),
    responses(
        (status = 200, description = "What moved", body = wire::RewoundBody),
        (status = 400, description = "Malformed body, or a projection that keeps state", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown projection", body = wire::ErrorBody),
        (status = 409, description = "Refused (e.g. a checkpoint moved meanwhile)", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn rewind() {}

/// Start a projection over: checkpoints and kept state to zero.
#[utoipa::path(
    post,
    path = "/v1/projections/{name}/reset",
    tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    request_body(content = wire::RewindBody, description = "Which units (optional: all)", content_type = "application/json"),
    responses(
        (status = 200, description = "What moved", body = wire::RewoundBody),
        (status = 400, description = "Malformed body", body = wire::ErrorBody),
        (status = 401, description = "No or bad credentials (auth on)", body = wire::ErrorBody),
        (status = 403, description = "Needs `admin` (auth on)", body = wire::ErrorBody),
        (status = 404, description = "Unknown projection", body = wire::ErrorBody),
        (status = 409, description = "Refused (e.g. a checkpoint moved meanwhile)", body = wire::ErrorBody),
        (status = 503, description = "The journal is down", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn reset() {}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "node", security(()), responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn healthz() {}

/// Readiness.
#[utoipa::path(get, path = "/readyz", tag = "node", security(()), responses(
    (status = 200, description = "`ready`: a standalone node serving, or a cluster member holding its share of the shard leases", content_type = "text/plain", body = String),
    (status = 503, description = "Not ready yet (joining, taking shards) or leaving (`Retry-After`)", body = wire::ErrorBody),
))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    responses(
        (status = 200, description = "The text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "No or bad credentials (auth on, metrics not public)", body = wire::ErrorBody),
        (status = 403, description = "Needs `metrics` or `admin` (auth on)", body = wire::ErrorBody),
    )
)]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "node", security(()), responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
#[allow(dead_code)]
fn openapi() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes `http/mod.rs` declares.
    /// The API's routes (the console's page and files are not API).
    fn routed() -> Vec<String> {
        let src = include_str!("mod.rs");
        src.split(".route(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|p| !p.starts_with("/ui"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_path_routed() {
        let doc = ApiDoc::openapi();
        let mut documented: Vec<String> = doc.paths.paths.keys().cloned().collect();
        let mut routed = routed();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_wire_schemas() {
        let v: serde_json::Value = serde_json::from_str(&document()).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1"), "{}", v["openapi"]);
        for schema in ["ErrorBody", "StateBody", "InvocationBody", "FeedBody", "ResultStatus"] {
            assert!(v["components"]["schemas"][schema].is_object(), "{schema}");
        }
        assert_eq!(v["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
