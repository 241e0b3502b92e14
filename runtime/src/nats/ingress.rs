//! The NATS ingress: entity commands (and owner state reads) on
//! `{p}.cmd.{type}.{shard}`, sync function calls on `{p}.call.{function}`,
//! async calls pulled from the `{P}_INVOKE` work queue.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use tessera_entities::{Format, codec};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{NatsError, NatsLink};
use crate::contract;
use crate::error::InvokeError;
use crate::node::{AsyncCall, AsyncDecision, Invocation, Node};
use crate::wire;

/// The running subscriptions of a node.
pub(crate) struct NatsIngress {
    tasks: Vec<JoinHandle<()>>,
}

impl NatsIngress {
    pub(crate) async fn start(
        node: Node,
        link: NatsLink,
        max_deliver: i64,
        ack_wait: Duration,
    ) -> Result<Self, NatsError> {
        let err = |m: String| NatsError { url: "-".into(), message: m };
        let s = &link.subjects;
        let group = format!("{}-nodes", s.prefix());
        // In a cluster each node subscribes to the subjects of the shards it
        // owns instead (see `cluster_host`).
        let mut cmds = if node.clustered() {
            None
        } else {
            Some(
                link.client
                    .queue_subscribe(format!("{}.cmd.>", s.prefix()), group.clone())
                    .await
                    .map_err(|e| err(e.to_string()))?,
            )
        };
        // Functions are served only by nodes with the functions role.
        let functions = node.config().cluster.roles.functions();
        let mut calls = if functions {
            Some(link.client.queue_subscribe(s.call(">"), group).await.map_err(|e| err(e.to_string()))?)
        } else {
            None
        };
        let consumer: Option<consumer::PullConsumer> = if functions {
            let stream = link.js.get_stream(s.invoke_stream()).await.map_err(|e| err(e.to_string()))?;
            Some(
                stream
                    .get_or_create_consumer(
                        &s.invoke_consumer(),
                        consumer::pull::Config {
                            durable_name: Some(s.invoke_consumer()),
                            ack_policy: consumer::AckPolicy::Explicit,
                            ack_wait,
                            max_deliver,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| err(format!("cannot create the durable consumer: {e}")))?,
            )
        } else {
            None
        };
        let mut tasks = Vec::new();
        let (n, l) = (node.clone(), link.clone());
        tasks.push(tokio::spawn(async move {
            let Some(cmds) = cmds.as_mut() else { return };
            while let Some(msg) = cmds.next().await {
                let (n, l) = (n.clone(), l.clone());
                tokio::spawn(async move { command(&n, &l, msg).await });
            }
        }));
        let (n, l) = (node.clone(), link.clone());
        tasks.push(tokio::spawn(async move {
            let Some(calls) = calls.as_mut() else { return };
            while let Some(msg) = calls.next().await {
                let (n, l) = (n.clone(), l.clone());
                tokio::spawn(async move { call(&n, &l, msg).await });
            }
        }));
        let command_ack_wait = Duration::from_millis(node.config().nats.command_ack_wait_ms);
        tasks.push(super::commands::start(node.clone(), link.clone(), command_ack_wait, max_deliver));
        let permits = Arc::new(Semaphore::new(node.config().executors.function_concurrency));
        tasks.push(tokio::spawn(async move {
            let Some(consumer) = consumer else { return };
            loop {
                let mut messages = match consumer.messages().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot pull async invocations; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(msg) = messages.next().await {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "async invocation stream error");
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let (n, l) = (node.clone(), link.clone());
                    tokio::spawn(async move {
                        invoke_async(&n, &l, msg, max_deliver).await;
                        drop(permit);
                    });
                }
            }
        }));
        Ok(Self { tasks })
    }

    pub(crate) fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

use super::request::{header, named, names};

/// A reply to send: its status (sent as a header), headers and body.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    /// A 200 in `format` with its headers.
    fn ok(format: Format, mut headers: HeaderMap, body: Vec<u8>) -> Self {
        headers.insert(names::CONTENT_TYPE.clone(), format.content_type());
        Self { status: 200, headers, body }
    }

