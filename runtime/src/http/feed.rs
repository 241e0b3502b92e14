//! The shard feed and the projections over HTTP:
//!
//! - `GET /v1/feed/{type}/{shard}?from=OFFSET&limit=N`: a JSON page of the
//!   unit's feed from `OFFSET` (default 1); with `Accept:
//!   text/event-stream`, the feed followed live as Server-Sent Events (`id`
//!   = offset; `Last-Event-ID` resumes after it).
//! - `GET /v1/feed/{type}?from=end|start`: every shard of a type followed
//!   live (Server-Sent Events only).
//! - `GET /v1/projections`, `GET /v1/projections/{name}`,
//!   `POST /v1/projections/{name}/rewind` (`{"to": OFFSET, "entity_type":
//!   .., "shard": ..}`) and `POST /v1/projections/{name}/reset`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;

use super::handlers::{ApiError, query};
use crate::error::InvokeError;
use crate::node::Node;
use crate::projection::{Projection, UnitStatus};
use crate::wire::{FeedBody, FeedEntryBody, ProjectionBody, ProjectionsBody, RewindBody, RewoundBody};

#[derive(Deserialize)]
pub(crate) struct FeedQuery {
    from: Option<String>,
    limit: Option<usize>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"))
}

/// `from` as the first offset wanted: a number, `start` (1) or `end` (after the last).
fn first_offset(from: Option<&str>, last: u64) -> Result<u64, InvokeError> {
    match from {
        None | Some("start") => Ok(1),
        Some("end") => Ok(last + 1),
        Some(n) => n
            .parse::<u64>()
            .map(|n| n.max(1))
            .map_err(|_| InvokeError::Malformed(format!("from must be an offset, `start` or `end`, not `{n}`"))),
    }
}

pub(crate) async fn shard_feed(
    State(node): State<Node>,
    Path((entity_type, shard)): Path<(String, u32)>,
    q: Result<Query<FeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bounds = node.feed_bounds(&entity_type, shard).await?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let first = match resume {
        Some(id) => id + 1,
        None => first_offset(q.from.as_deref(), bounds.last)?,
    };
    if first > bounds.last + 1 {
        return Err(InvokeError::OutOfRange(format!(
            "offset {first} is past the end of {entity_type}/{shard}'s feed (last offset {})",
            bounds.last
        ))
        .into());
    }
    if wants_sse(&headers) {
        let stream = follow(node, entity_type, vec![(shard, first - 1)]);
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response());
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let events = node.feed(&entity_type, shard, first - 1, limit).await?;
    let next_from = events.last().map_or(first, |e| e.offset + 1);
    let events = events.iter().map(FeedEntryBody::from).collect();
    Ok(Json(FeedBody { entity_type, shard, events, next_from, last: bounds.last, expired_to: bounds.expired_to })
        .into_response())
}

pub(crate) async fn type_feed(
    State(node): State<Node>,
    Path(entity_type): Path<String>,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    node.registry().entity(&entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.clone()))?;
    let mut cursors = Vec::new();
    for shard in 0..node.config().journal.shards {
        let last = match q.from.as_deref() {
            Some("start") => 0,
            None | Some("end") => node.feed_bounds(&entity_type, shard).await?.last,
            Some(other) => {
                return Err(InvokeError::Malformed(format!(
                    "from must be `start` or `end` for a whole type, not `{other}`"
                ))
                .into());
            }
        };
        cursors.push((shard, last));
    }
    Ok(Sse::new(follow(node, entity_type, cursors)).keep_alive(KeepAlive::default()).into_response())
}

/// Follows the feeds of (shard, after) cursors, polling when caught up.
fn follow(node: Node, entity_type: String, cursors: Vec<(u32, u64)>) -> impl Stream<Item = Result<Event, Infallible>> {
    let idle = if cursors.len() > 1 { Duration::from_secs(1) } else { Duration::from_millis(100) };
    futures::stream::unfold(
        (node, entity_type, cursors, Vec::<Event>::new()),
        move |(node, t, mut cursors, mut out)| {
            async move {
                loop {
                    if let Some(e) = out.pop() {
                        return Some((Ok(e), (node, t, cursors, out)));
                    }
                    for (shard, after) in cursors.iter_mut() {
                        match node.feed(&t, *shard, *after, 256).await {
                            Ok(events) => {
                                for e in &events {
                                    let body = FeedEntryBody::from(e);
                                    let data = serde_json::to_string(&body).unwrap_or_default();
                                    out.push(Event::default().id(e.offset.to_string()).event("event").data(data));
                                    *after = e.offset;
                                }
                            }
                            Err(e) => {
                                // A reader behind the retention (or a journal that is down) is told, then closed.
                                let data = serde_json::to_string(&e.to_body()).unwrap_or_default();
                                out.clear();
                                let end = Event::default().event("error").data(data);
                                return Some((Ok(end), (node, t, Vec::new(), Vec::new())));
                            }
                        }
                    }
                    if cursors.is_empty() {
                        return None;
                    }
                    if out.is_empty() {
                        tokio::time::sleep(idle).await;
                    } else {
                        out.reverse();
                    }
                }
            }
        },
    )
}

/// A projection's body: its totals over `units` (and the units, when `with_units`).
fn projection_body(p: &dyn Projection, units: Vec<UnitStatus>, with_units: bool) -> ProjectionBody {
    ProjectionBody {
        name: p.name().to_owned(),
        entity_types: p.entity_types(),
        keeps_state: p.keeps_state(),
        lag: units.iter().map(|u| u.lag).sum(),
        errors: units.iter().filter(|u| u.error.is_some()).count(),
        running_here: units.iter().filter(|u| u.running).count(),
        units: if with_units { units } else { Vec::new() },
    }
}

pub(crate) async fn projections(State(node): State<Node>) -> Json<ProjectionsBody> {
    let projections = node
        .projections()
        .list()
        .iter()
        .map(|p| projection_body(p.as_ref(), node.projections().running(p.name()), false))
        .collect();
    Json(ProjectionsBody { node_id: node.node_id().to_owned(), projections })
}

pub(crate) async fn projection(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> Result<Json<ProjectionBody>, ApiError> {
    let p = node.projection(&name)?;
    let units = node.projections().status(&name).await.map_err(InvokeError::from)?;
    Ok(Json(projection_body(p.as_ref(), units, true)))
}

fn rewind_body(body: &Bytes) -> Result<RewindBody, ApiError> {
    if body.is_empty() {
        return Ok(RewindBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        InvokeError::Malformed(format!("a rewind body is {{\"to\": OFFSET, \"entity_type\": .., \"shard\": ..}}: {e}"))
            .into()
    })
}

pub(crate) async fn rewind(
    State(node): State<Node>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RewoundBody>, ApiError> {
    let b = rewind_body(&body)?;
    let units = node.rewind_projection(&name, b.to, b.entity_type.as_deref(), b.shard).await?;
    Ok(Json(RewoundBody { projection: name, to: b.to, units }))
}

pub(crate) async fn reset(
    State(node): State<Node>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RewoundBody>, ApiError> {
    let b = rewind_body(&body)?;
    let units = node.reset_projection(&name, b.entity_type.as_deref(), b.shard).await?;
    Ok(Json(RewoundBody { projection: name, to: 0, units }))
}
