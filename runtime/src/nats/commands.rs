//! Async entity commands from JetStream, consumed by each unit's owner.
//!
//! Commands wait on `{p}.acmd.{type}.{group}.{shard}` in the work-queue stream
//! `{P}_COMMANDS` (de-duplicated by `Nats-Msg-Id`, the invocation id). The
//! shards of a type are split into `G` groups (shard mod G, `G` =
//! `nats.command_groups`, 64 by default): one durable consumer per group
//! (`{p}.acmd.{type}.{g}.*`: one filter, cheap for the server), pulled by the owner of the group's
//! first unit (type, g), with one pull request waiting server-side while
//! idle. So consumers follow shard ownership, and a stream holds
//! `types × G` consumers, not one per unit (JetStream limits consumers per
//! stream). A command of a unit the puller
//! does not own is forwarded to its owner, one at a time per entity.
//!
//! Order: a puller takes a batch, runs each entity's commands one after
//! another (entities in parallel), and fetches the next batch only when the
//! batch is done, so no two commands of an entity are ever in flight. A
//! command that must be retried is nak'ed with the entity's later commands
//! of the batch, and JetStream redelivers nak'ed messages before new ones.
//! A puller that stops (the unit moved) naks what it has not run. After a
//! crash, what the dead owner had fetched comes back after the ack wait:
//! the next owner waits that long before its first fetch when the consumer
//! has unacknowledged messages, so they are not overtaken.
//!
//! Exactly once: the invocation id is the command's idempotency key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;

use super::NatsLink;
use crate::contract;
use crate::node::{AsyncDecision, Node, QueuedCommand};
use crate::wire;

/// Most commands a puller takes at once.
const BATCH: usize = 256;

type Unit = (String, u32);