    /// An error's status and body, in `format`.
    fn error(e: &InvokeError, format: Format) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(names::CONTENT_TYPE.clone(), format.content_type());
        let body = codec::encode(&e.to_body(), format).unwrap_or_default();
        Self { status: e.status(), headers, body }
    }
}

/// Sends a reply (nothing without a reply subject).
async fn send(link: &NatsLink, reply: Option<&async_nats::Subject>, r: Reply) {
    let Some(reply) = reply else { return };
    let Reply { status, mut headers, body } = r;
    match status {
        200 => headers.insert(names::STATUS.clone(), "200"),
        s => headers.insert(names::STATUS.clone(), s.to_string()),
    }
    if let Err(e) = link.client.publish_with_headers(reply.clone(), headers, body.into()).await {
        tracing::warn!(error = %e, "cannot send NATS reply");
    }
}

/// Replies with a status, headers and body.
async fn respond(link: &NatsLink, reply: Option<&async_nats::Subject>, status: u16, headers: HeaderMap, body: Vec<u8>) {
    send(link, reply, Reply { status, headers, body }).await;
}

async fn respond_error(link: &NatsLink, reply: Option<&async_nats::Subject>, e: &InvokeError, format: Format) {
    send(link, reply, Reply::error(e, format)).await;
}

/// What a request on a command subject produced.
enum Served {
    Command(crate::shard::CommandReply),
    State(String, String, crate::shard::StateView),
}

/// Handles one command request (from the node-wide queue subscription, or
/// in a cluster from the subscription of a shard this node owns).
pub(crate) async fn command(node: &Node, link: &NatsLink, msg: Message) {
    let span = super::request::span("command", msg.headers.as_ref());
    serve_command(node, link, msg).instrument(span).await
}

/// Decides the reply, then sends it: one send in the handler's future (its
/// state is the larger of the two, not their sum).
async fn serve_command(node: &Node, link: &NatsLink, msg: Message) {
    let reply = command_reply(node, link, &msg).await;
    send(link, msg.reply.as_ref(), reply).await;
}

async fn command_reply(node: &Node, link: &NatsLink, msg: &Message) -> Reply {
    let h = msg.headers.as_ref();
    let format = match contract::content_format(named(h, &names::CONTENT_TYPE)) {
        Ok(f) => f,
        Err(e) => return Reply::error(&e, Format::Json),
    };
    let result = async {
        let max_body = node.config().http.max_body_bytes;
        let r = super::request::parse_command(link.subjects.prefix(), &msg.subject, h, msg.payload.len(), max_body)?;
        let owner = tessera_journal::shard_of(&r.entity_type, &r.entity_id, node.config().journal.shards);
        if owner != r.shard {
            return Err(InvokeError::Misdirected(format!(
                "{}/{} is in shard {owner}, not {}: send it to {}",
                r.entity_type,
                r.entity_id,
                r.shard,
                link.subjects.command(&r.entity_type, owner)
            )));
        }
        let Some(command) = r.command else {
            let view = node.state_here(&r.entity_type, &r.entity_id).await?;
            return Ok(Served::State(r.entity_type, r.entity_id, view));
        };
        let inv = Invocation {
            entity_type: r.entity_type,
            entity_id: r.entity_id,
            command,
            body: msg.payload.to_vec(),
            format: r.format,
            idempotency_key: r.idempotency_key,
        };
        Ok(Served::Command(node.invoke_here(inv).await?))
    }
    .await;
    let format = named(h, &names::ACCEPT).and_then(Format::from_content_type).unwrap_or(format);
    let internal = |e: String| Reply::error(&InvokeError::Internal(e), format);
    match result {
        Ok(Served::State(entity_type, entity_id, view)) => {
            let seq = view.seq;
            let body = crate::inspect::state_body(entity_type, entity_id, view);
            match codec::encode(&body, format) {
                Ok(body) => {
                    let mut out = HeaderMap::new();
                    out.insert(names::SEQ.clone(), seq.to_string());
                    Reply::ok(format, out, body)
                }
                Err(e) => internal(e.to_string()),
            }
        }
        Ok(Served::Command(r)) => match codec::transcode_msgpack(&r.reply, format) {
            Ok(body) => {
                let mut out = HeaderMap::new();
                out.insert(names::SEQ.clone(), r.seq.to_string());
                out.insert(names::INVOCATION_ID.clone(), r.invocation_id);
                if r.deduplicated {
                    out.insert(names::DEDUPLICATED.clone(), "true");
                }
                Reply::ok(format, out, body)
            }
            Err(e) => internal(e.to_string()),
        },
        Err(e) => Reply::error(&e, format),
    }
}

