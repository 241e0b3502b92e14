//! Connecting: the driver session, TLS with a trusted CA, errors.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use super::config::ScyllaConfig;
use crate::error::{JournalError, OpenError};

pub(crate) fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(format!("scylla: {e}"))
}

pub(crate) fn open_err(c: &ScyllaConfig, e: impl std::fmt::Display) -> OpenError {
    OpenError::Io { path: format!("scylla://{}/{}", c.nodes.join(","), c.keyspace), message: e.to_string() }
}

fn tls_config(c: &ScyllaConfig, ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, OpenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| open_err(c, format!("tls_ca {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| open_err(c, format!("tls_ca {}: {e}", ca.display())))?;
        roots.add(cert).map_err(|e| open_err(c, format!("tls_ca {}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| open_err(c, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A session to the cluster a config names.
pub(crate) async fn session(c: &ScyllaConfig) -> Result<Session, OpenError> {
    let mut b = SessionBuilder::new().known_nodes(&c.nodes).connection_timeout(Duration::from_secs(5));
    if let Some((u, p)) = &c.credentials {
        b = b.user(u, p);
    }
    if let Some(ca) = &c.tls_ca {
        b = b.tls_context(Some(tls_config(c, ca)?));
    }
    b.build().await.map_err(|e| {
        let text = e.to_string();
        if text.contains("AuthenticationError") || text.contains("bad credentials") || text.contains("authenticator") {
            let who = c.credentials.as_ref().map_or("no credentials", |_| "the user and password");
            open_err(
                c,
                format!("authentication failed: the server refused {who} of the URL (`user:password@`): {text}"),
            )
        } else {
            open_err(c, format!("cannot connect: {text}"))
        }
    })
}
