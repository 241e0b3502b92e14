//! The admin console: one page and its script and style, built into the
//! binary (no network, no build step), served at `/ui`. The page holds no
//! data; everything it shows comes from the HTTP API (`/v1/cluster`,
//! `/v1/registry`, `/v1/entities/…`, `/v1/projections`,
//! `/v1/invocations/{id}`, `/v1/autoscaler`), with the bearer token the
//! user gives it when auth is on (those routes need the admin scope).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// `GET /ui`: the page.
pub(crate) async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX).into_response()
}

/// `GET /ui/{file}`: its script and style.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
