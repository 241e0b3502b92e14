//! The HTTP ingress (axum): JSON (or MessagePack) in and out, typed errors.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/entities/{type}/{id}/{command}` | run a command (`Idempotency-Key` header optional) |
//! | `GET /v1/autoscaler` | whether this node runs the autoscaler, and its recent decisions |
//! | `GET /v1/cluster` | members, leader and shard map (this node alone outside a cluster) |
//! | `GET /ui` | the admin console ([`ui`]: assets in the binary; its API calls need the admin scope) |
//! | `GET /v1/entities/{type}/{id}` | state and last seq (`?at=SEQ`: as of that seq; `?read=owner`: from the owner's live entity) |
//! | `DELETE /v1/entities/{type}/{id}` | delete: a tombstone now (then 404 `entity_deleted`), the journal purged after `limits.delete_grace_secs` |
//! | `GET /v1/entities/{type}/{id}/events?from=&to=&limit=` | the journal as JSON |
//! | `GET /v1/entities/{type}?after=&limit=&prefix=` | entity ids of a type |
//! | `POST /v1/functions/{name}` | call a stateless function (`?mode=async`: 202 + invocation id) |
//! | `GET /v1/invocations/{id}` | an async call's result (202 while pending, 404 unknown/expired) |
//! | `GET /v1/registry` | entity types, their commands, functions |
//! | `GET /v1/feed/{type}/{shard}?from=&limit=` | a unit's shard feed (JSON page; SSE with `Accept: text/event-stream`) |
//! | `GET /v1/feed/{type}?from=start\|end` | every shard of a type, live (SSE) |
//! | `GET /v1/projections`, `GET /v1/projections/{name}` | projections, their checkpoints and lag |
//! | `POST /v1/projections/{name}/rewind`, `…/reset` | move checkpoints back (`{"to", "entity_type", "shard"}`) |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness, readiness (shard leases held), Prometheus |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of all of the above ([`openapi`]) |
//!
//! With `[auth]` configured every route but `/healthz` needs bearer
//! credentials and a scope (see [`guard`] and [`crate::auth`]); with
//! `[http] tls_cert_file` it serves HTTPS (see [`tls`]).
//!
//! An edge. May import: the node core, `wire`, `contract`, `config`, the
//! autoscaler's status (for `GET /v1/autoscaler`). Nothing imports it but
//! `server` and the result-store process.

mod feed;
mod guard;
mod handlers;
pub mod openapi;
mod tls;
mod ui;

pub(crate) use handlers::invocation_response;
pub(crate) use tls::tls_acceptor;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::autoscaler::AutoscalerStatus;
use crate::node::Node;

/// Whether the node is ready for traffic (`GET /readyz`): a standalone
/// node once it serves; a cluster member once it held its share of the
/// shard leases, and no longer while it leaves.
pub(crate) type Readiness = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// What the handlers share: the node core, the autoscaler's status, the
/// authenticator (`None`: auth off) and the readiness check. Cloned per
/// request by the extractors, so one `Arc` (a clone of the fields was ~1.5%
/// of the node's CPU under an HTTP load).
#[derive(Clone)]
pub(crate) struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    fn new(shared: Shared) -> Self {
        Self(std::sync::Arc::new(shared))
    }
}

/// The fields of [`AppState`].
pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) autoscaler: AutoscalerStatus,
    pub(crate) auth: Option<Authenticator>,
    pub(crate) ready: Readiness,
    /// In a cluster: its bucket (`GET /v1/cluster` reads members and leases there).
    pub(crate) cluster: Option<tessera_cluster::ClusterStore>,
}

impl axum::extract::FromRef<AppState> for Node {
    fn from_ref(s: &AppState) -> Node {
        s.node.clone()
    }
}

/// A bound listener, not yet serving.
pub(crate) struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
}

/// A running HTTP server.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The routes of a node (its autoscaler status empty), with the auth its
/// config names.
pub fn router(node: Node) -> Result<Router, crate::auth::AuthConfigError> {
    let auth = Authenticator::from_config(&node.config().auth)?;
    let ready = std::sync::Arc::new(|| true);
    Ok(routes(AppState::new(Shared { node, autoscaler: AutoscalerStatus::default(), auth, ready, cluster: None })))
}

