//! The shard coordinator: one task per node that heartbeats, renews the
//! leases it holds, takes orphaned shards, hands shards off when the plan
//! says so and on leave, and drops shards whose lease it can no longer prove.
//! What "serving a shard" means is the runtime's business, behind
//! [`ShardHost`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::allocation::plan_grouped;
use crate::ownership::{Ownership, Unit, deadline};
use crate::store::{ClusterStore, LeaseState, LeaseValue, MemberInfo, member_key, now_ms, valid_name};
use crate::view::View;
use crate::{ClusterConfig, ClusterError};

/// What the runtime does when this node gains or gives up a shard. The
/// coordinator updates the [`Ownership`] fence around these calls.
#[async_trait::async_trait]
pub trait ShardHost: Send + Sync + 'static {
    /// The lease of `unit` was just acquired under `epoch`: drop anything
    /// cached for it (another node may have written since) and start
    /// receiving its commands. New work is accepted once this returns.
    async fn acquired(&self, unit: &Unit, epoch: u64);
    /// Graceful hand-off: new work is already refused; finish in-flight work
    /// (the fence stays open until this returns, or the drain timeout) and
    /// passivate the unit's entities.
    async fn release(&self, unit: &Unit);
    /// The lease is gone (not renewed in time, or taken): the fence is
    /// already closed; stop receiving commands and forget cached state.
    async fn lost(&self, unit: &Unit);
}

struct Held {
    epoch: u64,
    revision: u64,
    state: LeaseState,
    since_ms: i64,
}

impl Held {
    /// The lease's value as `owner` writes it.
    fn value(&self, owner: &str) -> LeaseValue {
        LeaseValue { owner: owner.to_owned(), epoch: self.epoch, state: self.state, since_ms: self.since_ms }
    }
}

struct Inner {
    config: ClusterConfig,
    store: ClusterStore,
    view: View,
    ownership: Arc<Ownership>,
    host: Arc<dyn ShardHost>,
    started_ms: i64,
    draining: AtomicBool,
    /// Set once this node first held its share of the shards (latched: a
    /// failover that hands it more shards does not make it unready).
    ready: AtomicBool,
    left: Notify,
    stopped: AtomicBool,
}

/// A node's membership in the cluster. Dropping it does not leave: call
/// [`Cluster::leave`] for a graceful hand-off (a crash is handled by expiry).
pub struct Cluster {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Joins: opens the bucket, checks the cluster agrees on the shard
    /// count, heartbeats, and starts taking shards.
    pub async fn join(
        js: &jetstream::Context,
        config: ClusterConfig,
        ownership: Arc<Ownership>,
        host: Arc<dyn ShardHost>,
    ) -> Result<Self, ClusterError> {
        for name in std::iter::once(&config.node_id).chain(ownership.types()) {
            if !valid_name(name) {
                return Err(ClusterError::InvalidName(name.clone()));
            }
        }
        let store = ClusterStore::open(js, &config.prefix, config.lease_ttl).await?;
        let serves_entities = config.roles.entities();
        let (view, watch) = View::start(&store);
        let me = &config.node_id;
        for e in store.snapshot().await? {
            if let crate::store::Value::Member(m) = e.value
                && m.shards != ownership.shards()
                && &m.node_id != me
            {
                watch.abort();
                return Err(ClusterError::Incompatible(format!(
                    "member {} runs {} shards, this node {}; the shard count is fixed for a cluster's life",
                    m.node_id,
                    m.shards,
                    ownership.shards()
                )));
            }
        }
        let inner = Arc::new(Inner {
            config,
            store,
            view,
            ownership,
            host,
            started_ms: now_ms(),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(!serves_entities),
            left: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        inner.heartbeat(0).await?;
        let run = tokio::spawn(inner.clone().run());
        tracing::info!(node = %inner.config.node_id, bucket = inner.store.bucket(), "joined the cluster");
        Ok(Self { inner, tasks: vec![watch, run] })
    }

    /// The ownership table (the fence).
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.inner.ownership
    }

    /// The bucket.
    pub fn store(&self) -> &ClusterStore {
        &self.inner.store
    }

    /// The watched view of the bucket (cheap to clone).
    pub fn view(&self) -> crate::view::View {
        self.inner.view.clone()
    }

    /// Live members as this node sees them.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.view.members()
    }

    /// The current holder of a unit's lease, its epoch, and whether it is handing off.
    pub fn owner_of(&self, unit: &Unit) -> Option<(String, u64, LeaseState)> {
        self.inner.view.holder(&unit.key())
    }

    /// Whether this node is ready for traffic: it joined and, if it serves
    /// entities, held its share of the shards once; not while leaving.
    pub fn ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// [`Cluster::ready`] as a check that outlives this handle's borrow.
    pub fn readiness(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let i = self.inner.clone();
        Arc::new(move || i.is_ready())
    }

