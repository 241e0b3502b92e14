//! Request handlers: decode the edge (through [`crate::contract`]), call the
//! node core, encode the answer (a [`crate::wire`] body).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tessera_entities::{Format, codec};

use crate::auth::Principal;
use crate::contract;
use crate::error::InvokeError;
use crate::inspect::event_body;
use crate::node::{Invocation, Node, ReadFrom, new_invocation_id};
use crate::results::InvocationResult;
use crate::wire::{self, AcceptedBody, EntitiesBody, EntityBody, ErrorBody, EventsBody, InvocationBody, StateBody};

/// An error answered in the request's format.
pub(crate) struct ApiError(pub(crate) InvokeError, pub(crate) Format);

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        Self(e, Format::Json)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = codec::encode(&self.0.to_body(), self.1).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.1.content_type()));
        if let Some(s) = self.0.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str, format: Format) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError(InvokeError::Malformed(format!("header {name} must be visible ASCII")), format)),
    }
}

/// The body's format (see [`contract::content_format`]).
fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = header_str(headers, wire::CONTENT_TYPE, Format::Json)?;
    contract::content_format(ct).map_err(|e| ApiError(e, Format::Json))
}

fn key_of(headers: &HeaderMap, format: Format) -> Result<Option<String>, ApiError> {
    let key = header_str(headers, wire::IDEMPOTENCY_KEY, format)?;
    contract::client_key(key).map_err(|e| ApiError(e, format))
}

fn body_of(body: Result<Bytes, BytesRejection>, limit: usize, format: Format) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let e = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            InvokeError::TooLarge { limit }
        } else {
            InvokeError::Malformed(format!("cannot read body: {r}"))
        };
        ApiError(e, format)
    })
}

/// Encodes a MessagePack reply in `format`.
fn reply_response(reply: &[u8], format: Format) -> Result<Response, ApiError> {
    let body = codec::transcode_msgpack(reply, format)
        .map_err(|e| ApiError(InvokeError::Internal(format!("reply does not transcode: {e}")), format))?;
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    Ok(resp)
}

/// The caller's idempotency key in its tenant's namespace when auth is on
/// (`{tenant}:{key}`: one tenant's keys never meet another's); an async
/// call without a key gets a fresh id in that namespace.
fn tenant_key(
    principal: Option<&Principal>,
    key: Option<String>,
    fresh: bool,
    format: Format,
) -> Result<Option<String>, ApiError> {
    let Some(p) = principal else { return Ok(key) };
    let scoped = match key {
        Some(k) => p.scoped_key(&k),
        None if fresh => p.scoped_key(&new_invocation_id()),
        None => return Ok(None),
    };
    if scoped.len() > contract::MAX_KEY_LEN {
        let room = contract::MAX_KEY_LEN.saturating_sub(p.tenant.len() + 1);
        let e = InvokeError::Malformed(format!(
            "idempotency key too long: with its tenant prefix `{}:` a key may have at most {room} characters",
            p.tenant
        ));
        return Err(ApiError(e, format));
    }
    Ok(Some(scoped))
}

