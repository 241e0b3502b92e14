//! Static API keys from a TOML file:
//!
//! ```toml
//! [[key]]
//! name = "shop-devices-eu"          # shown in logs, never the key
//! tenant = "acme"
//! scopes = ["entity:stock/purchase:write"]
//! sha256 = "9f86d081884c7d65…"      # hex SHA-256 of the key (or `key = "…"`, the key itself)
//! ```
//!
//! Keys are looked up by their SHA-256, so the file may hold only hashes
//! (`printf %s "$KEY" | sha256sum`), and a lookup's timing says nothing of
//! the key.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuthConfigError;
use super::scope::{Principal, parse_scopes, tenant_ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    tenant: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

/// The keys of one file, by the SHA-256 of each key.
#[derive(Default)]
pub(crate) struct ApiKeys {
    by_hash: HashMap<[u8; 32], Principal>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ApiKeys {
    /// Reads and checks a keys file.
    pub(crate) fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthConfigError::Read { path: shown.clone(), message: e.to_string() })?;
        Self::parse(&text).map_err(|message| AuthConfigError::Invalid { path: shown, message })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut by_hash = HashMap::new();
        for e in file.key {
            let at = |m: &str| format!("key `{}`: {m}", e.name);
            if !tenant_ok(&e.tenant) {
                return Err(at("tenant must be 1-64 letters, digits, `-` or `_`, and not `tessera`"));
            }
            let hash = match (&e.sha256, &e.key) {
                (Some(h), None) => hex32(h).ok_or_else(|| at("sha256 must be 64 hex digits"))?,
                (None, Some(k)) if k.len() >= 16 => sha256(k.as_bytes()),
                (None, Some(_)) => return Err(at("a key must be at least 16 characters")),
                _ => return Err(at("give exactly one of `sha256` and `key`")),
            };
            let scopes = parse_scopes(e.scopes.iter().map(String::as_str)).map_err(|s| at(&s.to_string()))?;
            let principal = Principal { tenant: e.tenant.clone(), subject: e.name.clone(), scopes };
            if by_hash.insert(hash, principal).is_some() {
                return Err(at("the same key is listed twice"));
            }
        }
        Ok(Self { by_hash })
    }

    /// The principal of a presented key.
    pub(crate) fn find(&self, presented: &str) -> Option<&Principal> {
        self.by_hash.get(&sha256(presented.as_bytes()))
    }

    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[key]]
name = "devices"
tenant = "acme"
scopes = ["entity:stock/purchase:write"]
key = "device-key-0123456789"

[[key]]
name = "ops"
tenant = "acme"
scopes = ["admin"]
sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
"#;

    #[test]
    fn keys_are_found_by_key_or_by_hash() {
        let k = ApiKeys::parse(FILE).unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k.find("device-key-0123456789").unwrap().subject, "devices");
        assert_eq!(k.find("password").unwrap().subject, "ops", "sha256 of `password`");
        assert!(k.find("device-key-012345678").is_none());
    }

    #[test]
    fn a_bad_entry_is_named() {
        for (text, what) in [
            ("[[key]]\nname = \"a\"\ntenant = \"x:y\"\nkey = \"0123456789abcdef\"", "tenant"),
            ("[[key]]\nname = \"a\"\ntenant = \"x\"\nkey = \"short\"", "16 characters"),
            ("[[key]]\nname = \"a\"\ntenant = \"x\"\nsha256 = \"00\"", "64 hex"),
            ("[[key]]\nname = \"a\"\ntenant = \"x\"", "exactly one"),
            ("[[key]]\nname = \"a\"\ntenant = \"x\"\nkey = \"0123456789abcdef\"\nscopes = [\"root\"]", "invalid scope"),
            ("[[key]]\nname = \"a\"\ntenant = \"x\"\nkey = \"0123456789abcdef\"\ncolour = 1", "colour"),
        ] {
            let e = ApiKeys::parse(text).err().unwrap();
            assert!(e.contains(what), "{what}: {e}");
        }
    }
}
