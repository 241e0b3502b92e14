//! The supervisor of the shard actors: spawns one per shard and restarts a
//! shard actor that fails (its entities are rebuilt from the journal on next
//! use). The node is never taken down by one shard.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{ShardActor, ShardContext, ShardMsg};

/// The current actor of every shard, updated on restart.
pub(crate) struct ShardRefs {
    refs: Vec<RwLock<Option<ActorRef<ShardMsg>>>>,
}

impl ShardRefs {
    pub(crate) fn new(shards: u32) -> Self {
        Self { refs: (0..shards).map(|_| RwLock::new(None)).collect() }
    }
    /// The actor hosting `shard`, if it is running.
    pub(crate) fn get(&self, shard: u32) -> Option<ActorRef<ShardMsg>> {
        self.refs.get(shard as usize)?.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, shard: u32, r: Option<ActorRef<ShardMsg>>) {
        if let Some(slot) = self.refs.get(shard as usize) {
            *slot.write().unwrap_or_else(|p| p.into_inner()) = r;
        }
    }
}

pub(crate) struct ShardSupervisor;

pub(crate) struct SupervisorState {
    ctx: Arc<ShardContext>,
    refs: Arc<ShardRefs>,
    by_actor: HashMap<ractor::ActorId, u32>,
}

impl SupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<()>, shard: u32) -> Result<(), ActorProcessingErr> {
        let (r, _) = Actor::spawn_linked(None, ShardActor, (shard, self.ctx.clone()), myself.get_cell()).await?;
        self.by_actor.insert(r.get_id(), shard);
        self.refs.set(shard, Some(r));
        Ok(())
    }
}

impl Actor for ShardSupervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = (Arc<ShardContext>, Arc<ShardRefs>, u32);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (ctx, refs, shards): Self::Arguments,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState { ctx, refs, by_actor: HashMap::new() };
        for shard in 0..shards {
            st.spawn(&myself, shard).await?;
        }
        Ok(st)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(shard) = st.by_actor.remove(&cell.get_id()) {
                    tracing::error!(shard, error = %err, "shard actor failed; restarting it");
                    st.refs.set(shard, None);
                    st.spawn(&myself, shard).await?;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(shard) = st.by_actor.remove(&cell.get_id()) {
                    st.refs.set(shard, None);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
