//! Who may do what: HTTP authentication (API keys; JWTs signed HS256,
//! RS256 and EdDSA) and authorisation by scope, tenants kept apart, keys
//! rotated without a restart, the safe default on reachable addresses, and
//! HTTPS. (NATS credentials and TLS, and CQL authentication, are in the
//! tests below these.)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestNode, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera_test_support::process::NodeProcess;

const DEVICE_KEY: &str = "device-key-0123456789";
const READER_KEY: &str = "reader-key-0123456789";
const OPS_KEY: &str = "ops-key-0123456789abc";
const ACME_FN_KEY: &str = "acme-functions-key-0001";
const GLOBEX_FN_KEY: &str = "globex-functions-key-01";
const METRICS_KEY: &str = "metrics-key-0123456789";
const HS_SECRET: &str = "a-shared-secret-of-more-than-32-bytes!!";
const ISSUER: &str = "https://idp.test";

fn keys_file(extra: &str) -> String {
    format!(
        r#"
[[key]]
name = "devices"
tenant = "acme"
scopes = ["entity:stock/purchase:write"]
key = "{DEVICE_KEY}"

[[key]]
name = "dashboard"
tenant = "acme"
scopes = ["entity:stock:read"]
key = "{READER_KEY}"

[[key]]
name = "ops"
tenant = "acme"
scopes = ["admin"]
sha256 = "{ops_hash}"

[[key]]
name = "acme-fn"
tenant = "acme"
scopes = ["function:*:call", "entity:stock:write"]
key = "{ACME_FN_KEY}"

[[key]]
name = "globex-fn"
tenant = "globex"
scopes = ["function:*:call", "entity:stock:write"]
key = "{GLOBEX_FN_KEY}"

[[key]]
name = "prometheus"
tenant = "ops"
scopes = ["metrics"]
key = "{METRICS_KEY}"
{extra}"#,
        ops_hash = sha256_hex(OPS_KEY)
    )
}

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a hash").to_owned()
}

/// The key material of one test: an API keys file, an HS256 secret, an
/// RSA and an Ed25519 key pair (public halves for the node, private ones
/// for signing here).
struct Material {
    dir: tempfile::TempDir,
    rsa: rcgen::KeyPair,
    ed: rcgen::KeyPair,
}

