//! The HTTP edge's auth check: a route layer that verifies the bearer
//! credentials, decides what the matched route needs, and hands the
//! handlers the [`Principal`] (in the request's extensions). Refusals are
//! 401 or 403 with an error body and a `WWW-Authenticate` challenge; the
//! credentials themselves are never logged.

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::{AuthError, Need, Principal};
use crate::wire::ErrorBody;

/// What the route `template` (as axum matched it) needs.
pub(crate) fn need<'a>(
    method: &axum::http::Method,
    template: &str,
    param: impl Fn(&str) -> Option<&'a str>,
    public_metrics: bool,
) -> Need<'a> {
    let p = |name: &str| param(name).unwrap_or("");
    match template {
        "/v1/entities/{entity_type}/{entity_id}" if method == axum::http::Method::DELETE => {
            Need::EntityDelete(p("entity_type"))
        }
        // The console's page and scripts hold no data (its API calls need admin).
        "/healthz" | "/readyz" | "/v1/openapi.json" | "/ui" | "/ui/" | "/ui/{file}" => Need::Public,
        "/metrics" if public_metrics => Need::Public,
        "/metrics" => Need::Metrics,
        "/v1/registry" | "/v1/invocations/{id}" => Need::Authenticated,
        "/v1/entities/{entity_type}/{entity_id}/{command}" => Need::EntityWrite(p("entity_type"), p("command")),
        "/v1/entities/{entity_type}/{entity_id}" | "/v1/entities/{entity_type}" => Need::EntityRead(p("entity_type")),
        "/v1/functions/{name}" => Need::FunctionCall(p("name")),
        // Journal reads, feeds, projections, the autoscaler, and any route added later.
        _ => Need::Admin,
    }
}

/// The error body and challenge of a refusal.
pub(crate) fn refusal(e: &AuthError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let body = serde_json::to_vec(&ErrorBody::new(e.kind(), e.status(), e.to_string())).unwrap_or_default();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&e.challenge()) {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The route layer (installed only when auth is on).
pub(crate) async fn check(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = app.auth.as_ref() else { return next.run(req).await };
    let template = matched.as_ref().map_or("", MatchedPath::as_str).to_owned();
    let params: Vec<(String, String)> =
        params.iter().flat_map(|p| p.iter()).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let need = need(req.method(), &template, param, auth.public_metrics());
    if need == Need::Public {
        return next.run(req).await;
    }
    let header = req.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("\u{0}"));
    let refused = |e: AuthError| {
        app.node.metrics().auth_refusals.with_label_values(&[e.reason()]).inc();
        tracing::debug!(route = %template, reason = e.reason(), "request refused: {e}");
        refusal(&e)
    };
    let principal: Principal = match auth.authenticate(header) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    if !principal.allows(&need) {
        let need = need.scope().map(|s| s.to_string()).unwrap_or_default();
        return refused(AuthError::Forbidden { need });
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn each_route_needs_its_scope_and_unknown_routes_need_admin() {
        let params = |n: &str| match n {
            "entity_type" => Some("stock"),
            "command" => Some("purchase"),
            "name" => Some("product.image"),
            _ => None,
        };
        for (template, want) in [
            ("/healthz", Need::Public),
            ("/readyz", Need::Public),
            ("/v1/openapi.json", Need::Public),
            ("/metrics", Need::Metrics),
            ("/v1/registry", Need::Authenticated),
            ("/v1/invocations/{id}", Need::Authenticated),
            ("/v1/entities/{entity_type}/{entity_id}/{command}", Need::EntityWrite("stock", "purchase")),
            ("/v1/entities/{entity_type}/{entity_id}", Need::EntityRead("stock")),
            ("/v1/entities/{entity_type}", Need::EntityRead("stock")),
            ("/v1/entities/{entity_type}/{entity_id}/events", Need::Admin),
            ("/v1/functions/{name}", Need::FunctionCall("product.image")),
            ("/v1/feed/{entity_type}/{shard}", Need::Admin),
            ("/v1/projections/{name}/rewind", Need::Admin),
            ("/v1/autoscaler", Need::Admin),
            ("/v1/cluster", Need::Admin),
            ("/ui/{file}", Need::Public),
            ("/v1/something-new", Need::Admin),
        ] {
            assert_eq!(need(&Method::GET, template, params, false), want, "{template}");
        }
        assert_eq!(need(&Method::GET, "/metrics", params, true), Need::Public);
        let delete = need(&Method::DELETE, "/v1/entities/{entity_type}/{entity_id}", params, false);
        assert_eq!(delete, Need::EntityDelete("stock"), "a delete is neither a read nor a write");
    }
}