pub(crate) async fn command(
    State(node): State<Node>,
    Path((entity_type, entity_id, command)): Path<(String, String, String)>,
    q: Result<Query<FunctionQuery>, QueryRejection>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    if command.starts_with(tessera_journal::INTERNAL_TYPE_PREFIX) {
        let msg = format!("`{command}`: command names starting with `tessera.` are the runtime's own");
        return Err(ApiError(InvokeError::UnknownCommand(msg), format));
    }
    let body = body_of(body, node.config().http.max_body_bytes, format)?;
    let mode = query(q)?.mode;
    let idempotency_key =
        tenant_key(principal.as_deref(), key_of(&headers, format)?, mode.as_deref() == Some("async"), format)?;
    let inv = Invocation { entity_type, entity_id, command, body: body.to_vec(), format, idempotency_key };
    match mode.as_deref() {
        None | Some("sync") => {}
        Some("async") => {
            let row = node.invoke_async(inv).await.map_err(|e| ApiError(e, format))?;
            return Ok(accepted(row));
        }
        Some(other) => {
            return Err(ApiError(InvokeError::Malformed(format!("mode must be sync or async, not `{other}`")), format));
        }
    }
    let r = node.invoke(inv).await.map_err(|e| ApiError(e, format))?;
    let mut resp = reply_response(&r.reply, format)?;
    let h = resp.headers_mut();
    h.insert(wire::SEQ, HeaderValue::from(r.seq));
    if let Ok(v) = HeaderValue::from_str(&r.invocation_id) {
        h.insert(wire::INVOCATION_ID, v);
    }
    if r.deduplicated {
        h.insert(wire::DEDUPLICATED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// `DELETE /v1/entities/{type}/{id}`: the tombstone is durable when this
/// answers; the journal is purged when the grace period ends.
pub(crate) async fn delete(
    State(node): State<Node>,
    Path((entity_type, entity_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let o = node
        .delete_entity(&entity_type, &entity_id, crate::DeleteReason::Api)
        .await
        .map_err(|e| ApiError(e, Format::Json))?;
    let purge_at = crate::inspect::rfc3339_ms(o.purge_at_ms);
    let (deleted_at_seq, purge_at_ms) = (o.deleted_at_seq, o.purge_at_ms);
    Ok(Json(wire::DeletedBody { entity_type, entity_id, deleted_at_seq, purge_at_ms, purge_at }).into_response())
}

#[derive(Deserialize)]
pub(crate) struct StateQuery {
    at: Option<u64>,
    /// `any` (default) or `owner`.
    read: Option<String>,
    /// Also show the entity's undelivered messages and dead letters (reads
    /// the dispatcher's checkpoint and the feed after it).
    #[serde(default)]
    outbox: bool,
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError(InvokeError::Malformed(format!("bad query string: {e}")), Format::Json))
}

pub(crate) async fn state(
    State(node): State<Node>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<StateBody>, ApiError> {
    let q = query(q)?;
    let from = match q.read.as_deref() {
        None | Some("any") => ReadFrom::Any,
        Some("owner") => ReadFrom::Owner,
        Some(other) => {
            return Err(InvokeError::Malformed(format!("read must be `any` or `owner`, not `{other}`")).into());
        }
    };
    let view = match q.at {
        Some(seq) => node.state_at(&entity_type, &entity_id, seq).await?,
        None => node.state_from(&entity_type, &entity_id, from).await?,
    };
    let mut body = crate::inspect::state_body(entity_type, entity_id, view);
    if q.outbox && q.at.is_none() {
        // The outbox as the dispatcher's checkpoint and the feed show it.
        match node.outbox(&body.entity_type, &body.entity_id).await {
            Ok(o) => (body.undelivered, body.dead_letters) = (o.undelivered, o.dead_letters),
            Err(e) => tracing::debug!(error = %e, "outbox not read"),
        }
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn events(
    State(node): State<Node>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsBody>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let to = q.to.unwrap_or(u64::MAX);
    let events = node.events(&entity_type, &entity_id, q.from.unwrap_or(1), to, limit).await?;
    let next_from = (events.len() == limit).then(|| events.last().map(|e| e.seq + 1)).flatten().filter(|n| *n <= to);
    let events = events.iter().map(event_body).collect();
    Ok(Json(EventsBody { entity_type, entity_id, events, next_from }))
}

#[derive(Deserialize)]
pub(crate) struct EntitiesQuery {
    after: Option<String>,
    limit: Option<usize>,
    prefix: Option<String>,
}

pub(crate) async fn entities(
    State(node): State<Node>,
    Path(entity_type): Path<String>,
    q: Result<Query<EntitiesQuery>, QueryRejection>,
) -> Result<Json<EntitiesBody>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let prefix = q.prefix.as_deref().unwrap_or_default();
    let list = node.entities_with_prefix(&entity_type, q.after.as_deref(), prefix, limit).await?;
    let next_after = (list.len() == limit).then(|| list.last().map(|e| e.entity_id.clone())).flatten();
    let entities = list
        .into_iter()
        .map(|e| EntityBody { id: e.entity_id, last_seq: e.last_seq, deleted_to: e.deleted_to })
        .collect();
    Ok(Json(EntitiesBody { entity_type, entities, next_after }))
}

#[derive(Deserialize)]
pub(crate) struct FunctionQuery {
    mode: Option<String>,
}

pub(crate) async fn function(
    State(node): State<Node>,
    Path(name): Path<String>,
    q: Result<Query<FunctionQuery>, QueryRejection>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let body = body_of(body, node.config().http.max_body_bytes, format)?;
    match query(q)?.mode.as_deref() {
        None | Some("sync") => {
            let out = node.call_function(&name, &body, format).await.map_err(|e| ApiError(e, format))?;
            reply_response(&out, format)
        }
        Some("async") => {
            let key = tenant_key(principal.as_deref(), key_of(&headers, format)?, true, format)?;
            let request_id = header_str(&headers, wire::X_REQUEST_ID, format)?.map(str::to_owned);
            let row = node.call_async(&name, &body, format, key, request_id).await.map_err(|e| ApiError(e, format))?;
            Ok(accepted(row))
        }
        Some(other) => {
            Err(ApiError(InvokeError::Malformed(format!("mode must be sync or async, not `{other}`")), format))
        }
    }
}

/// 202 (200 when already final) with where the result will be.
fn accepted(row: InvocationResult) -> Response {
    let url = format!("/v1/invocations/{}", row.invocation_id);
    let status = if row.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let body = AcceptedBody { invocation_id: row.invocation_id, status: row.status, result_url: url.clone() };
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The answer to `GET /v1/invocations/{id}`, on a node and on the
/// standalone result store: 200 with the final row, 202 while pending, 404
/// when unknown or expired.
pub(crate) fn invocation_response(id: &str, row: Result<Option<InvocationResult>, InvokeError>) -> Response {
    match row {
        Err(e) => ApiError::from(e).into_response(),
        Ok(None) => {
            let body =
                ErrorBody::new("not_found", 404, format!("no result for invocation `{id}` (unknown or expired)"));
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        Ok(Some(row)) => {
            let status = if row.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
            (status, Json(InvocationBody::from(&row))).into_response()
        }
    }
}

pub(crate) async fn invocation(
    State(node): State<Node>,
    Path(id): Path<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    // Another tenant's invocation is answered as an unknown one: its id says nothing.
    if principal.is_some_and(|p| !p.owns_invocation(&id)) {
        return invocation_response(&id, Ok(None));
    }
    let row = node.invocation(&id).await;
    invocation_response(&id, row)
}

pub(crate) async fn registry(State(node): State<Node>) -> Json<wire::RegistryBody> {
    let r = node.registry();
    Json(wire::RegistryBody {
        entities: r
            .entities()
            .map(|e| wire::EntityTypeBody {
                type_name: e.type_name().to_owned(),
                commands: e.commands().iter().map(|c| (*c).to_owned()).collect(),
                event_version: e.event_version(),
            })
            .collect(),
        functions: r
            .functions()
            .map(|f| wire::FunctionBody {
                name: f.name().to_owned(),
                resources: serde_json::to_value(f.resources()).unwrap_or_default(),
            })
            .collect(),
    })
}

pub(crate) async fn openapi() -> Response {
    let mut resp = super::openapi::document().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 once the node should get traffic; 503 (`not_ready`, `Retry-After`)
/// while a cluster member has not yet taken its share of the shards, or
/// while it leaves.
pub(crate) async fn readyz(State(s): State<super::AppState>) -> Response {
    if (s.ready)() {
        return "ready\n".into_response();
    }
    let body = ErrorBody::new("not_ready", 503, "the node has not taken its share of the shards yet, or is leaving");
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
    r
}

pub(crate) async fn metrics(State(node): State<Node>) -> Response {
    node.record_storage_metrics();
    let mut resp = node.metrics().render().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

/// Every error is an [`ErrorBody`]: axum's own rejections (a path segment
/// that does not parse as its type or as UTF-8, a method a route does not
/// take) answer in plain text, and are rewrapped here (found by
/// schemathesis: `GET /v1/feed/stock/-1` answered `text/plain`).
pub(crate) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let text_plain =
        resp.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.to_str().is_ok_and(|s| s.starts_with("text/plain")));
    if !(status.is_client_error() || status.is_server_error()) || !text_plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let message = match text {
        Ok(t) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let kind = match status.as_u16() {
        400 => "malformed",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        415 => "unsupported_media_type",
        _ => "error",
    };
    let mut out = (status, Json(ErrorBody::new(kind, status.as_u16(), message))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    let body = ErrorBody::new("not_found", 404, format!("no route for {uri}"));
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `GET /v1/cluster`: members, the leader and the shard map as the cluster
/// bucket shows them now; outside a cluster, this node alone.
pub(crate) async fn cluster(State(app): State<super::AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let node = &app.node;
    let Some(store) = &app.cluster else {
        return Ok(Json(serde_json::json!({
            "clustered": false,
            "node_id": node.node_id(),
            "shards": node.config().journal.shards,
            "entity_types": node.registry().entities().map(|e| e.type_name().to_owned()).collect::<Vec<_>>(),
        })));
    };
    let status = tessera_cluster::ClusterStatus::read(store)
        .await
        .map_err(|e| ApiError(InvokeError::Unavailable(format!("cluster bucket: {e}")), Format::Json))?;
    let mut v =
        serde_json::to_value(status).map_err(|e| ApiError(InvokeError::Internal(e.to_string()), Format::Json))?;
    v["clustered"] = serde_json::Value::Bool(true);
    v["node_id"] = serde_json::Value::String(node.node_id().to_owned());
    Ok(Json(v))
}

pub(crate) async fn autoscaler(State(app): State<super::AppState>) -> Json<wire::AutoscalerBody> {
    let a = &app.autoscaler;
    Json(wire::AutoscalerBody {
        node_id: app.node.node_id().to_owned(),
        leader: a.leader(),
        members: a.members(),
        state: a.state(),
        groups: a.group_states(),
        decisions: a.decisions(),
    })
}