impl Material {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("an RSA key");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
        std::fs::write(dir.path().join("keys.toml"), keys_file("")).unwrap();
        std::fs::write(dir.path().join("hs.secret"), format!("{HS_SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("rsa.pub.pem"), rsa.public_key_pem()).unwrap();
        std::fs::write(dir.path().join("ed.pub.pem"), ed.public_key_pem()).unwrap();
        Self { dir, rsa, ed }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn configure(&self, c: &mut tessera_runtime::NodeConfig) {
        c.auth.api_keys_file = Some(self.path("keys.toml"));
        c.auth.jwt_secret_file = Some(self.path("hs.secret"));
        c.auth.jwt_public_keys =
            format!("{},{}", self.path("rsa.pub.pem").display(), self.path("ed.pub.pem").display());
        c.auth.jwt_issuer = Some(ISSUER.into());
    }

    fn jwt(&self, alg: Algorithm, claims: &Value) -> String {
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.rsa.serialize_pem().as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(self.ed.serialize_pem().as_bytes()).unwrap(),
            other => panic!("no key for {other:?}"),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("a token")
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(tenant: &str, scope: &str) -> Value {
    json!({"sub": "svc-1", "tenant": tenant, "scope": scope, "iss": ISSUER, "exp": now() + 300})
}

/// A request with optional bearer credentials: status, headers, JSON body.
async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    call_with(method, url, token, body, None).await
}

async fn call_with(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let c = common::client();
    let mut req = match method {
        "GET" => c.get(url),
        _ => c.post(url).header("content-type", "application/json").body(body.unwrap_or("{}").to_owned()),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn events(base: &str, id: &str) -> usize {
    let (s, _, v) = call("GET", &format!("{base}/v1/entities/stock/{id}/events"), Some(OPS_KEY), None).await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn every_route_needs_credentials_and_the_scope_that_names_it() {
    let m = Material::new();
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = common::node(dir.path(), |c| m.configure(c)).await;
    let restock = format!("{base}/v1/entities/stock/s:1/restock");
    let purchase = format!("{base}/v1/entities/stock/s:1/purchase");

    // No credentials, or credentials that are not ours: 401 with a challenge, nothing written.
    let (s, h, e) = call("POST", &restock, None, Some(r#"{"qty":5}"#)).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (401, Some("unauthenticated")), "{e}");
    assert_eq!(h["www-authenticate"], r#"Bearer realm="tessera""#);
    let (s, h, e) = call("POST", &restock, Some("not-a-key-we-know-xyz"), Some(r#"{"qty":5}"#)).await;
    assert_eq!(s, 401, "{e}");
    assert!(h["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert!(e["error"]["message"].as_str().unwrap().contains("unknown API key"), "{e}");
    let basic = common::client().post(&restock).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    // A scope names what it allows and nothing else: 403 says which scope is missing.
    let (s, _, e) = call("POST", &restock, Some(DEVICE_KEY), Some(r#"{"qty":5}"#)).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (403, Some("forbidden")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("entity:stock/restock:write"), "{e}");
    assert_eq!(events(&base, "s:1").await, 0, "refused requests write nothing");
    let (s, _, v) = call("POST", &restock, Some(ACME_FN_KEY), Some(r#"{"qty":5}"#)).await;
    assert_eq!((s, v), (200, json!({"on_hand": 5})));
    let (s, _, v) = call("POST", &purchase, Some(DEVICE_KEY), Some(r#"{"qty":2}"#)).await;
    assert_eq!((s, v), (200, json!({"on_hand": 3})));

    // Reads: the type's read scope; the journal and everything else admin only.
    let state = format!("{base}/v1/entities/stock/s:1");
    assert_eq!(call("GET", &state, Some(DEVICE_KEY), None).await.0, 403, "write does not imply read");
    let (s, _, v) = call("GET", &state, Some(READER_KEY), None).await;
    assert_eq!((s, v["state"]["on_hand"].as_i64()), (200, Some(3)));
    assert_eq!(call("GET", &format!("{base}/v1/entities/stock"), Some(READER_KEY), None).await.0, 200);
    for admin_only in [
        format!("{base}/v1/entities/stock/s:1/events"),
        format!("{base}/v1/feed/stock/0"),
        format!("{base}/v1/projections"),
        format!("{base}/v1/autoscaler"),
    ] {
        let (s, _, e) = call("GET", &admin_only, Some(READER_KEY), None).await;
        assert_eq!(s, 403, "{admin_only}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("`admin`"), "{e}");
        let (s, _, e) = call("GET", &admin_only, Some(OPS_KEY), None).await;
        assert_eq!(s, 200, "{admin_only}: {e}");
    }

    // Health is public; metrics need the metrics scope; the registry any valid credentials.
    assert_eq!(call("GET", &format!("{base}/healthz"), None, None).await.0, 200);
    assert_eq!(call("GET", &format!("{base}/metrics"), None, None).await.0, 401);
    assert_eq!(call("GET", &format!("{base}/metrics"), Some(READER_KEY), None).await.0, 403);
    let (s, _, m) = call("GET", &format!("{base}/metrics"), Some(METRICS_KEY), None).await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_owned();
    for needle in [
        r#"tessera_auth_refusals_total{reason="missing"} 2"#,
        r#"tessera_auth_refusals_total{reason="invalid"} 2"#,
        r#"tessera_auth_refusals_total{reason="forbidden"}"#,
    ] {
        assert!(m.contains(needle), "missing {needle} in the metrics");
    }
    assert_eq!(call("GET", &format!("{base}/v1/registry"), Some(DEVICE_KEY), None).await.0, 200);
    assert_eq!(call("GET", &format!("{base}/v1/registry"), None, None).await.0, 401);
    for (name, class, answer) in [
        (
            "auth-missing",
            "no credentials, an unknown API key, a non-Bearer header",
            "401 `unauthenticated` with WWW-Authenticate",
        ),
        ("auth-scope", "valid credentials outside their scopes", "403 `forbidden` naming the scope needed"),
    ] {
        tessera_test_support::report::bad_input(name, class, "HTTP (auth on)", answer, 0);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn jwts_signed_hs256_rs256_and_eddsa_are_verified_and_bad_ones_refused() {
    let m = Material::new();
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = common::node(dir.path(), |c| m.configure(c)).await;
    let restock = format!("{base}/v1/entities/stock/s:jwt/restock");

    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA] {
        let token = m.jwt(alg, &claims("acme", "openid entity:stock:write"));
        let (s, _, v) = call("POST", &restock, Some(&token), Some(r#"{"qty":1}"#)).await;
        assert_eq!(s, 200, "{alg:?}: {v}");
        // The scopes may also come as an array.
        let token =
            m.jwt(alg, &json!({"tenant": "acme", "scopes": ["entity:stock:read"], "iss": ISSUER, "exp": now() + 60}));
        assert_eq!(call("GET", &format!("{base}/v1/entities/stock/s:jwt"), Some(&token), None).await.0, 200);
    }
    assert_eq!(events(&base, "s:jwt").await, 3);

    let good = claims("acme", "entity:stock:write");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let other_rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let foreign = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &good,
        &EncodingKey::from_rsa_pem(other_rsa.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    // Algorithm confusion: an HS256 token whose "secret" is the node's RSA public key.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(m.rsa.public_key_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let token = m.jwt(Algorithm::RS256, &good);
    let (head, rest) = token.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let tampered_sig = format!("{head}.{payload}.{}", sig.chars().rev().collect::<String>());
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    for (what, token, says) in [
        ("expired", m.jwt(Algorithm::HS256, &with("exp", json!(now() - 3600))), "xpired"),
        ("no exp", m.jwt(Algorithm::HS256, &without("exp")), "exp"),
        ("wrong issuer", m.jwt(Algorithm::EdDSA, &with("iss", json!("https://evil.test"))), "ssuer"),
        ("no tenant", m.jwt(Algorithm::RS256, &without("tenant")), "tenant"),
        ("reserved tenant", m.jwt(Algorithm::RS256, &with("tenant", json!("tessera"))), "tenant"),
        ("signed by another key", foreign, "ignature"),
        ("HS256 keyed with the RSA public key", confused, "ignature"),
        ("tampered signature", tampered_sig, ""),
        ("alg none", unsigned, ""),
    ] {
        let (s, _, e) = call("POST", &restock, Some(&token), Some(r#"{"qty":1}"#)).await;
        assert_eq!(s, 401, "{what}: {e}");
        let msg = e["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(says), "{what}: {msg}");
        assert!(!msg.contains(&token), "{what}: the token is echoed");
    }
    tessera_test_support::report::bad_input(
        "auth-jwt",
        "JWTs expired, without exp or tenant, of another issuer or key, tampered, alg none, HS256 keyed with the RSA public key",
        "HTTP (auth on)",
        "401 `unauthenticated` saying why, never echoing the token",
        0,
    );
    // A valid token without the scope: 403.
    let reader = m.jwt(Algorithm::HS256, &claims("acme", "entity:stock:read"));
    assert_eq!(call("POST", &restock, Some(&reader), Some(r#"{"qty":1}"#)).await.0, 403);
    assert_eq!(events(&base, "s:jwt").await, 3, "no refused token wrote anything");
    node.shutdown().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_invocations_and_keys() {
    let m = Material::new();
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = common::node(dir.path(), |c| m.configure(c)).await;

    // An async call's id is in its tenant's namespace; another tenant cannot read it.
    let url = format!("{base}/v1/functions/product.upsert?mode=async");
    let (s, _, accepted) = call("POST", &url, Some(ACME_FN_KEY), Some(r#"{"sku":"a","name":"A","price":1}"#)).await;
    assert_eq!(s, 202, "{accepted}");
    let id = accepted["invocation_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("acme:"), "{id}");
    let result = format!("{base}/v1/invocations/{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, _, v) = call("GET", &result, Some(ACME_FN_KEY), None).await;
        if s == 200 {
            assert_eq!(v["status"], "ok", "{v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no result: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _, v) = call("GET", &result, Some(GLOBEX_FN_KEY), None).await;
    assert_eq!(s, 404, "another tenant's invocation is unknown to it: {v}");
    assert_eq!(call("GET", &result, Some(OPS_KEY), None).await.0, 200, "admin sees every tenant's");
    assert_eq!(call("GET", &result, None, None).await.0, 401);

    // A caller-given key is kept in the tenant's namespace too.
    let (s, _, v) =
        call_with("POST", &url, Some(GLOBEX_FN_KEY), Some(r#"{"sku":"b","name":"B","price":1}"#), Some("job-7")).await;
    assert_eq!((s, v["invocation_id"].as_str()), (202, Some("globex:job-7")), "{v}");

    // The same idempotency key from two tenants is two commands; a retry within one tenant is one.
    let restock = format!("{base}/v1/entities/stock/s:shared/restock");
    for (k, want) in [(ACME_FN_KEY, 1), (ACME_FN_KEY, 1), (GLOBEX_FN_KEY, 2), (GLOBEX_FN_KEY, 2)] {
        let (s, _, v) = call_with("POST", &restock, Some(k), Some(r#"{"qty":1}"#), Some("restock-1")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(events(&base, "s:shared").await, want);
    }
    // Keys of the runtime's own deliveries are not the client's to use.
    let (s, _, e) =
        call_with("POST", &restock, Some(ACME_FN_KEY), Some(r#"{"qty":1}"#), Some("tessera:stock:x:1")).await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("reserved"), "{e}");
    node.shutdown().await;
}

#[tokio::test]
async fn keys_rotate_without_a_restart_and_a_broken_file_keeps_the_old_ones() {
    let m = Material::new();
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = common::node(dir.path(), |c| m.configure(c)).await;
    let state = format!("{base}/v1/entities/stock/s:rot");
    assert_eq!(call("GET", &state, Some(READER_KEY), None).await.0, 200);

    let rotated = "rotated-reader-key-000001";
    let new_file = keys_file("").replace(READER_KEY, rotated);
    std::fs::write(m.path("keys.toml"), new_file).unwrap();
    wait_until(|| async { call("GET", &state, Some(rotated), None).await.0 == 200 }).await;
    assert_eq!(call("GET", &state, Some(READER_KEY), None).await.0, 401, "the old key is gone");

    // A file that no longer parses: the keys read before stay in use.
    std::fs::write(m.path("keys.toml"), "[[key]]\nname = \"half-written").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(call("GET", &state, Some(rotated), None).await.0, 200);

    // The HS256 secret rotates the same way (with every file valid again).
    std::fs::write(m.path("keys.toml"), keys_file("")).unwrap();
    let old = m.jwt(Algorithm::HS256, &claims("acme", "entity:stock:read"));
    std::fs::write(m.path("hs.secret"), "another-shared-secret-also-32-bytes-long").unwrap();
    wait_until(|| async { call("GET", &state, Some(&old), None).await.0 == 401 }).await;
    node.shutdown().await;
}

async fn wait_until<F, Fut>(mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok().await {
        assert!(tokio::time::Instant::now() < deadline, "not within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the test node binary to its end; returns its exit status and stderr.
fn run_to_end(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(common::test_node_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the test node runs");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_reachable_address_without_auth_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (status, stderr) = run_to_end(&["serve", "--data-dir", d, "--http", "0.0.0.0:0"]);
    assert!(!status.success());
    assert!(stderr.contains("--insecure") && stderr.contains("no authentication"), "{stderr}");
    assert!(!dir.path().join("tessera-journal.json").exists(), "refused before opening anything");

    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--data-dir", d, "--http", "0.0.0.0:0"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let start = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProcess::start_command(&args, &[]).await
    };
    let node = start(serve(&["--insecure"])).await.expect("serves");
    let port = node.base.rsplit(':').next().unwrap();
    let (s, _, _) = post(&format!("http://127.0.0.1:{port}/v1/entities/stock/s:i/restock"), r#"{"qty":1}"#, None).await;
    assert_eq!(s, 200);
    node.kill().await;

    // With auth configured the same address serves, and the CLI passes TESSERA_TOKEN.
    let m = Material::new();
    let keys = m.path("keys.toml");
    let node = start(serve(&["--api-keys-file", keys.to_str().unwrap()])).await.expect("serves with auth");
    let port = node.base.rsplit(':').next().unwrap().to_owned();
    let addr = format!("127.0.0.1:{port}");
    let send = |token: Option<&str>| {
        let mut c = std::process::Command::new(common::test_node_bin());
        c.args(["send", "--http", &addr, "stock", "s:i", "restock", r#"{"qty":1}"#]);
        match token {
            Some(t) => c.env("TESSERA_TOKEN", t),
            None => c.env_remove("TESSERA_TOKEN"),
        };
        c.output().expect("send runs")
    };
    let refused = send(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    let ok = send(Some(ACME_FN_KEY));
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(serde_json::from_slice::<Value>(&ok.stdout).unwrap(), json!({"on_hand": 2}));
    node.kill().await;
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let m = Material::new();
    let dir = tempfile::tempdir().unwrap();
    let keys = m.path("keys.toml");
    let secret = m.path("hs.secret");
    let node = NodeProcess::start_with_env(
        dir.path(),
        &["--api-keys-file", keys.to_str().unwrap(), "--jwt-secret-file", secret.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    )
    .await
    .expect("serves");
    let jwt = m.jwt(Algorithm::HS256, &json!({"tenant": "acme", "scope": "entity:stock:write", "exp": now() - 10_000}));
    let url = format!("{}/v1/entities/stock/s:log/restock", node.base);
    for token in [DEVICE_KEY, ACME_FN_KEY, "wrong-key-wrong-key-123", jwt.as_str()] {
        call("POST", &url, Some(token), Some(r#"{"qty":1}"#)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = node.log_tail().join("\n");
    node.kill().await;
    for token in [DEVICE_KEY, ACME_FN_KEY, "wrong-key-wrong-key-123", jwt.as_str(), HS_SECRET] {
        assert!(!log.contains(token), "the log holds a credential:\n{log}");
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files in `dir`.
pub fn test_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn https_with_the_configured_certificate() {
    let m = Material::new();
    let (ca, cert, key) = test_ca(m.dir.path(), "node");
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        dir.path(),
        &[
            "--http-tls-cert",
            cert.to_str().unwrap(),
            "--http-tls-key",
            key.to_str().unwrap(),
            "--api-keys-file",
            m.path("keys.toml").to_str().unwrap(),
        ],
    )
    .await
    .expect("serves HTTPS");
    assert!(node.base.starts_with("https://"), "{}", node.base);
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/v1/entities/stock/s:tls/restock", node.base);
    let resp = trusted.post(&url).bearer_auth(ACME_FN_KEY).body(r#"{"qty":4}"#).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Not trusted without the CA; plain HTTP is not spoken.
    assert!(reqwest::Client::new().post(&url).send().await.is_err(), "an untrusted certificate is refused");
    let plain = url.replacen("https://", "http://", 1);
    assert!(common::client().post(&plain).body("{}").send().await.is_err(), "no plain HTTP");
    // The CLI trusts a private CA through TESSERA_HTTP_CA.
    let out = std::process::Command::new(common::test_node_bin())
        .args(["send", "--http", &node.base, "stock", "s:tls", "purchase", r#"{"qty":1}"#])
        .env("TESSERA_TOKEN", ACME_FN_KEY)
        .env("TESSERA_HTTP_CA", &ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"on_hand": 3}));
    node.kill().await;

    // A certificate and key that do not go together: a clear error at start.
    let (_, other_cert, _) = test_ca(m.dir.path(), "other");
    let d = dir.path().to_str().unwrap();
    let (status, stderr) = run_to_end(&[
        "serve",
        "--data-dir",
        d,
        "--http-tls-cert",
        other_cert.to_str().unwrap(),
        "--http-tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("do not go together"), "{stderr}");
}

// ---- NATS: credentials, TLS, subject permissions -------------------------

use tessera_runtime::client::NatsClient;
use tessera_test_support::servers::{NatsServer, free_port, unique_prefix};

/// A nats-server that speaks only TLS (certificate signed by the test CA)
/// and holds one account with JetStream: the node logs in with an NKey
/// (all subjects of the account); the tenant `acme` with a password, and
/// may publish only commands for `stock` and read only its own inbox.
struct SecureNats {
    server: NatsServer,
    ca: PathBuf,
    node_seed: PathBuf,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl SecureNats {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_ca(dir.path(), "nats");
        let node = nkeys::KeyPair::new_user();
        let node_seed = dir.path().join("node.nk");
        std::fs::write(&node_seed, node.seed().unwrap()).unwrap();
        let prefix = unique_prefix();
        let port = free_port();
        let config = format!(
            r#"
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
tls {{ cert_file: "{cert}", key_file: "{key}", timeout: 5 }}
accounts {{
  APP: {{
    jetstream: enabled
    users: [
      {{ nkey: "{node_pub}" }}
      {{ user: acme, password: "acme-secret-1",
         permissions: {{ publish: {{ allow: ["{prefix}.cmd.stock.>"] }}, subscribe: {{ allow: ["_INBOX_acme.>"] }} }} }}
    ]
  }}
}}
"#,
            store = dir.path().join("js").display(),
            cert = cert.display(),
            key = key.display(),
            node_pub = node.public_key(),
        );
        let server = NatsServer::start(dir.path(), port, &config);
        Self { server, ca, node_seed, prefix, _dir: dir }
    }

    fn url(&self) -> String {
        format!("tls://localhost:{}", self.server.port)
    }

    fn node_config(&self, c: &mut tessera_runtime::NodeConfig) {
        c.nats.url = Some(self.url());
        c.nats.prefix = self.prefix.clone();
        c.nats.nkey_file = Some(self.node_seed.clone());
        c.nats.tls_ca_file = Some(self.ca.clone());
    }
}

/// Why a node with this config does not start (on a fresh data dir).
async fn node_error(tweak: impl FnOnce(&mut tessera_runtime::NodeConfig)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tessera_runtime::NodeConfig::default().with(|c| {
        c.journal.data_dir = dir.path().to_path_buf();
        c.http.listen = None;
    });
    tweak(&mut config);
    match tessera_runtime::NodeBuilder::new(tessera_tests::registry()).config(config).build().await {
        Ok(n) => {
            n.shutdown().await;
            panic!("the node started")
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn nats_with_nkeys_passwords_tls_and_subject_permissions() {
    let nats = SecureNats::start();
    let dir = tempfile::tempdir().unwrap();
    let (node, _base) = common::node(dir.path(), |c| nats.node_config(c)).await;

    // A tenant's client: its password, the CA, its own inbox prefix.
    let acme = tessera_runtime::config::NatsSection {
        user: Some("acme".into()),
        password_file: Some({
            let p = dir.path().join("acme.pw");
            std::fs::write(&p, "acme-secret-1\n").unwrap();
            p
        }),
        tls_ca_file: Some(nats.ca.clone()),
        inbox_prefix: Some("_INBOX_acme".into()),
        ..Default::default()
    };
    let client = NatsClient::connect_with(&nats.url(), &acme)
        .await
        .expect("acme connects")
        .with_prefix(&nats.prefix)
        .with_timeout(Duration::from_secs(3));
    let r = client.send_json("stock", "s:nats", "restock", &json!({"qty": 3}), None).await.expect("allowed");
    assert_eq!(r.json().unwrap(), json!({"on_hand": 3}));
    // Another entity type is not on its subjects: the server drops the request, nothing runs.
    let denied = client.send_json("flaky", "f:1", "set", &json!({"value": 1}), None).await;
    assert!(denied.is_err(), "published outside the tenant's subjects: {denied:?}");
    assert!(nats.server.log().contains("Publish Violation"), "{}", nats.server.log());
    let (_, _, v) = call("GET", &format!("{_base}/v1/entities/flaky/f:1"), None, None).await;
    assert_eq!(v["seq"], 0, "{v}");

    // The CLI takes the same settings from TESSERA_NATS_* variables (run
    // without blocking: this test's runtime also runs the node).
    let out = tokio::process::Command::new(common::test_node_bin())
        .args([
            "send",
            "--nats",
            &nats.url(),
            "--nats-prefix",
            &nats.prefix,
            "stock",
            "s:nats",
            "purchase",
            r#"{"qty":1}"#,
        ])
        .env("TESSERA_NATS_USER", "acme")
        .env("TESSERA_NATS_PASSWORD_FILE", acme.password_file.as_ref().unwrap())
        .env("TESSERA_NATS_TLS_CA", &nats.ca)
        .env("TESSERA_NATS_INBOX_PREFIX", "_INBOX_acme")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), nats.server.log());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"on_hand": 2}));
    node.shutdown().await;

    // Wrong credentials, no CA, a wrong CA: the node does not start, and says why.
    let other = nkeys::KeyPair::new_user();
    let other_seed = dir.path().join("other.nk");
    std::fs::write(&other_seed, other.seed().unwrap()).unwrap();
    let e = node_error(|c| {
        nats.node_config(c);
        c.nats.nkey_file = Some(other_seed.clone());
    })
    .await;
    assert!(e.contains("authorization violation") && e.contains("nats.nkey_file"), "{e}");
    let e = node_error(|c| {
        nats.node_config(c);
        c.nats.nkey_file = None;
        c.nats.user = Some("acme".into());
        c.nats.password_file = Some(dir.path().join("acme.pw"));
        std::fs::write(dir.path().join("acme.pw"), "wrong").unwrap();
    })
    .await;
    assert!(e.contains("authorization violation"), "{e}");
    assert!(!e.contains("wrong"), "the password is not in the error: {e}");
    let e = node_error(|c| {
        nats.node_config(c);
        c.nats.tls_ca_file = None;
    })
    .await;
    assert!(e.contains("TLS"), "{e}");
    let (wrong_ca, _, _) = test_ca(dir.path(), "stranger");
    let e = node_error(|c| {
        nats.node_config(c);
        c.nats.tls_ca_file = Some(wrong_ca.clone());
    })
    .await;
    assert!(e.contains("TLS failed"), "{e}");
}

#[tokio::test]
async fn nats_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ token: \"s3cret-token-value\" }}\n",
        dir.path().join("js").display()
    );
    let _server = NatsServer::start(dir.path(), port, &config);
    let data = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-value\n").unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let (node, base) = common::node(data.path(), |c| {
        c.nats.url = Some(url.clone());
        c.nats.token_file = Some(token.clone());
    })
    .await;
    let (s, _, _) = post(&format!("{base}/v1/entities/stock/s:t/restock"), r#"{"qty":1}"#, None).await;
    assert_eq!(s, 200);
    node.shutdown().await;
    std::fs::write(&token, "not-the-token").unwrap();
    let e = node_error(|c| {
        c.nats.url = Some(url.clone());
        c.nats.token_file = Some(token.clone());
    })
    .await;
    assert!(e.contains("authorization violation"), "{e}");
    let e = node_error(|c| c.nats.url = Some(url.clone())).await;
    assert!(e.contains("authorization violation"), "no credentials at all: {e}");
}

// ---- CQL: PasswordAuthenticator ------------------------------------------

#[tokio::test]
async fn a_wrong_cql_password_is_a_clear_startup_error() {
    let server = common::scylla_server();
    let (scheme, rest) = server.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let ks = common::unique_keyspace();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (url, says) in [
        (format!("{scheme}://cassandra:not-the-password@{host}/{ks}"), "the user and password"),
        (format!("{scheme}://{host}/{ks}"), "no credentials"),
    ] {
        let (status, stderr) = run_to_end(&["serve", "--data-dir", d, "--journal", &url]);
        assert!(!status.success());
        assert!(stderr.contains("authentication failed") && stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("not-the-password"), "the password is not printed: {stderr}");
    }
}