async fn call(node: &Node, link: &NatsLink, msg: Message) {
    let span = super::request::span("call", msg.headers.as_ref());
    serve_call(node, link, msg).instrument(span).await
}

async fn serve_call(node: &Node, link: &NatsLink, msg: Message) {
    let reply = msg.reply.as_ref();
    let h = msg.headers.as_ref();
    let format = match contract::content_format(named(h, &names::CONTENT_TYPE)) {
        Ok(f) => f,
        Err(e) => return respond_error(link, reply, &e, Format::Json).await,
    };
    let name =
        msg.subject.as_str().strip_prefix(&format!("{}.call.", link.subjects.prefix())).unwrap_or_default().to_owned();
    // The reply in the caller's `Accept` format, else in the request's.
    let reply_format = named(h, &names::ACCEPT).and_then(Format::from_content_type).unwrap_or(format);
    let id = named(h, &names::INVOCATION_ID).map_or_else(crate::node::new_invocation_id, str::to_owned);
    let result = match contract::body_size(msg.payload.len(), node.config().http.max_body_bytes) {
        Err(e) => Err(e),
        Ok(()) => node.call_function_as(&name, &msg.payload, format, id).await,
    };
    match result
        .and_then(|out| codec::transcode_msgpack(&out, reply_format).map_err(|e| InvokeError::Internal(e.to_string())))
    {
        Ok(body) => {
            let mut out = HeaderMap::new();
            out.insert(wire::CONTENT_TYPE, reply_format.content_type());
            respond(link, reply, 200, out, body).await;
        }
        Err(e) => respond_error(link, reply, &e, reply_format).await,
    }
}

async fn invoke_async(node: &Node, link: &NatsLink, msg: jetstream::Message, max_deliver: i64) {
    let (delivered, stream_seq) = match msg.info() {
        Ok(i) => (i.delivered, i.stream_sequence),
        Err(e) => {
            tracing::warn!(error = %e, "async invocation without JetStream info");
            return;
        }
    };
    let h = msg.headers.as_ref();
    let name = msg
        .subject
        .as_str()
        .strip_prefix(&format!("{}.invoke.", link.subjects.prefix()))
        .unwrap_or_default()
        .to_owned();
    let id = named(h, &names::INVOCATION_ID)
        .or_else(|| header(h, wire::NATS_MSG_ID))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("js-{stream_seq}"));
    let last = max_deliver > 0 && delivered >= max_deliver;
    let request_id = header(h, wire::REQUEST_ID);
    // The same contract as a call over HTTP; a call that breaks it gets a
    // final error row (there is nobody to answer) and is not run.
    let checked = contract::content_format(named(h, &names::CONTENT_TYPE)).and_then(|format| {
        contract::idempotency_key(Some(&id))?;
        contract::body_size(msg.payload.len(), node.config().http.max_body_bytes)?;
        Ok(format)
    });
    let decision = match checked {
        Ok(format) => {
            let trace = header(h, crate::telemetry::TRACEPARENT);
            let call = AsyncCall { id: &id, function: &name, body: &msg.payload, format, request_id, trace };
            node.run_async(call, delivered.max(1) as u32, last).await
        }
        Err(e) => node.refuse_async(&id, &name, &e).await,
    };
    let ack = match decision {
        AsyncDecision::Ack => msg.double_ack().await,
        AsyncDecision::Retry(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
    };
    if let Err(e) = ack {
        tracing::warn!(invocation = %id, error = %e, "cannot acknowledge async invocation; it will be redelivered");
    }
}