    /// Leaves gracefully: takes no new shards, hands every held shard off
    /// (drain, passivate, release), then removes the heartbeat. Bounded by
    /// the drain timeout plus one TTL.
    pub async fn leave(&self) {
        let i = &self.inner;
        let wait = i.left.notified();
        if i.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(node = %i.config.node_id, held = i.ownership.held(), "leaving the cluster: handing shards off");
        let _ = tokio::time::timeout(i.config.drain_timeout + i.config.lease_ttl, wait).await;
        i.stopped.store(true, Ordering::Release);
        if let Err(e) = i.store.leave(&i.config.node_id).await {
            tracing::warn!(error = %e, "cannot remove the heartbeat; it expires by itself");
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    fn me(&self) -> &str {
        &self.config.node_id
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    async fn heartbeat(&self, leases: usize) -> Result<(), ClusterError> {
        let info = MemberInfo {
            node_id: self.config.node_id.clone(),
            http: self.config.http.clone(),
            shards: self.ownership.shards(),
            entity_types: self.ownership.types().to_vec(),
            started_ms: self.started_ms,
            heartbeat_ms: now_ms(),
            draining: self.draining.load(Ordering::Acquire),
            leases,
            roles: self.config.roles.names(),
        };
        self.store.heartbeat(&info).await
    }

    async fn run(self: Arc<Self>) {
        let mut held: HashMap<Unit, Held> = HashMap::new();
        let (drained_tx, mut drained_rx) = mpsc::unbounded_channel::<Unit>();
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut last_renew, mut last_rebalance, joined) = (Instant::now(), Instant::now(), Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(unit) = drained_rx.recv() => {
                    self.finish_release(&mut held, &unit).await;
                    continue;
                }
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            self.drop_expired(&mut held).await;
            if last_renew.elapsed() >= self.config.renew_every() {
                last_renew = Instant::now();
                self.renew(&mut held).await;
                if let Err(e) = self.heartbeat(held.len()).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            if self.draining.load(Ordering::Acquire) {
                for unit in self.owned(&held) {
                    self.start_release(&mut held, unit, &drained_tx).await;
                }
                if held.is_empty() {
                    self.left.notify_waiters();
                }
                continue;
            }
            // Take shards only once this node's own heartbeat came back
            // through the watch (so members that joined before are visible)
            // and a couple of ticks passed (nodes started together see each
            // other instead of all grabbing everything).
            if joined.elapsed() < self.config.tick * 2 || self.view.get(&member_key(self.me())).is_none() {
                continue;
            }
            // A node without the entities role is a member without shards.
            if !self.config.roles.entities() {
                continue;
            }
            let rebalance = last_rebalance.elapsed() >= self.config.rebalance_every;
            if rebalance {
                last_rebalance = Instant::now();
            }
            self.allocate(&mut held, rebalance, &drained_tx).await;
        }
    }

    fn owned(&self, held: &HashMap<Unit, Held>) -> Vec<Unit> {
        let mut v: Vec<Unit> =
            held.iter().filter(|(_, h)| h.state == LeaseState::Owned).map(|(u, _)| u.clone()).collect();
        v.sort();
        v
    }

    /// Leases whose local deadline passed (renewals failed: NATS unreachable).
    async fn drop_expired(&self, held: &mut HashMap<Unit, Held>) {
        for unit in self.ownership.expired() {
            tracing::warn!(%unit, "lease not renewed in time; this node stops serving the shard");
            self.ownership.drop_unit(&unit);
            held.remove(&unit);
            self.host.lost(&unit).await;
        }
    }

    async fn renew(&self, held: &mut HashMap<Unit, Held>) {
        let ttl = self.config.lease_ttl;
        let jobs: Vec<(Unit, LeaseValue, u64)> =
            held.iter().map(|(u, h)| (u.clone(), h.value(self.me()), h.revision)).collect();
        let results: Vec<(Unit, Instant, Result<u64, ClusterError>)> = futures::stream::iter(jobs)
            .map(|(u, v, rev)| async move {
                let sent = Instant::now();
                let r = self.store.update(&u.key(), &v, rev).await;
                (u, sent, r)
            })
            .buffer_unordered(128)
            .collect()
            .await;
        for (unit, sent, r) in results {
            match r {
                Ok(rev) => {
                    if let Some(h) = held.get_mut(&unit) {
                        h.revision = rev;
                    }
                    self.ownership.extend(&unit, deadline(sent, ttl));
                }
                Err(ClusterError::Conflict { .. }) => {
                    tracing::warn!(%unit, "lease taken by another node; this node stops serving the shard");
                    self.ownership.drop_unit(&unit);
                    held.remove(&unit);
                    self.host.lost(&unit).await;
                }
                Err(e) => tracing::warn!(%unit, error = %e, "lease renewal failed; will retry until its deadline"),
            }
        }
    }

    async fn allocate(&self, held: &mut HashMap<Unit, Held>, rebalance: bool, drained: &mpsc::UnboundedSender<Unit>) {
        let me = self.me().to_owned();
        let mut live: Vec<String> = self
            .view
            .members()
            .into_iter()
            .filter(|m| !m.draining && crate::Roles::from_names(&m.roles).entities())
            .map(|m| m.node_id)
            .collect();
        if !live.contains(&me) {
            live.push(me.clone());
        }
        live.sort();
        let units = self.ownership.units();
        let mut in_progress = 0;
        let owners: Vec<Option<String>> = units
            .iter()
            .map(|u| {
                if held.contains_key(u) {
                    return Some(me.clone());
                }
                let holder = self.view.holder(&u.key());
                if holder.as_ref().is_none_or(|(_, _, s)| *s == LeaseState::Releasing) {
                    in_progress += 1;
                }
                holder.map(|(o, _, _)| o)
            })
            .collect();
        // The cap is cluster-wide: moves still in progress (shards handing
        // off or not yet taken) count against it, so nodes that plan in
        // the same round cannot together exceed it.
        let cap = if rebalance { self.config.max_moves_per_round.saturating_sub(in_progress) } else { 0 };
        if !self.ready.load(Ordering::Relaxed) && crate::allocation::holds_its_share(&owners, &live, &me) {
            tracing::info!(node = %me, held = held.len(), "holding its share of the shards: ready");
            self.ready.store(true, Ordering::Release);
        }
        let moves = plan_grouped(&owners, &live, cap, self.ownership.shards() as usize);
        let mut take = Vec::new();
        for m in moves {
            let unit = &units[m.shard as usize];
            if m.to == me && m.from.is_none() && !held.contains_key(unit) && self.view.get(&unit.key()).is_none() {
                take.push(unit.clone());
            } else if m.from.as_deref() == Some(me.as_str()) && m.to != me {
                tracing::info!(%unit, to = %m.to, "rebalancing: handing the shard off");
                self.start_release(held, unit.clone(), drained).await;
            }
        }
        if take.is_empty() {
            return;
        }
        let acquired: Vec<(Unit, Result<Option<Held>, ClusterError>, Instant)> = futures::stream::iter(take)
            .map(|u| async move {
                let sent = Instant::now();
                let r = self.acquire(&u).await;
                (u, r, sent)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (unit, r, sent) in acquired {
            match r {
                Ok(Some(h)) => {
                    let epoch = h.epoch;
                    self.ownership.hold(&unit, epoch, deadline(sent, self.config.lease_ttl), false);
                    held.insert(unit.clone(), h);
                    self.host.acquired(&unit, epoch).await;
                    self.ownership.hold(&unit, epoch, deadline(sent, self.config.lease_ttl), true);
                    tracing::debug!(%unit, epoch, "shard acquired");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%unit, error = %e, "cannot acquire the shard lease"),
            }
        }
    }

    /// Creates the lease, then writes its epoch (the create's revision) into it.
    async fn acquire(&self, unit: &Unit) -> Result<Option<Held>, ClusterError> {
        let key = unit.key();
        let since_ms = now_ms();
        let mut v = LeaseValue { owner: self.me().to_owned(), epoch: 0, state: LeaseState::Owned, since_ms };
        let Some(epoch) = self.store.create(&key, &v).await? else { return Ok(None) };
        v.epoch = epoch;
        let revision = self.store.update(&key, &v, epoch).await?;
        Ok(Some(Held { epoch, revision, state: LeaseState::Owned, since_ms }))
    }

    async fn start_release(&self, held: &mut HashMap<Unit, Held>, unit: Unit, drained: &mpsc::UnboundedSender<Unit>) {
        let Some(h) = held.get_mut(&unit) else { return };
        if h.state == LeaseState::Releasing {
            return;
        }
        h.state = LeaseState::Releasing;
        self.ownership.stop_accepting(&unit);
        match self.store.update(&unit.key(), &h.value(self.me()), h.revision).await {
            Ok(rev) => h.revision = rev,
            Err(e) => tracing::debug!(%unit, error = %e, "cannot mark the lease as releasing"),
        }
        let (host, tx, timeout) = (self.host.clone(), drained.clone(), self.config.drain_timeout);
        tokio::spawn(async move {
            if tokio::time::timeout(timeout, host.release(&unit)).await.is_err() {
                tracing::warn!(%unit, "drain timed out; releasing the shard anyway");
            }
            let _ = tx.send(unit);
        });
    }

    async fn finish_release(&self, held: &mut HashMap<Unit, Held>, unit: &Unit) {
        self.ownership.drop_unit(unit);
        let Some(h) = held.remove(unit) else { return };
        match self.store.delete(&unit.key(), h.revision).await {
            Ok(()) => tracing::debug!(%unit, epoch = h.epoch, "shard released"),
            Err(e) => tracing::warn!(%unit, error = %e, "cannot delete the lease; it expires by itself"),
        }
        if self.draining.load(Ordering::Acquire) && held.is_empty() {
            self.left.notify_waiters();
        }
    }
}
