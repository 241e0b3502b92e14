//! The ractor glue of a shard: hands each message to the [`Machine`] and
//! runs the IO it asks for in spawned tasks, whose outcomes come back as
//! messages (the actor never awaits the journal).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use futures::TryStreamExt;
use tessera_journal::{AppendAck, AppendError, EntityKey};

use super::machine::{Io, Machine, Work};
use super::{Committed, ShardContext, ShardMsg, activation};
use crate::envelope::EventMeta;
use crate::error::InvokeError;
use crate::now_ms;

/// The shard actor's behaviour (its state is the [`Machine`]).
pub(crate) struct ShardActor;

/// How often a shard checks for idle entities.
pub(crate) fn tick_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = Machine;
    type Arguments = (u32, Arc<ShardContext>);

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        (shard, ctx): (u32, Arc<ShardContext>),
    ) -> Result<Machine, ActorProcessingErr> {
        let period = tick_period(ctx.idle_timeout);
        let idle_ticks = (ctx.idle_timeout.as_millis() / period.as_millis().max(1)).max(1) as u32;
        myself.send_interval(period, || ShardMsg::Tick);
        Ok(Machine::new(shard, ctx, idle_ticks))
    }

    async fn post_stop(&self, _: ActorRef<ShardMsg>, m: &mut Machine) -> Result<(), ActorProcessingErr> {
        m.stop();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        m: &mut Machine,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match msg {
            ShardMsg::Command(c) => {
                let (key, entity) = (c.key.clone(), c.entity.clone());
                m.enqueue(key, entity, Work::Command(c), now);
            }
            ShardMsg::State(s) => {
                let (key, entity) = (s.key.clone(), s.entity.clone());
                m.enqueue(key, entity, Work::State(s), now);
            }
            ShardMsg::Delete(d) => {
                let (key, entity) = (d.key.clone(), d.entity.clone());
                m.enqueue(key, entity, Work::Delete(d), now);
            }
            ShardMsg::Purge(p) => {
                let (key, entity) = (p.key.clone(), p.entity.clone());
                m.enqueue(key, entity, Work::Purge(p), now);
            }
            ShardMsg::Purged { key } => m.purged(&key),
            ShardMsg::Activated { key, incarnation, result } => m.activated(key, incarnation, result, now),
            ShardMsg::Appended { key, incarnation, result } => m.appended(key, incarnation, result, now),
            ShardMsg::Journaled { key, incarnation, result, flow } => {
                if let Some(result) = journaled(&m.ctx, &myself, m.shard, &key, incarnation, result, flow) {
                    m.appended(key, incarnation, result, now);
                }
            }
            ShardMsg::Release { entity_type, force, reply } => {
                let _ = reply.send(m.release(&entity_type, force));
            }
            ShardMsg::Acquire { entity_type } => m.acquire(&entity_type),
            ShardMsg::Tick => m.tick(),
        }
        // Appends the journal completes at their first poll (the memory
        // journal's) are applied here, without a task and a message each;
        // applying one may start the entity's next.
        loop {
            let done: Vec<Appended> =
                m.take_io().into_iter().filter_map(|io| run(io, &myself, &m.ctx, m.shard)).collect();
            if done.is_empty() {
                break;
            }
            let now = now_ms();
            for Appended { key, incarnation, result } in done {
                m.appended(key, incarnation, result, now);
            }
        }
        Ok(())
    }
}

/// An append's outcome, for [`Machine::appended`].
struct Appended {
    key: EntityKey,
    incarnation: u64,
    result: Result<Committed, InvokeError>,
}