/// Starts the manager: it keeps a puller running for every group this
/// node leads; it runs until aborted.
pub(crate) fn start(node: Node, link: NatsLink, ack_wait: Duration, max_deliver: i64) -> tokio::task::JoinHandle<()> {
    let groups = node.config().nats.command_groups.clamp(1, node.config().journal.shards);
    tokio::spawn(async move {
        let pulling: Arc<Mutex<HashSet<Unit>>> = Arc::default();
        let types: Vec<String> = node.registry().entities().map(|e| e.type_name().to_owned()).collect();
        // The pullers end with the manager (a JoinSet aborts its tasks when
        // dropped): a stopped node takes no more batches.
        let mut pullers = tokio::task::JoinSet::new();
        loop {
            while pullers.try_join_next().is_some() {}
            for t in &types {
                for g in 0..groups {
                    let unit = (t.clone(), g);
                    if !node.serves(t, g) || !pulling.lock().unwrap_or_else(|p| p.into_inner()).insert(unit.clone()) {
                        continue;
                    }
                    let (node, link, pulling) = (node.clone(), link.clone(), pulling.clone());
                    pullers.spawn(async move {
                        if let Err(e) = pull(&node, &link, &unit, ack_wait, max_deliver).await {
                            tracing::warn!(entity_type = %unit.0, group = unit.1, error = %e, "async command puller stopped");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        pulling.lock().unwrap_or_else(|p| p.into_inner()).remove(&unit);
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// (type, shard) of `{p}.acmd.{type}.{group}.{shard}`.
fn parse_subject(link: &NatsLink, subject: &str) -> Option<Unit> {
    let rest = subject.strip_prefix(link.subjects.prefix())?.strip_prefix(".acmd.")?;
    let (rest, shard) = rest.rsplit_once('.')?;
    let (t, _group) = rest.rsplit_once('.')?;
    Some((t.to_owned(), shard.parse().ok()?))
}

/// Pulls one group's consumer (`unit` is its leader: the type and the
/// group) while this node serves the leader unit and it has messages.
async fn pull(
    node: &Node,
    link: &NatsLink,
    unit: &Unit,
    ack_wait: Duration,
    max_deliver: i64,
) -> Result<(), async_nats::Error> {
    let name = link.subjects.command_consumer(&unit.0, unit.1);
    let stream = link.js.get_stream(link.subjects.commands_stream()).await?;
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: link.subjects.entity_command_group(&unit.0, unit.1),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                inactive_threshold: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .await?;
    // A previous owner's fetched-but-unacknowledged commands come back after
    // the ack wait: let them, so they are not overtaken by newer ones.
    let pending = consumer.info().await?.num_ack_pending;
    if pending > 0 {
        tracing::info!(entity_type = %unit.0, group = unit.1, pending, "commands a previous puller took are unacknowledged: waiting for their redelivery");
        tokio::time::sleep(ack_wait).await;
    }
    // Wait (server side) for one command, then take what else is there at
    // once: no prefetching — a batch is run before the next is taken, which
    // keeps per-entity order.
    while node.serves(&unit.0, unit.1) {
        let mut first = consumer.batch().max_messages(1).expires(Duration::from_secs(2)).messages().await?;
        let mut msgs = Vec::new();
        while let Some(m) = first.next().await {
            msgs.push(m?);
        }
        if msgs.is_empty() {
            continue;
        }
        let mut rest = consumer.fetch().max_messages(BATCH - 1).messages().await?;
        while let Some(m) = rest.next().await {
            msgs.push(m?);
        }
        run_batch(node, link, unit, msgs, max_deliver).await;
    }
    Ok(())
}

/// Runs a batch: per entity in order, entities in parallel.
async fn run_batch(node: &Node, link: &NatsLink, unit: &Unit, msgs: Vec<jetstream::Message>, max_deliver: i64) {
    let mut by_entity: HashMap<String, Vec<jetstream::Message>> = HashMap::new();
    let mut order = Vec::new();
    for m in msgs {
        let id =
            m.headers.as_ref().and_then(|h| h.get(wire::ENTITY)).map(|v| v.as_str().to_owned()).unwrap_or_default();
        if !by_entity.contains_key(&id) {
            order.push(id.clone());
        }
        by_entity.entry(id).or_default().push(m);
    }
    let tasks = order.into_iter().filter_map(|id| by_entity.remove(&id)).map(|msgs| {
        let (node, link, unit) = (node.clone(), link.clone(), unit.clone());
        tokio::spawn(async move { run_entity(&node, &link, &unit, msgs, max_deliver).await })
    });
    for t in tasks.collect::<Vec<_>>() {
        let _ = t.await;
    }
}

async fn run_entity(node: &Node, link: &NatsLink, unit: &Unit, msgs: Vec<jetstream::Message>, max_deliver: i64) {
    let mut msgs = msgs.into_iter();
    while let Some(m) = msgs.next() {
        let decision = match decode(node, link, unit, &m) {
            Ok(Decoded::Command(cmd, delivered)) => {
                let last = max_deliver > 0 && delivered >= max_deliver;
                if node.serves(&unit.0, unit.1) {
                    node.run_async_command(&cmd, delivered.max(1) as u32, last).await
                } else {
                    AsyncDecision::Retry(Duration::ZERO)
                }
            }
            Ok(Decoded::Refused(id, e)) => {
                // Nobody to answer: the error goes in the invocation's row.
                node.refuse_queued(&id, format!("entity:{}/?", unit.0), &e).await
            }
            Err(e) => {
                tracing::warn!(subject = %m.subject, error = %e, "async command without JetStream info dropped");
                AsyncDecision::Ack
            }
        };
        match decision {
            AsyncDecision::Ack => {
                if let Err(e) = m.double_ack().await {
                    tracing::warn!(error = %e, "cannot acknowledge an async command; it will be redelivered");
                }
            }
            AsyncDecision::Retry(delay) => {
                // This one and the entity's later ones go back, in order.
                let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                for later in msgs.by_ref() {
                    let _ = later.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
    }
}

enum Decoded {
    Command(QueuedCommand, i64),
    /// Breaks the contract: (invocation id, why).
    Refused(String, crate::error::InvokeError),
}

fn decode(node: &Node, link: &NatsLink, unit: &Unit, m: &jetstream::Message) -> Result<Decoded, String> {
    let info = m.info().map_err(|e| e.to_string())?;
    let h = m.headers.as_ref();
    let header = |name: &str| h.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    let id = header(wire::INVOCATION_ID)
        .or_else(|| header(wire::NATS_MSG_ID))
        .unwrap_or_else(|| format!("js-{}-{}", link.subjects.prefix(), info.stream_sequence));
    let delivered = info.delivered;
    Ok(match check(node, link, unit, m, &id, header) {
        Ok(cmd) => Decoded::Command(cmd, delivered),
        Err(e) => Decoded::Refused(id, e),
    })
}

fn check(
    node: &Node,
    link: &NatsLink,
    unit: &Unit,
    m: &jetstream::Message,
    id: &str,
    header: impl Fn(&str) -> Option<String>,
) -> Result<QueuedCommand, crate::error::InvokeError> {
    use crate::error::InvokeError;
    contract::idempotency_key(Some(id))?;
    let format = contract::content_format(header(wire::CONTENT_TYPE).as_deref())?;
    let entity_id = header(wire::ENTITY).ok_or_else(|| InvokeError::Malformed(format!("missing {}", wire::ENTITY)))?;
    let command = header(wire::COMMAND).ok_or_else(|| InvokeError::Malformed(format!("missing {}", wire::COMMAND)))?;
    contract::body_size(m.payload.len(), node.config().http.max_body_bytes)?;
    let shard = tessera_journal::shard_of(&unit.0, &entity_id, node.config().journal.shards);
    let published = parse_subject(link, m.subject.as_str()).map(|u| u.1);
    if published != Some(shard) {
        return Err(InvokeError::Misdirected(format!(
            "{}/{entity_id} is in shard {shard}, not the one of {}: publish it to {}",
            unit.0,
            m.subject,
            link.subjects.entity_command(&unit.0, shard, node.config().nats.command_groups)
        )));
    }
    Ok(QueuedCommand {
        id: id.to_owned(),
        entity_type: unit.0.clone(),
        entity_id,
        command,
        body: m.payload.to_vec(),
        format,
        trace: header(crate::telemetry::TRACEPARENT),
    })
}
