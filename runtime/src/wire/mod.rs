//! The wire API: every body a node answers with (and clients read back),
//! as serde types, plus header names and NATS subjects. The HTTP handlers,
//! the NATS ingress and client, the CLI, the result-store process and the
//! tests all use these types; nothing builds or reads a body by string key.
//! The NATS contract is written up in docs/protocol.md.
//!
//! May import: `results` (the row type) and the cluster's value types. No
//! node, no edge: everything else imports it.

mod bodies;
mod headers;
mod subjects;

pub use bodies::*;
pub use headers::*;
pub use subjects::Subjects;

use tessera_entities::Format;

/// The format named by a `Content-Type` header (absent: JSON).
pub fn format_of(content_type: Option<&str>) -> Option<Format> {
    match content_type {
        None | Some("") => Some(Format::Json),
        Some(ct) => Format::from_content_type(ct),
    }
}

/// True for ids usable as one NATS subject token.
pub fn subject_safe(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b))
}