/// Runs one IO request in its own task; an append the journal completes at
/// once is returned instead.
fn run(io: Io, me: &ActorRef<ShardMsg>, ctx: &Arc<ShardContext>, shard: u32) -> Option<Appended> {
    let (ctx, me) = (ctx.clone(), me.clone());
    match io {
        Io::Activate { key, entity, incarnation, fence } => {
            let span = tracing::debug_span!("activate", entity = %key, shard);
            tokio::spawn(
                async move {
                    ctx.metrics.journal_in_flight.inc();
                    let raised = match fence {
                        Some(epoch) => ctx.journal.raise_fence(&key, epoch).await.map_err(InvokeError::from),
                        None => Ok(()),
                    };
                    let result = match raised {
                        Ok(()) => {
                            activation::rebuild(&entity, &ctx.journal, &key, activation::Replay::Latest, ctx.dedup)
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    ctx.metrics.journal_in_flight.dec();
                    if let Err(e) = &result {
                        tracing::warn!(entity = %key, error = %e, "activation failed");
                    }
                    let _ = me.send_message(ShardMsg::Activated { key, incarnation, result });
                }
                .instrument(span),
            );
        }
        Io::Append { key, incarnation, request, epoch, span } => {
            let request = match prepare(&ctx, &key, request, epoch, shard) {
                Ok(r) => r,
                Err(e) => return Some(Appended { key, incarnation, result: Err(e) }),
            };
            let flow = request.events.iter().any(|e| crate::flow::is_internal(&e.type_name));
            ctx.metrics.journal_in_flight.inc();
            // A journal with a writer thread of its own answers there: its
            // answer comes back as a message, without a task per append.
            let (me2, key2) = (me.clone(), key.clone());
            let done: tessera_journal::AppendDone = Box::new(move |result| {
                let _ = me2.send_message(ShardMsg::Journaled { key: key2, incarnation, result, flow });
            });
            let (request, _) = ctx.journal.commit_then(&key, request, done)?;
            let mut commit = Box::pin(append(ctx, key.clone(), request, flow, shard).instrument(span));
            // One poll here: the memory journal answers at once, the others
            // have sent the append on (to the server) and are finished in a
            // task, which polls with its own waker.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(result) = commit.as_mut().poll(&mut cx) {
                return Some(Appended { key, incarnation, result });
            }
            tokio::spawn(async move {
                let result = commit.await;
                let _ = me.send_message(ShardMsg::Appended { key, incarnation, result });
            });
        }
        Io::Purge(p) => {
            tokio::spawn(async move {
                let result = purge_if_tombstoned(&ctx, &p.key, p.seq).await;
                match &result {
                    Ok(true) => {
                        ctx.metrics.purges.inc();
                        tracing::info!(entity = %p.key, "deleted entity purged");
                    }
                    Ok(false) => tracing::debug!(entity = %p.key, seq = p.seq, "nothing to purge (purged already)"),
                    Err(e) => tracing::warn!(entity = %p.key, error = %e, "purge failed; it is tried again"),
                }
                let _ = me.send_message(ShardMsg::Purged { key: p.key });
                let _ = p.reply.send(result);
            });
        }
        Io::Snapshot { key, snapshot } => {
            tokio::spawn(async move {
                match ctx.journal.save_snapshot(&key, snapshot).await {
                    Ok(()) => ctx.metrics.snapshots.inc(),
                    Err(e) => tracing::warn!(entity = %key, error = %e, "snapshot not saved"),
                }
            });
        }
    }
    None
}

/// Readies an append for the journal: the fence checked again right
/// before the commit (the lease may have lapsed while the command waited),
/// and the lease handed to the journal to ask again right before it writes.
fn prepare(
    ctx: &ShardContext,
    key: &EntityKey,
    request: tessera_journal::AppendRequest,
    epoch: Option<u64>,
    shard: u32,
) -> Result<tessera_journal::AppendRequest, InvokeError> {
    if let Some(f) = &ctx.fence
        && f.fence(&key.entity_type, shard) != epoch
    {
        return Err(InvokeError::ShardMoved(format!(
            "the lease of {}/{shard} lapsed before the commit; nothing was written",
            key.entity_type
        )));
    }
    Ok(match (&ctx.fence, epoch) {
        // The lease, asked again by the journal right before
        // the commit is sent (after what it writes ahead of it).
        (Some(f), Some(e)) => {
            let (f, t) = (f.clone(), key.entity_type.clone());
            request.with_lease(Arc::new(move || f.fence(&t, shard) == Some(e)))
        }
        _ => request,
    })
}

/// Commits one prepared append (counted in flight by the caller).
async fn append(
    ctx: Arc<ShardContext>,
    key: EntityKey,
    request: tessera_journal::AppendRequest,
    flow: bool,
    shard: u32,
) -> Result<Committed, InvokeError> {
    let result = match ctx.journal.commit(&key, request).await {
        Ok(ack) => Ok(ack),
        Err(AppendError::Duplicate { key: k, seq, .. }) => {
            let result = remembered(&ctx, &key, k, seq).await;
            ctx.metrics.journal_in_flight.dec();
            return result;
        }
        Err(e) => Err(e),
    };
    after_commit(&ctx, &key, shard, result, flow)
}

/// What follows a commit that needs no read: the commit hook told of what
/// was written, the append no longer in flight.
fn after_commit(
    ctx: &ShardContext,
    key: &EntityKey,
    shard: u32,
    result: Result<AppendAck, AppendError>,
    flow: bool,
) -> Result<Committed, InvokeError> {
    ctx.metrics.journal_in_flight.dec();
    match result {
        Ok(ack) => {
            if let Some(hook) = &ctx.on_commit {
                hook(&key.entity_type, shard, flow);
            }
            Ok(Committed::Appended(ack))
        }
        Err(e) => Err(InvokeError::from(e)),
    }
}

/// [`append`]'s end for an append the journal answered by message
/// ([`ShardMsg::Journaled`]): the outcome, or `None` for a duplicate,
/// whose original reply is read in a task that sends it on.
fn journaled(
    ctx: &Arc<ShardContext>,
    me: &ActorRef<ShardMsg>,
    shard: u32,
    key: &EntityKey,
    incarnation: u64,
    result: Result<AppendAck, AppendError>,
    flow: bool,
) -> Option<Result<Committed, InvokeError>> {
    if let Err(AppendError::Duplicate { key: k, seq, .. }) = result {
        let (ctx, me, key) = (ctx.clone(), me.clone(), key.clone());
        tokio::spawn(async move {
            let result = remembered(&ctx, &key, k, seq).await;
            ctx.metrics.journal_in_flight.dec();
            let _ = me.send_message(ShardMsg::Appended { key, incarnation, result });
        });
        return None;
    }
    Some(after_commit(ctx, key, shard, result, flow))
}

/// Purges the entity's journal when its last event is the tombstone at
/// `seq`; `false` when it is not (purged already, or a new life began).
async fn purge_if_tombstoned(ctx: &ShardContext, key: &EntityKey, seq: u64) -> Result<bool, InvokeError> {
    if ctx.journal.last_seq(key).await? != seq {
        return Ok(false);
    }
    let last: Vec<_> = ctx.journal.read(key, seq..=seq).try_collect().await?;
    if last.first().is_none_or(|e| e.type_name != crate::flow::DELETED) {
        return Ok(false);
    }
    ctx.journal.purge(key).await?;
    Ok(true)
}

/// The reply of the invocation that committed key `k` at `seq` (the event
/// the key names, its invocation's last, carries it in its metadata).
async fn remembered(ctx: &ShardContext, key: &EntityKey, k: String, seq: u64) -> Result<Committed, InvokeError> {
    let events: Vec<_> = ctx.journal.read(key, seq..=seq).try_collect().await?;
    let reply = events.first().and_then(|e| EventMeta::decode(&e.metadata).reply);
    match reply {
        Some(reply) => Ok(Committed::Remembered { key: k, seq, reply }),
        None => Err(InvokeError::Internal(format!(
            "{key}: the idempotency key was committed at seq {seq}, but that event holds no reply"
        ))),
    }
}