fn routes(state: AppState) -> Router {
    let limit = state.node.config().http.max_body_bytes;
    let router = Router::new()
        .route("/v1/entities/{entity_type}/{entity_id}/{command}", post(handlers::command))
        .route("/v1/entities/{entity_type}/{entity_id}", get(handlers::state).delete(handlers::delete))
        .route("/v1/entities/{entity_type}/{entity_id}/events", get(handlers::events))
        .route("/v1/entities/{entity_type}", get(handlers::entities))
        .route("/v1/functions/{name}", post(handlers::function))
        .route("/v1/invocations/{id}", get(handlers::invocation))
        .route("/v1/registry", get(handlers::registry))
        .route("/v1/autoscaler", get(handlers::autoscaler))
        .route("/v1/cluster", get(handlers::cluster))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/v1/feed/{entity_type}/{shard}", get(feed::shard_feed))
        .route("/v1/feed/{entity_type}", get(feed::type_feed))
        .route("/v1/projections", get(feed::projections))
        .route("/v1/projections/{name}", get(feed::projection))
        .route("/v1/projections/{name}/rewind", post(feed::rewind))
        .route("/v1/projections/{name}/reset", post(feed::reset))
        .route("/v1/openapi.json", get(handlers::openapi))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics));
    let router = match state.auth {
        Some(_) => router.route_layer(axum::middleware::from_fn_with_state(state.clone(), guard::check)),
        None => router,
    };
    router
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(trace_context))
        .layer(axum::middleware::from_fn_with_state(state.node.metrics().http_latency.clone(), timed))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(handlers::json_errors))
        .with_state(state)
}

/// Times each request from routing to the response handed back to hyper
/// (`tessera_http_request_duration_seconds`): beside the invocation's own
/// histogram it tells time spent in the HTTP layer from time spent before
/// routing or on the socket.
async fn timed(
    axum::extract::State(h): axum::extract::State<prometheus::Histogram>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    h.observe(started.elapsed().as_secs_f64());
    resp
}

/// With traces on: the request runs in a span whose parent is the trace
/// context of its `traceparent` header (when it has one).
async fn trace_context(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    if !crate::telemetry::enabled() {
        return next.run(req).await;
    }
    let span = tracing::info_span!("http.request", method = %req.method(), path = %req.uri().path());
    let (parent, state) = {
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (header(crate::telemetry::TRACEPARENT), header(crate::telemetry::TRACESTATE))
    };
    crate::telemetry::set_remote_parent(&span, parent.as_deref(), state.as_deref());
    next.run(req).instrument(span).await
}

impl HttpServer {
    /// Binds `addr` (so its port is known before serving starts).
    pub(crate) async fn bind(addr: &str) -> std::io::Result<HttpListener> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(HttpListener { listener, addr })
    }
}

impl HttpListener {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the node's routes on the bound address (HTTPS with `tls`).
    pub(crate) fn serve(
        self,
        node: Node,
        autoscaler: AutoscalerStatus,
        auth: Option<Authenticator>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        ready: Readiness,
        cluster: Option<tessera_cluster::ClusterStore>,
    ) -> HttpServer {
        let Self { listener, addr } = self;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = routes(AppState::new(Shared { node, autoscaler, auth, ready, cluster }));
        let stopped = async {
            let _ = stopped.await;
        };
        let task = match tls {
            // Replies go out at once, not behind Nagle's wait for an ACK
            // (the TLS listener sets the same on each connection).
            None => {
                use axum::serve::ListenerExt;
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(serve_on(listener, app, stopped))
            }
            Some(acceptor) => match tls::TlsListener::new(listener, acceptor) {
                Ok(l) => tokio::spawn(serve_on(l, app, stopped)),
                Err(e) => tokio::spawn(async move { tracing::error!(error = %e, "HTTPS listener failed") }),
            },
        };
        HttpServer { addr, stop, task }
    }
}

async fn serve_on<L>(listener: L, app: Router, stopped: impl std::future::Future<Output = ()> + Send + 'static)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

impl HttpServer {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish (up to 10 s).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut task).await.is_err() {
            task.abort();
        }
    }
}
