//! Where scaling decisions go: the [`Scaler`] trait and its backends — a
//! local process scaler (starts and stops node processes of this binary with
//! this node's flags), a Kubernetes scaler (sets a Deployment's replicas
//! through the scale subresource) and a dry-run scaler (logs).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tessera_cluster::ScaleGroup;

/// Why a scaler could not apply a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScalerError {
    /// A node process could not be started or stopped.
    #[error("local scaler: {0}")]
    Process(String),
    /// The Kubernetes API refused or could not be reached.
    #[error("kubernetes scaler: {0}")]
    Kubernetes(String),
}

/// Applies the autoscaler's decisions.
#[async_trait::async_trait]
pub trait Scaler: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Makes scale group `group` `nodes` nodes large; `live` is how many it has now.
    async fn scale(&self, group: ScaleGroup, nodes: usize, live: usize) -> Result<(), ScalerError>;
}

/// Logs decisions and does nothing.
pub struct DryRunScaler;

#[async_trait::async_trait]
impl Scaler for DryRunScaler {
    fn name(&self) -> &'static str {
        "dry-run"
    }
    async fn scale(&self, group: ScaleGroup, nodes: usize, live: usize) -> Result<(), ScalerError> {
        tracing::info!(%group, nodes, live, "dry run: would scale the group");
        Ok(())
    }
}

/// Starts node processes of this same binary with this node's flags (a new
/// node id, an ephemeral HTTP port, a data directory of its own; for the
/// functions group `--roles functions`, for the entities group this node's
/// own roles) and stops the ones it started in that group, newest first,
/// with SIGTERM (a graceful hand-off). It cannot stop nodes it did not
/// start. Its children exit when the node that started them does
/// (`TESSERA_PARENT_PID`), so none is left behind.
pub struct LocalProcessScaler {
    program: PathBuf,
    args: Vec<String>,
    /// This node's `--roles`, given to the entities group's new nodes.
    roles: Option<String>,
    data_dir: PathBuf,
    children: Mutex<HashMap<ScaleGroup, Vec<tokio::process::Child>>>,
    started: std::sync::atomic::AtomicUsize,
}

/// Flags that are per node and are not copied to started nodes.
const PER_NODE: &[&str] = &["--node-id", "--http", "--data-dir", "--roles"];

impl LocalProcessScaler {
    /// A scaler for the running process: same program, same `serve` flags.
    pub fn for_current_process(data_dir: PathBuf) -> Result<Self, ScalerError> {
        let program = std::env::current_exe().map_err(|e| ScalerError::Process(e.to_string()))?;
        Ok(Self::new(program, std::env::args().skip(1).collect(), data_dir))
    }

