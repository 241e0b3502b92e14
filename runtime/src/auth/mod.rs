//! Who may call the HTTP API: bearer tokens (JWTs, see [`jwt`]; static API
//! keys, see [`keys`]) verified into a [`Principal`] (a tenant and its
//! [`Scope`]s), checked against what each route [`Need`]s.
//!
//! Off unless a key source is configured (`[auth]`): a node without one
//! serves everyone, and refuses to bind a non-loopback address unless
//! `--insecure` says that is meant. Key files are re-read when they change
//! (checked every 2 s), so keys rotate without a restart; a file that no
//! longer parses keeps the keys read before it, with an error in the log.
//!
//! ```
//! use tessera_runtime::auth::{Need, Principal, Scope};
//! let p = Principal { tenant: "acme".into(), subject: "devices".into(), scopes: vec!["entity:stock/purchase:write".parse::<Scope>().unwrap()] };
//! assert!(p.allows(&Need::EntityWrite("stock", "purchase")));
//! assert!(!p.allows(&Need::Admin));
//! ```
//!
//! May import: `config` (its section). Nothing of the node.

mod jwt;
mod keys;
mod scope;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

pub use scope::{Need, Principal, Scope, ScopeError, parse_scopes, tenant_ok};

use crate::config::AuthSection;
use jwt::{JwtKeys, JwtSettings};
use keys::ApiKeys;

/// Why an auth configuration cannot be used (the node does not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// A key file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        message: String,
    },
    /// A key file does not hold what it should.
    #[error("invalid {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (names the entry).
        message: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer …` header (401).
    #[error("authentication required: send `Authorization: Bearer <token or API key>`")]
    Missing,
    /// The token or key is not valid: bad signature, expired, unknown key,
    /// wrong issuer or audience (401). Says why, never the token.
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// Valid credentials without the scope this request needs (403).
    #[error("forbidden: this needs the scope `{need}`")]
    Forbidden {
        /// The narrowest scope that would allow it.
        need: String,
    },
}

impl AuthError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing | Self::Invalid(_) => 401,
            Self::Forbidden { .. } => 403,
        }
    }
    /// A stable name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing | Self::Invalid(_) => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
        }
    }
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
            Self::Forbidden { .. } => "forbidden",
        }
    }
    /// The `WWW-Authenticate` challenge (RFC 6750).
    pub fn challenge(&self) -> String {
        match self {
            Self::Missing => r#"Bearer realm="tessera""#.into(),
            Self::Invalid(_) => r#"Bearer realm="tessera", error="invalid_token""#.into(),
            Self::Forbidden { need } => {
                format!(r#"Bearer realm="tessera", error="insufficient_scope", scope="{need}""#)
            }
        }
    }
}

/// The files an [`Authenticator`] reads, and what it checks.
#[derive(Debug, Clone, Default)]
struct Sources {
    api_keys: Option<PathBuf>,
    jwt: JwtSettings,
}

impl Sources {
    fn files(&self) -> Vec<PathBuf> {
        self.api_keys.iter().chain(&self.jwt.secret_file).chain(&self.jwt.public_keys).cloned().collect()
    }
}

struct Loaded {
    keys: Option<ApiKeys>,
    jwt: Option<JwtKeys>,
}

/// A file's modification time and length (`None`: unreadable).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

impl Loaded {
    fn load(s: &Sources) -> Result<Self, AuthConfigError> {
        let keys = s.api_keys.as_deref().map(ApiKeys::load).transpose()?;
        let has_jwt = s.jwt.secret_file.is_some() || !s.jwt.public_keys.is_empty();
        let jwt = has_jwt.then(|| JwtKeys::load(&s.jwt)).transpose()?;
        Ok(Self { keys, jwt })
    }
}

/// Verifies bearer credentials; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    sources: Arc<Sources>,
    loaded: Arc<RwLock<Arc<Loaded>>>,
    seen: Arc<Mutex<Vec<Stamp>>>,
    public_metrics: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("files", &self.sources.files()).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator `[auth]` describes; `None` when it names no key source (auth off).
    pub fn from_config(c: &AuthSection) -> Result<Option<Self>, AuthConfigError> {
        if !c.enabled() {
            return Ok(None);
        }
        let public_keys =
            c.jwt_public_keys.split(',').map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect();
        let sources = Sources {
            api_keys: c.api_keys_file.clone(),
            jwt: JwtSettings {
                secret_file: c.jwt_secret_file.clone(),
                public_keys,
                issuer: c.jwt_issuer.clone(),
                audience: c.jwt_audience.clone(),
            },
        };
        let seen = stamps(&sources.files());
        let loaded = Loaded::load(&sources)?;
        Ok(Some(Self {
            sources: Arc::new(sources),
            loaded: Arc::new(RwLock::new(Arc::new(loaded))),
            seen: Arc::new(Mutex::new(seen)),
            public_metrics: c.public_metrics,
        }))
    }

    /// True when `GET /metrics` is served without credentials.
    pub fn public_metrics(&self) -> bool {
        self.public_metrics
    }

    /// The principal an `Authorization` header value names.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let value = authorization.map(str::trim).filter(|v| !v.is_empty()).ok_or(AuthError::Missing)?;
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return Err(AuthError::Invalid("the Authorization header must be `Bearer <token>`".into())),
        };
        let loaded = self.loaded.read().map(|l| l.clone()).unwrap_or_else(|p| p.into_inner().clone());
        // A JWT is three base64url parts; anything else is tried as an API key.
        let looks_like_jwt = token.split('.').count() == 3;
        if looks_like_jwt && let Some(jwt) = &loaded.jwt {
            return jwt.verify(token).map_err(AuthError::Invalid);
        }
        if let Some(p) = loaded.keys.as_ref().and_then(|k| k.find(token)) {
            return Ok(p.clone());
        }
        Err(AuthError::Invalid(if looks_like_jwt { "JWTs are not accepted here" } else { "unknown API key" }.into()))
    }

    /// Re-reads the key files when one changed since the last look.
    /// Returns true when new keys are in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.sources.files());
        {
            let Ok(mut seen) = self.seen.lock() else { return false };
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match Loaded::load(&self.sources) {
            Ok(l) => {
                let keys = l.keys.as_ref().map_or(0, ApiKeys::len);
                if let Ok(mut w) = self.loaded.write() {
                    *w = Arc::new(l);
                }
                tracing::info!(api_keys = keys, "auth: key files changed; new keys in use");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "auth: a key file changed and does not load; the previous keys stay in use");
                false
            }
        }
    }

    /// Checks the key files every 2 s until the returned task is aborted.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t = this.clone();
                let _ = tokio::task::spawn_blocking(move || t.reload_if_changed()).await;
            }
        })
    }
}
