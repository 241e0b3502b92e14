//! Request handlers: decode the edge, call the node, encode the answer.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tessera_entities::{Format, codec};

use crate::error::InvokeError;
use crate::inspect::event_json;
use crate::node::{Invocation, Node, ReadFrom};

const FORM: &str = "application/x-www-form-urlencoded";

/// An error answered in the request's format.
pub(crate) struct ApiError(InvokeError, Format);

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        Self(e, Format::Json)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = codec::encode(&self.0.to_json(), self.1).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.1.content_type()));
        if let Some(s) = self.0.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// The body's format. A form-encoded body (what `curl -d` sends when no
/// type is given) is read as JSON: the documented examples work as written,
/// and a body that is not JSON still gets the parser's 400.
fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    match headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("")) {
        None | Some("") => Ok(Format::Json),
        Some(ct) if ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(FORM)) => Ok(Format::Json),
        Some(ct) => Format::from_content_type(ct)
            .ok_or_else(|| ApiError(InvokeError::UnsupportedMediaType(ct.to_owned()), Format::Json)),
    }
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

pub(crate) async fn command(
    State(node): State<Node>,
    Path((entity_type, entity_id, command)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let body = body_of(body, node.config().max_body_bytes, format)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .ok_or_else(|| {
                    ApiError(
                        InvokeError::Malformed("Idempotency-Key must be 1-256 visible ASCII characters".into()),
                        format,
                    )
                })?
                .to_owned(),
        ),
    };
    let inv = Invocation { entity_type, entity_id, command, body: body.to_vec(), format, idempotency_key };
    let r = node.invoke(inv).await.map_err(|e| ApiError(e, format))?;
    let mut resp = reply_response(&r.reply, format)?;
    let h = resp.headers_mut();
    h.insert("tessera-seq", HeaderValue::from(r.seq));
    if let Ok(v) = HeaderValue::from_str(&r.invocation_id) {
        h.insert("tessera-invocation-id", v);
    }
    if r.deduplicated {
        h.insert("tessera-deduplicated", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[derive(Deserialize)]
pub(crate) struct StateQuery {
    at: Option<u64>,
    /// `any` (default) or `owner`.
    read: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError(InvokeError::Malformed(format!("bad query string: {e}")), Format::Json))
}

pub(crate) async fn state(
    State(node): State<Node>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
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
    let body = json!({
        "entity_type": entity_type,
        "entity_id": entity_id,
        "seq": view.seq,
        "state": view.state,
    });
    Ok(axum::Json(body).into_response())
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
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let to = q.to.unwrap_or(u64::MAX);
    let events = node.events(&entity_type, &entity_id, q.from.unwrap_or(1), to, limit).await?;
    let next_from = (events.len() == limit).then(|| events.last().map(|e| e.seq + 1)).flatten().filter(|n| *n <= to);
    let body = json!({
        "entity_type": entity_type,
        "entity_id": entity_id,
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "next_from": next_from,
    });
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
pub(crate) struct EntitiesQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn entities(
    State(node): State<Node>,
    Path(entity_type): Path<String>,
    q: Result<Query<EntitiesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let list = node.entities(&entity_type, q.after.as_deref(), limit).await?;
    let next_after = (list.len() == limit).then(|| list.last().map(|e| e.entity_id.clone())).flatten();
    let body = json!({
        "entity_type": entity_type,
        "entities": list.iter().map(|e| json!({"id": e.entity_id, "last_seq": e.last_seq, "deleted_to": e.deleted_to})).collect::<Vec<_>>(),
        "next_after": next_after,
    });
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
pub(crate) struct FunctionQuery {
    mode: Option<String>,
}

pub(crate) async fn function(
    State(node): State<Node>,
    Path(name): Path<String>,
    q: Result<Query<FunctionQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let body = body_of(body, node.config().max_body_bytes, format)?;
    match query(q)?.mode.as_deref() {
        None | Some("sync") => {
            let out = node.call_function(&name, &body, format).await.map_err(|e| ApiError(e, format))?;
            reply_response(&out, format)
        }
        Some("async") => {
            let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let row = node.call_async(&name, &body, format, key, request_id).await.map_err(|e| ApiError(e, format))?;
            let url = format!("/v1/invocations/{}", row.invocation_id);
            let status = if row.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
            let body = json!({
                "invocation_id": row.invocation_id,
                "status": row.status,
                "result_url": url,
            });
            let mut resp = (status, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Some(other) => {
            Err(ApiError(InvokeError::Malformed(format!("mode must be sync or async, not `{other}`")), format))
        }
    }
}

pub(crate) async fn invocation(State(node): State<Node>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match node.invocation(&id).await? {
        None => {
            let body = json!({"error": {"kind": "not_found", "status": 404, "message": format!("no result for invocation `{id}` (unknown or expired)")}});
            Ok((StatusCode::NOT_FOUND, axum::Json(body)).into_response())
        }
        Some(row) => {
            let status = if row.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
            Ok((status, axum::Json(row.to_json())).into_response())
        }
    }
}

pub(crate) async fn registry(State(node): State<Node>) -> Response {
    let r = node.registry();
    axum::Json(json!({
        "entities": r.entities().map(|e| json!({
            "type": e.type_name(),
            "commands": e.commands(),
            "event_version": e.event_version(),
        })).collect::<Vec<_>>(),
        "functions": r.functions().map(|f| json!({"name": f.name(), "resources": f.resources()})).collect::<Vec<_>>(),
    }))
    .into_response()
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn metrics(State(node): State<Node>) -> Response {
    let mut resp = node.metrics().render().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    let body = json!({"error": {"kind": "not_found", "status": 404, "message": format!("no route for {uri}")}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

pub(crate) async fn autoscaler(State(node): State<Node>) -> Response {
    let members = node.cluster().map(|c| c.members().len());
    axum::Json(json!({
        "node_id": node.node_id(),
        "leader": node.is_leader(),
        "members": members,
        "state": node.autoscaler_state(),
        "decisions": node.autoscaler_log(),
    }))
    .into_response()
}