    /// A scaler that starts `program args…` (the `serve` command line of the
    /// current node; per-node flags are replaced).
    pub fn new(program: PathBuf, args: Vec<String>, data_dir: PathBuf) -> Self {
        let (mut kept, mut roles) = (Vec::new(), None);
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if PER_NODE.contains(&a.as_str()) {
                let value = it.next();
                if a == "--roles" {
                    roles = value;
                }
            } else if let Some(r) = a.strip_prefix("--roles=") {
                roles = Some(r.to_owned());
            } else if !PER_NODE.iter().any(|f| a.starts_with(&format!("{f}="))) {
                kept.push(a);
            }
        }
        Self { program, args: kept, roles, data_dir, children: Mutex::default(), started: Default::default() }
    }

    /// The `--roles` of a node started for `group` (`None`: the default, both).
    fn roles_for(&self, group: ScaleGroup) -> Option<String> {
        match group {
            ScaleGroup::Functions => Some(group.roles().to_string()),
            ScaleGroup::Entities => self.roles.clone(),
        }
    }

    fn start_one(&self, group: ScaleGroup) -> Result<(), ScalerError> {
        let n = self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let id = format!("auto-{group}-{}-{n}", std::process::id());
        let dir = self.data_dir.join(&id);
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(r) = self.roles_for(group) {
            cmd.args(["--roles", &r]);
        }
        let child = cmd
            .args(["--node-id", &id, "--http", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env("TESSERA_PARENT_PID", std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| ScalerError::Process(format!("cannot start {}: {e}", self.program.display())))?;
        tracing::info!(node = %id, %group, pid = child.id().unwrap_or_default(), "local scaler started a node");
        self.children.lock().unwrap_or_else(|p| p.into_inner()).entry(group).or_default().push(child);
        Ok(())
    }

    fn stop_one(&self, group: ScaleGroup) -> Result<bool, ScalerError> {
        let child = {
            let mut all = self.children.lock().unwrap_or_else(|p| p.into_inner());
            let c = all.entry(group).or_default();
            // Forget children that already exited (never signal a reused pid).
            c.retain_mut(|ch| matches!(ch.try_wait(), Ok(None)));
            c.pop()
        };
        let Some(child) = child else { return Ok(false) };
        if let Some(pid) = child.id() {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .map_err(|e| ScalerError::Process(format!("cannot signal {pid}: {e}")))?;
            tracing::info!(pid, ok = status.success(), "local scaler asked a node to leave (SIGTERM)");
        }
        // Reap it in the background once it has handed its shards off.
        let mut child = child;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Scaler for LocalProcessScaler {
    fn name(&self) -> &'static str {
        "local"
    }
    async fn scale(&self, group: ScaleGroup, nodes: usize, live: usize) -> Result<(), ScalerError> {
        if nodes > live {
            for _ in live..nodes {
                self.start_one(group)?;
            }
        } else {
            for _ in nodes..live {
                if !self.stop_one(group)? {
                    tracing::warn!("local scaler: no node of its own left to stop");
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Sets `spec.replicas` of a Deployment through its scale subresource:
/// `PATCH {api}/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale` with
/// a JSON merge patch and the service account's bearer token. The entities
/// group is the Deployment `{name}`, the functions group `{name}-functions`
/// (its pods run `serve --roles functions`).
pub struct KubernetesScaler {
    api: String,
    namespace: String,
    deployment: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl KubernetesScaler {
    /// A scaler talking to `api` (e.g. `http://127.0.0.1:8001` through
    /// `kubectl proxy`), with an optional bearer token.
    pub fn new(api: &str, namespace: &str, deployment: &str, token: Option<String>) -> Self {
        Self {
            api: api.trim_end_matches('/').to_owned(),
            namespace: namespace.to_owned(),
            deployment: deployment.to_owned(),
            token,
            client: reqwest::Client::new(),
        }
    }

    /// The token of the pod's service account, if mounted.
    pub fn service_account_token() -> Option<String> {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/token").ok().map(|t| t.trim().to_owned())
    }

    /// The URL of the entities group's scale subresource.
    pub fn url(&self) -> String {
        self.url_for(ScaleGroup::Entities)
    }

    /// The URL of a group's scale subresource.
    pub fn url_for(&self, group: ScaleGroup) -> String {
        let name = match group {
            ScaleGroup::Entities => self.deployment.clone(),
            g => format!("{}-{g}", self.deployment),
        };
        format!("{}/apis/apps/v1/namespaces/{}/deployments/{name}/scale", self.api, self.namespace)
    }
}

#[async_trait::async_trait]
impl Scaler for KubernetesScaler {
    fn name(&self) -> &'static str {
        "kubernetes"
    }
    async fn scale(&self, group: ScaleGroup, nodes: usize, _live: usize) -> Result<(), ScalerError> {
        let url = self.url_for(group);
        let mut req = self
            .client
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .header("accept", "application/json")
            .body(serde_json::json!({"spec": {"replicas": nodes}}).to_string());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| ScalerError::Kubernetes(format!("{url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ScalerError::Kubernetes(format!("{url} answered {status}: {body}")));
        }
        tracing::info!(nodes, %url, "kubernetes scaler set the replicas");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::routing::any;

    use super::*;

    type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;

    async fn record(
        State(seen): State<Seen>,
        method: Method,
        Path(path): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        seen.lock().unwrap_or_else(|p| p.into_inner()).push((method, format!("/{path}"), headers, body));
        (StatusCode::OK, r#"{"kind":"Scale","spec":{"replicas":3}}"#.into())
    }

    #[tokio::test]
    async fn kubernetes_scaler_patches_the_scale_subresource_exactly() {
        let seen: Seen = Arc::default();
        let app = axum::Router::new().route("/{*path}", any(record)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let s = KubernetesScaler::new(&format!("http://{addr}/"), "shop", "tessera", Some("t0k3n".into()));
        s.scale(ScaleGroup::Entities, 3, 2).await.expect("scaled");
        s.scale(ScaleGroup::Functions, 0, 1).await.expect("scaled");
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].1, "/apis/apps/v1/namespaces/shop/deployments/tessera-functions/scale");
        let (method, path, headers, body) = &seen[0];
        assert_eq!(method, Method::PATCH);
        assert_eq!(path, "/apis/apps/v1/namespaces/shop/deployments/tessera/scale");
        assert_eq!(headers["content-type"], "application/merge-patch+json");
        assert_eq!(headers["authorization"], "Bearer t0k3n");
        let body: serde_json::Value = serde_json::from_slice(body).expect("json body");
        assert_eq!(body, serde_json::json!({"spec": {"replicas": 3}}));
    }

    #[tokio::test]
    async fn kubernetes_scaler_reports_a_refusal() {
        let app = axum::Router::new()
            .route("/{*path}", any(|| async { (StatusCode::FORBIDDEN, "deployments.apps is forbidden") }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let s = KubernetesScaler::new(&format!("http://{addr}"), "shop", "tessera", None);
        let e = s.scale(ScaleGroup::Entities, 2, 1).await.expect_err("refused");
        assert!(e.to_string().contains("403") && e.to_string().contains("forbidden"), "{e}");
        let down = KubernetesScaler::new("http://127.0.0.1:9", "shop", "tessera", None);
        assert!(down.scale(ScaleGroup::Entities, 2, 1).await.is_err(), "an unreachable API is an error");
    }

    #[test]
    fn local_scaler_replaces_per_node_flags() {
        let args = ["serve", "--node-id", "n1", "--http=127.0.0.1:8080", "--nats", "nats://x", "--data-dir", "d"];
        let s = LocalProcessScaler::new("bin".into(), args.iter().map(|s| (*s).to_owned()).collect(), "d".into());
        assert_eq!(s.args, ["serve", "--nats", "nats://x"]);
        assert_eq!(s.roles_for(ScaleGroup::Entities), None, "this node's roles: the default");
        assert_eq!(s.roles_for(ScaleGroup::Functions).as_deref(), Some("functions"));
        let args = ["serve", "--roles", "entities", "--nats", "nats://x"];
        let s = LocalProcessScaler::new("bin".into(), args.iter().map(|s| (*s).to_owned()).collect(), "d".into());
        assert_eq!(s.args, ["serve", "--nats", "nats://x"], "roles are per group");
        assert_eq!(s.roles_for(ScaleGroup::Entities).as_deref(), Some("entities"));
        assert_eq!(s.roles_for(ScaleGroup::Functions).as_deref(), Some("functions"));
    }
}
