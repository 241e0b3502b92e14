//! `cluster status` and `cluster locate`: read the cluster bucket in NATS KV.

use clap::{Args, Subcommand};
use tessera_cluster::{ClusterStatus, ClusterStore};

/// Where the cluster is.
#[derive(Debug, Clone, Args)]
pub struct ClusterConn {
    /// NATS server URL.
    #[arg(long, env = "TESSERA_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// NATS subject prefix of the cluster.
    #[arg(long, env = "TESSERA_NATS_PREFIX", default_value = "tessera")]
    pub nats_prefix: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, leader, shard table (owner, epoch) and moves in progress.
    Status {
        /// Connection.
        #[command(flatten)]
        conn: ClusterConn,
        /// Also list every shard lease (JSON always does).
        #[arg(long)]
        shards: bool,
    },
    /// Where an entity lives: its token, shard and current owner.
    Locate {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Connection.
        #[command(flatten)]
        conn: ClusterConn,
    },
}

async fn read(conn: &ClusterConn) -> anyhow::Result<ClusterStatus> {
    let client = crate::connect::nats(&conn.nats, &crate::config::NatsSection::from_env(), "tessera-cli").await?;
    let js = async_nats::jetstream::new(client);
    let store = ClusterStore::open_existing(&js, &conn.nats_prefix).await?;
    Ok(ClusterStatus::read(&store).await?)
}

pub(crate) async fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status { conn, shards } => {
            let st = read(&conn).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!("bucket {}  lease ttl {} ms  shards {}", st.bucket, st.lease_ttl_ms, st.shards);
            println!("leader: {}", st.leader.as_deref().unwrap_or("-"));
            println!("members ({}):", st.members.len());
            let counts = st.counts();
            for m in &st.members {
                let n = counts.iter().find(|(id, _)| id == &m.node_id).map_or(0, |c| c.1);
                let state = if m.draining { "draining" } else { "up" };
                let roles = tessera_cluster::Roles::from_names(&m.roles);
                println!(
                    "  {:<24} {state:<9} {roles:<19} leases {n:<6} http {}",
                    m.node_id,
                    m.http.as_deref().unwrap_or("-")
                );
            }
            println!("moves in progress: {} handing off, {} unowned", st.releasing.len(), st.unowned.len());
            for l in &st.releasing {
                println!("  {}/{} from {} (epoch {})", l.entity_type, l.shard, l.owner, l.epoch);
            }
            if shards {
                println!("shard table:");
                for l in &st.leases {
                    println!("  {}/{:<6} {:<24} epoch {}", l.entity_type, l.shard, l.owner, l.epoch);
                }
            }
            Ok(())
        }
        ClusterCmd::Locate { entity_type, entity_id, conn } => {
            let st = read(&conn).await?;
            anyhow::ensure!(st.shards > 0, "no live member: the shard count is unknown");
            let token = tessera_journal::token(&entity_type, &entity_id);
            let shard = tessera_journal::shard_of(&entity_type, &entity_id, st.shards);
            let lease = st.owner(&entity_type, shard);
            let out = crate::wire::LocateBody {
                entity_type: entity_type.clone(),
                entity_id: entity_id.clone(),
                token,
                shard,
                shards: st.shards,
                owner: lease.map(|l| l.owner.clone()),
                epoch: lease.map(|l| l.epoch),
                state: lease.map(|l| l.state),
                owner_http: lease
                    .and_then(|l| st.members.iter().find(|m| m.node_id == l.owner))
                    .and_then(|m| m.http.clone()),
            };
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{entity_type}/{entity_id}: token {token}, shard {shard} of {}, owner {} (epoch {})",
                    st.shards,
                    lease.map_or("none (moving)", |l| l.owner.as_str()),
                    lease.map_or(0, |l| l.epoch)
                );
            }
            Ok(())
        }
    }
}
