//! A NATS client for Tessera: computes an entity's shard from its key and
//! sends commands to `{prefix}.cmd.{type}.{shard}`, calls functions sync or
//! async, and turns the reply headers into a result. May import: `wire`.
//!
//! ```no_run
//! # async fn f() -> Result<(), tessera_runtime::client::ClientError> {
//! use tessera_runtime::client::NatsClient;
//! let client = NatsClient::connect("nats://127.0.0.1:4222").await?;
//! let reply = client.send_json("stock", "store-1:sku-1", "restock", &serde_json::json!({"qty": 5}), None).await?;
//! println!("{} at seq {:?}", reply.json()?, reply.seq);
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::client::RequestErrorKind;
use tessera_entities::{Format, codec};

use crate::wire::{self as protocol, ErrorBody, StateBody, Subjects};

/// Why a call through NATS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Nobody serves the subject: no node is running with NATS, or the shard
    /// is moving between nodes.
    #[error(
        "no responders on {subject}: no Tessera node serves it (is a node running with --nats, with the same prefix?)"
    )]
    NoResponders {
        /// The subject.
        subject: String,
    },
    /// No reply in time; the outcome is unknown (retry with the same idempotency key).
    #[error("no reply on {subject} within {timeout:?}; the outcome is unknown")]
    Timeout {
        /// The subject.
        subject: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The node answered with an error status.
    #[error("status {status}: {} ({})", body.error.message, body.error.kind)]
    Status {
        /// The HTTP-equivalent status.
        status: u16,
        /// The error body.
        body: Box<ErrorBody>,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The body, in the request's format.
    pub body: Vec<u8>,
    /// The format.
    pub format: Format,
    /// The entity's seq after a command.
    pub seq: Option<u64>,
    /// The invocation id.
    pub invocation_id: Option<String>,
    /// True when answered from the idempotency window.
    pub deduplicated: bool,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        match self.format {
            Format::Json => serde_json::from_slice(&self.body).map_err(|e| ClientError::Other(e.to_string())),
            Format::MsgPack => codec::msgpack_to_json(&self.body).map_err(|e| ClientError::Other(e.to_string())),
        }
    }
}

/// The client.
#[derive(Clone)]
pub struct NatsClient {
    client: async_nats::Client,
    subjects: Subjects,
    shards: u32,
    command_groups: u32,
    timeout: Duration,
    accept: Option<Format>,
}

