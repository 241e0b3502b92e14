//! The NATS edge: the connection ([`NatsLink`]), the ingress (entity
//! commands and sync function calls by request/reply, async calls from a
//! JetStream work queue with a durable consumer), and the node core's ports
//! over NATS: forwarding to a shard's owner ([`NatsForwarder`]), the
//! JetStream call queue ([`JetStreamQueue`]), and what serving a shard
//! means in a cluster ([`NatsShardHost`]). The wire contract is
//! [`crate::wire`] (and docs/protocol.md).
//!
//! An edge. May import: the node core and its ports, `wire`, `contract`,
//! `client`, `results` (row publishing). Nothing imports it but `server`.

mod commands;
mod forward;
mod ingress;
mod queue;
mod request;
mod shard_host;
mod sink;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub(crate) use forward::NatsForwarder;
pub(crate) use ingress::NatsIngress;
pub(crate) use queue::JetStreamQueue;
pub(crate) use shard_host::NatsShardHost;
pub(crate) use sink::JetStreamSink;
pub use sink::{EventMessage, SINK_NAME};

use crate::wire::Subjects;

/// A connected NATS endpoint of a node.
#[derive(Clone)]
pub(crate) struct NatsLink {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) subjects: Subjects,
}

/// Why NATS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("NATS at {url}: {message}")]
pub struct NatsError {
    /// The server URL.
    pub url: String,
    /// What failed.
    pub message: String,
}

impl NatsLink {
    /// Connects and creates the streams (idempotent).
    pub(crate) async fn connect(
        url: &str,
        settings: &crate::config::NatsSection,
        result_ttl: Duration,
    ) -> Result<Self, NatsError> {
        let prefix = settings.prefix.as_str();
        let err = |m: String| NatsError { url: crate::connect::shown_url(url), message: m };
        let client = crate::connect::nats(url, settings, "tessera-node").await.map_err(|e| err(e.message))?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(prefix);
        js.get_or_create_stream(stream::Config {
            name: subjects.invoke_stream(),
            subjects: vec![subjects.invoke(">")],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("cannot create the invocation stream: {e}")))?;
        js.get_or_create_stream(stream::Config {
            name: subjects.commands_stream(),
            subjects: vec![format!("{}.acmd.>", subjects.prefix())],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("cannot create the entity command stream: {e}")))?;
        js.get_or_create_stream(stream::Config {
            name: subjects.result_stream(),
            subjects: vec![subjects.result(">"), subjects.dead_letter(">")],
            max_age: result_ttl,
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("cannot create the result stream: {e}")))?;
        Ok(Self { client, js, subjects })
    }
}
