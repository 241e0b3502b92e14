//! How a process connects to NATS: the credentials and TLS `[nats]` names
//! (a `.creds` file, an NKey seed, a token, a user and password — or
//! `user:password@` in the URL — and a CA to trust, with an optional
//! client certificate), and a failure that says which of them the server
//! refused. Every NATS connection of the node, the CLI and the examples is
//! made here, so all of them take the same settings.
//!
//! ```no_run
//! # async fn f() -> Result<(), tessera_runtime::connect::ConnectFailure> {
//! use tessera_runtime::config::NatsSection;
//! let mut nats = NatsSection::default();
//! nats.tls_ca_file = Some("ca.pem".into());
//! nats.nkey_file = Some("node.nk".into());
//! let client = tessera_runtime::connect::nats("tls://nats.internal:4222", &nats, "my-tool").await?;
//! # drop(client); Ok(()) }
//! ```
//!
//! May import: `config`.

use std::path::Path;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions};

use crate::config::NatsSection;

/// Why a NATS connection could not be made: the server's URL (without
/// credentials) and what went wrong, in words that name the setting to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {message}")]
pub struct ConnectFailure {
    /// The server URL, without credentials.
    pub url: String,
    /// What failed.
    pub message: String,
}

fn read_secret(path: &Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the {what} {} is empty", path.display()));
    }
    Ok(t.to_owned())
}

/// Makes `ring` the process's rustls crypto provider, unless one is set.
/// The node links rustls with both `ring` and `aws-lc-rs` (the Scylla
/// driver enables the latter), and then libraries that build TLS configs
/// with the process default (async-nats) cannot choose one and panic.
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// Credentials in a URL's `user:password@` or `token@` (async-nats does
/// not read them itself), percent-decoded.
fn url_credentials(url: &str) -> Option<(String, Option<String>)> {
    let first = url.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (b[i], b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    match userinfo.split_once(':') {
        Some((u, p)) => Some((decode(u), Some(decode(p)))),
        None => Some((decode(userinfo), None)),
    }
}

/// The connect options `[nats]` describes for `url` (no I/O but reading
/// its files); credentials in the URL count when `[nats]` names none.
pub async fn options_for(url: &str, s: &NatsSection, name: &str) -> Result<ConnectOptions, String> {
    let o = options(s, name).await?;
    let configured = s.creds_file.is_some() || s.nkey_file.is_some() || s.token_file.is_some() || s.user.is_some();
    Ok(match url_credentials(url) {
        Some(_) if configured => return Err("credentials are both in the NATS URL and in [nats]: give one".into()),
        Some((user, Some(password))) => o.user_and_password(user, password),
        Some((token, None)) => o.token(token),
        None => o,
    })
}

/// The connect options `[nats]` describes (no I/O but reading its files).
pub async fn options(s: &NatsSection, name: &str) -> Result<ConnectOptions, String> {
    install_crypto_provider();
    s.check_credentials()?;
    let mut o = if let Some(creds) = &s.creds_file {
        ConnectOptions::with_credentials_file(creds)
            .await
            .map_err(|e| format!("cannot use the credentials file {}: {e}", creds.display()))?
    } else if let Some(nkey) = &s.nkey_file {
        let seed = read_secret(nkey, "NKey seed file")?;
        if !seed.starts_with("SU") {
            return Err(format!("{} does not hold an NKey user seed (`SU…`)", nkey.display()));
        }
        ConnectOptions::with_nkey(seed)
    } else if let Some(token) = &s.token_file {
        ConnectOptions::with_token(read_secret(token, "token file")?)
    } else if let Some(user) = &s.user {
        let password = match &s.password_file {
            Some(p) => read_secret(p, "password file")?,
            None => String::new(),
        };
        ConnectOptions::with_user_and_password(user.clone(), password)
    } else {
        ConnectOptions::new()
    };
    if let Some(ca) = &s.tls_ca_file {
        if !ca.is_file() {
            return Err(format!("no CA file at {}", ca.display()));
        }
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&s.tls_cert_file, &s.tls_key_file) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(p) = s.inbox_prefix.as_deref().filter(|p| !p.is_empty()) {
        o = o.custom_inbox_prefix(p);
    }
    Ok(o.name(name).connection_timeout(Duration::from_secs(5)))
}

/// A URL without the `user:password@` (or token) it may carry.
pub fn shown_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        (None, Some((_, host))) => host.to_owned(),
        _ => url.to_owned(),
    }
}

/// What a connect error means for the one who configured it.
fn explain(kind: ConnectErrorKind, e: &async_nats::ConnectError) -> String {
    // async-nats reports a certificate it cannot verify as an IO error.
    let text = e.to_string();
    let tls = kind == ConnectErrorKind::Tls || text.contains("certificate") || text.contains("CorruptMessage");
    match kind {
        _ if tls => format!(
            "TLS failed: check nats.tls_ca_file (the CA that signed the server's certificate), the server name in \
             the URL, and a client certificate if the server asks for one ({e})"
        ),
        ConnectErrorKind::AuthorizationViolation => format!(
            "the server refused these credentials (authorization violation): check nats.creds_file, nats.nkey_file, \
             nats.token_file, nats.user/password_file or the URL's user:password@ ({e})"
        ),
        ConnectErrorKind::Authentication => {
            format!("the credentials could not sign the server's challenge: check the NKey seed or .creds file ({e})")
        }
        ConnectErrorKind::TimedOut | ConnectErrorKind::Io | ConnectErrorKind::Dns => {
            format!("cannot reach the server: {e}")
        }
        _ => format!("cannot connect: {e}"),
    }
}

/// Connects as `name` with the credentials and TLS of `s`.
pub async fn nats(url: &str, s: &NatsSection, name: &str) -> Result<async_nats::Client, ConnectFailure> {
    let fail = |message: String| ConnectFailure { url: shown_url(url), message };
    let o = options_for(url, s, name).await.map_err(fail)?;
    o.connect(url).await.map_err(|e| fail(explain(e.kind(), &e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(shown_url("nats://u:p@host:4222"), "nats://host:4222");
        assert_eq!(shown_url("tls://s3cret@host:4222"), "tls://host:4222");
        assert_eq!(shown_url("nats://host:4222"), "nats://host:4222");
    }

    #[test]
    fn credentials_are_read_from_the_url() {
        assert_eq!(url_credentials("nats://u:p%40ss@h:4222"), Some(("u".into(), Some("p@ss".into()))));
        assert_eq!(url_credentials("tls://tok@h:4222,nats://h2"), Some(("tok".into(), None)));
        assert_eq!(url_credentials("nats://h:4222"), None);
        assert_eq!(url_credentials("h:4222"), None);
    }

    #[tokio::test]
    async fn bad_credential_settings_are_named_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        std::fs::write(&seed, "not-a-seed").unwrap();
        let mut s = NatsSection { nkey_file: Some(seed.clone()), ..NatsSection::default() };
        assert!(options(&s, "t").await.unwrap_err().contains("NKey user seed"));
        s.user = Some("me".into());
        assert!(options(&s, "t").await.unwrap_err().contains("one kind of NATS credentials"));
        let s = NatsSection { token_file: Some(dir.path().join("missing")), ..NatsSection::default() };
        assert!(options(&s, "t").await.unwrap_err().contains("cannot read the token file"));
        let s = NatsSection { tls_ca_file: Some(dir.path().join("ca.pem")), ..NatsSection::default() };
        assert!(options(&s, "t").await.unwrap_err().contains("no CA file"));
    }
}