impl NatsClient {
    /// Connects with the default prefix (`tessera`), 1024 shards and a 30 s timeout.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let client = async_nats::ConnectOptions::new()
            .name("tessera-client")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| ClientError::Connect { url: url.to_owned(), message: e.to_string() })?;
        Ok(Self::from_client(client))
    }
    /// Connects with the credentials and TLS of `settings` (see
    /// [`crate::connect`]); defaults otherwise as in [`Self::connect`].
    pub async fn connect_with(url: &str, settings: &crate::config::NatsSection) -> Result<Self, ClientError> {
        let client = crate::connect::nats(url, settings, "tessera-client")
            .await
            .map_err(|e| ClientError::Connect { url: e.url, message: e.message })?;
        Ok(Self::from_client(client))
    }
    /// Wraps a connected NATS client (defaults as in [`Self::connect`]).
    pub fn from_client(client: async_nats::Client) -> Self {
        Self {
            client,
            subjects: Subjects::new("tessera"),
            shards: tessera_journal::DEFAULT_SHARDS,
            command_groups: 64,
            timeout: Duration::from_secs(30),
            accept: None,
        }
    }
    /// Asks for replies in `format` whatever the request's format.
    pub fn with_accept(mut self, format: Format) -> Self {
        self.accept = Some(format);
        self
    }
    /// Uses another subject prefix.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.subjects = Subjects::new(prefix);
        self
    }
    /// Uses another count of async command groups (must match the nodes' `nats.command_groups`).
    pub fn with_command_groups(mut self, groups: u32) -> Self {
        self.command_groups = groups.max(1);
        self
    }

    /// Sets the shard count (must match the nodes').
    pub fn with_shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }
    /// Uses another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// The underlying NATS client.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    async fn request(
        &self,
        subject: String,
        mut headers: HeaderMap,
        body: Vec<u8>,
        format: Format,
    ) -> Result<Reply, ClientError> {
        with_trace_context(&mut headers);
        let req = async_nats::Request::new().headers(headers).payload(body.into()).timeout(Some(self.timeout));
        let msg = self.client.send_request(subject.clone(), req).await.map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => ClientError::NoResponders { subject: subject.clone() },
            RequestErrorKind::TimedOut => ClientError::Timeout { subject: subject.clone(), timeout: self.timeout },
            _ => ClientError::Other(e.to_string()),
        })?;
        let h = msg.headers.as_ref();
        let get = |n: &str| h.and_then(|h| h.get(n)).map(|v| v.as_str().to_owned());
        let status: u16 = get(protocol::STATUS).and_then(|s| s.parse().ok()).unwrap_or(500);
        let format = protocol::format_of(get(protocol::CONTENT_TYPE).as_deref()).unwrap_or(format);
        let reply = Reply {
            body: msg.payload.to_vec(),
            format,
            seq: get(protocol::SEQ).and_then(|s| s.parse().ok()),
            invocation_id: get(protocol::INVOCATION_ID),
            deduplicated: get(protocol::DEDUPLICATED).as_deref() == Some("true"),
        };
        if status == 200 {
            return Ok(reply);
        }
        let body = match reply.format {
            Format::Json => serde_json::from_slice(&reply.body).ok(),
            Format::MsgPack => tessera_entities::codec::from_msgpack(&reply.body).ok(),
        };
        let body = body.unwrap_or_else(|| {
            ErrorBody::new("internal", status, format!("undecodable error reply ({} bytes)", reply.body.len()))
        });
        Err(ClientError::Status { status, body: Box::new(body) })
    }

    /// Sends a command (body in `format`) to the entity's shard subject.
    /// While the shard moves between nodes (nobody subscribed, or the node
    /// answers `shard_moved`), retries with backoff within the timeout:
    /// neither case ran the command, so retrying is safe without a key.
    pub async fn send(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: &str,
        body: Vec<u8>,
        format: Format,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let shard = tessera_journal::shard_of(entity_type, entity_id, self.shards);
        let mut h = HeaderMap::new();
        h.insert(protocol::ENTITY, entity_id);
        h.insert(protocol::COMMAND, command);
        h.insert(protocol::CONTENT_TYPE, format.content_type());
        if let Some(k) = idempotency_key {
            h.insert(protocol::IDEMPOTENCY_KEY, k);
        }
        if let Some(a) = self.accept {
            h.insert(protocol::ACCEPT, a.content_type());
        }
        self.retrying(self.subjects.command(entity_type, shard), h, body, format).await
    }

    /// A request to a shard subject, retried with backoff within the timeout
    /// while the shard moves (no responders, or `shard_moved`).
    async fn retrying(
        &self,
        subject: String,
        h: HeaderMap,
        body: Vec<u8>,
        format: Format,
    ) -> Result<Reply, ClientError> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let r = self.request(subject.clone(), h.clone(), body.clone(), format).await;
            let moving = match &r {
                Err(ClientError::NoResponders { .. }) => true,
                Err(ClientError::Status { status: 503, body }) => body.error.kind == "shard_moved",
                _ => false,
            };
            if !moving || started.elapsed() + pause >= self.timeout {
                return r;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Reads an entity's live state on the node that owns it (retrying
    /// while its shard moves, like [`Self::send`]).
    pub async fn state(&self, entity_type: &str, entity_id: &str) -> Result<StateBody, ClientError> {
        let shard = tessera_journal::shard_of(entity_type, entity_id, self.shards);
        let mut h = HeaderMap::new();
        h.insert(protocol::ENTITY, entity_id);
        h.insert(protocol::READ, "state");
        h.insert(protocol::ACCEPT, Format::Json.content_type());
        let reply = self.retrying(self.subjects.command(entity_type, shard), h, Vec::new(), Format::Json).await?;
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::Other(format!("bad state reply: {e}")))
    }

    /// Sends a JSON command.
    pub async fn send_json(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: &str,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Other(e.to_string()))?;
        self.send(entity_type, entity_id, command, body, Format::Json, idempotency_key).await
    }

    /// Calls a function and waits for its output.
    pub async fn call(&self, function: &str, body: Vec<u8>, format: Format) -> Result<Reply, ClientError> {
        self.call_as(function, body, format, None).await
    }

    /// Calls a function as invocation `invocation_id` (the id its context
    /// sees) and waits for its output (in the client's accept format, if
    /// set). No responders: no node of the functions role is running.
    pub async fn call_as(
        &self,
        function: &str,
        body: Vec<u8>,
        format: Format,
        invocation_id: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let mut h = HeaderMap::new();
        h.insert(protocol::CONTENT_TYPE, format.content_type());
        if let Some(a) = self.accept {
            h.insert(protocol::ACCEPT, a.content_type());
        }
        if let Some(id) = invocation_id {
            h.insert(protocol::INVOCATION_ID, id);
        }
        self.request(self.subjects.call(function), h, body, format).await
    }

    /// Queues an async call in JetStream; returns its invocation id. The
    /// result appears at `GET /v1/invocations/{id}` and on `{prefix}.result.{id}`.
    pub async fn call_async(
        &self,
        function: &str,
        body: Vec<u8>,
        format: Format,
        invocation_id: Option<&str>,
    ) -> Result<String, ClientError> {
        self.queue(self.subjects.invoke(function), HeaderMap::new(), body, format, invocation_id, "call").await
    }

    /// Queues an entity command in JetStream (fire and forget) on its unit's
    /// subject `{prefix}.acmd.{type}.{group}.{shard}`; returns its invocation
    /// id. The unit's owner runs it once, in publish order per entity; its
    /// outcome appears at `GET /v1/invocations/{id}` and on `{prefix}.result.{id}`.
    pub async fn send_async(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: &str,
        body: Vec<u8>,
        format: Format,
        invocation_id: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut h = HeaderMap::new();
        h.insert(protocol::ENTITY, entity_id);
        h.insert(protocol::COMMAND, command);
        let shard = tessera_journal::shard_of(entity_type, entity_id, self.shards);
        let subject = self.subjects.entity_command(entity_type, shard, self.command_groups);
        self.queue(subject, h, body, format, invocation_id, "command").await
    }

    /// Publishes an invocation to JetStream under its id (also the message
    /// id, so a republish is dropped) and waits until it is stored.
    async fn queue(
        &self,
        subject: String,
        mut h: HeaderMap,
        body: Vec<u8>,
        format: Format,
        invocation_id: Option<&str>,
        what: &str,
    ) -> Result<String, ClientError> {
        let id = invocation_id.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        if !protocol::subject_safe(&id) {
            return Err(ClientError::Other(format!("invocation id `{id}` must be letters, digits, `-`, `_` or `:`")));
        }
        h.insert(protocol::INVOCATION_ID, id.as_str());
        h.insert(protocol::NATS_MSG_ID, id.as_str());
        h.insert(protocol::CONTENT_TYPE, format.content_type());
        with_trace_context(&mut h);
        let js = async_nats::jetstream::new(self.client.clone());
        let ack =
            js.publish_with_headers(subject, h, body.into()).await.map_err(|e| ClientError::Other(e.to_string()))?;
        ack.await.map_err(|e| {
            ClientError::Other(format!("JetStream did not store the {what} (is a node running with --nats?): {e}"))
        })?;
        Ok(id)
    }
}

/// With traces on: the current span's `traceparent`, so the receiver's
/// spans join this trace.
pub(crate) fn with_trace_context(h: &mut HeaderMap) {
    if let Some(tp) = crate::telemetry::current_traceparent() {
        h.insert(crate::telemetry::TRACEPARENT, tp.as_str());
    }
}
