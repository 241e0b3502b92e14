//! JWT bearer tokens: HS256 with a shared secret, RS256/RS384/RS512 and
//! EdDSA (and ES256/ES384) with PEM public keys. The algorithm a token
//! names picks the keys tried: an HMAC secret is never tried for an
//! asymmetric token nor a public key for an HMAC one (no algorithm
//! confusion). `exp` is required; `iss` and `aud` are checked when
//! configured.
//!
//! Claims read: `tenant` (required), `sub`, and the scopes, as `scope` (a
//! space-separated string, as OAuth 2 servers issue it) or `scopes` (an
//! array). Scopes that are not Tessera's (e.g. `openid`) are ignored.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::AuthConfigError;
use super::scope::{Principal, Scope, tenant_ok};

/// What a token must be checked against.
#[derive(Debug, Clone, Default)]
pub(crate) struct JwtSettings {
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) public_keys: Vec<PathBuf>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ed,
    Ec,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::EdDSA => Family::Ed,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        _ => Family::Rsa,
    }
}

/// Loaded verification keys.
pub(crate) struct JwtKeys {
    keys: Vec<(Family, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

fn read(path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|e| AuthConfigError::Read { path: path.display().to_string(), message: e.to_string() })
}

impl JwtKeys {
    pub(crate) fn load(s: &JwtSettings) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(p) = &s.secret_file {
            let mut secret = read(p)?;
            while secret.last().is_some_and(u8::is_ascii_whitespace) {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(AuthConfigError::Invalid {
                    path: p.display().to_string(),
                    message: "an HS256 secret must be at least 32 bytes".into(),
                });
            }
            let key = DecodingKey::from_secret(&secret)
                .map_err(|e| AuthConfigError::Invalid { path: p.display().to_string(), message: e.to_string() })?;
            keys.push((Family::Hmac, key));
        }
        for p in &s.public_keys {
            let pem = read(p)?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Family::Rsa, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (Family::Ed, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Family::Ec, k)
            } else {
                return Err(AuthConfigError::Invalid {
                    path: p.display().to_string(),
                    message: "not a PEM RSA, Ed25519 or EC public key".into(),
                });
            };
            keys.push(key);
        }
        Ok(Self { keys, issuer: s.issuer.clone(), audience: s.audience.clone() })
    }

    /// Verifies a token; the error says why, never what the token holds.
    pub(crate) fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let fam = family(header.alg);
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 30;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = format!("no key configured for {:?} tokens", header.alg);
        for (_, key) in self.keys.iter().filter(|(f, _)| *f == fam) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return principal(data.claims),
                Err(e) => last = format!("{e}"),
            }
        }
        Err(last)
    }
}

fn principal(c: Claims) -> Result<Principal, String> {
    let tenant = c.tenant.ok_or("the token has no `tenant` claim")?;
    if !tenant_ok(&tenant) {
        return Err("the token's tenant must be 1-64 letters, digits, `-` or `_`, and not `tessera`".into());
    }
    let names =
        c.scope.iter().flat_map(|s| s.split_whitespace().map(str::to_owned)).chain(c.scopes.unwrap_or_default());
    let scopes = names.filter_map(|s| s.parse::<Scope>().ok()).collect();
    Ok(Principal { tenant, subject: c.sub.unwrap_or_else(|| "jwt".into()), scopes })
}
