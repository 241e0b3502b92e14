//! The schema, created and upgraded by a versioned migration
//! (`tessera journal migrate --scylla URL`), never on node start: a node
//! checks the version and refuses a keyspace it does not know.

use scylla::client::session::Session;

use crate::error::JournalError;

/// The schema version this build creates and reads.
///
/// - 1: events (bucketed, statics `last_seq`, `sealed`, snapshot), snapshots,
///   events_by_shard, entity_ids (keyspaces migrated by older builds also
///   hold `invocation_results`, now created by the result store's own
///   migration: one owner per table).
/// - 2: the static `fence` of each events partition: the lease epoch a
///   writer's conditional appends must carry.
/// - 3: the feed per (entity type, shard) with owner-assigned offsets
///   (`feed`, `feed_segments`, each event row's `feed_offset`), and
///   idempotency keys by time (`idempotency`, each event row's `idem_key`).
///   The wall-clock feed `events_by_shard` of version 1 is no longer written.
/// - 4: a gapless feed: offsets are given only to committed appends. An
///   append first records an *intent* (`feed_intents`, per unit and owner
///   epoch), each event row carries its intent (`feed_intent`) and each feed
///   entry the intent it numbers (`intent`); a segment records how far its
///   intents are settled (`intent_floor`, `floor_offset`) and which owner
///   closed it (`closed_by`). Segments written by version 3 are settled the
///   version-3 way.
/// - 5: each event row's checksum (`crc`).
/// - 6: each feed entry says whether its event is one of the runtime's
///   records (`record`, a type under `INTERNAL_TYPE_PREFIX`), so that the
///   dispatcher, which reads only those, does not read the others' rows.
///   Entries of older schemas, and those a successor writes for an
///   earlier owner's appends, have none: their events are read.
pub const SCHEMA_VERSION: i32 = 6;

/// Offsets per partition of the `feed` table.
pub const FEED_BLOCK: u64 = 100_000;

/// Events per partition of the events table, unless the migration chose
/// another: 100k events of ~200 B is ~20 MB per partition, well under the
/// sizes where ScyllaDB and Cassandra warn (Akka uses 500k and users still
/// hit large partitions).
pub const DEFAULT_BUCKET_SIZE: i64 = 100_000;

/// How long the per-shard feed keeps entries (seconds): 7 days.
pub const FEED_TTL_SECS: i64 = 7 * 24 * 3600;

/// Settings of a migration.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The replication clause, e.g. `{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}`.
    pub replication: String,
    /// Events per partition (fixed for the life of the keyspace).
    pub bucket_size: i64,
    /// Tables other parts keep in the same keyspace, as idempotent DDL
    /// (`CREATE TABLE IF NOT EXISTS {ks}.…`; `{ks}` is replaced by the
    /// keyspace), e.g. the runtime's result store. Their owners define them;
    /// the migration only runs them, every time.
    pub other_tables: Vec<String>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            bucket_size: DEFAULT_BUCKET_SIZE,
            other_tables: Vec::new(),
        }
    }
}

fn migrations(ks: &str) -> Vec<(i32, Vec<String>)> {
    vec![
        (
        1,
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.events (
                    entity_type text, entity_id text, bucket bigint, seq bigint,
                    ts bigint, type_name text, version int, payload blob, metadata blob,
                    last_seq bigint STATIC, sealed bigint STATIC,
                    snap_seq bigint STATIC, snap_version int STATIC, snap_ts bigint STATIC, snap_payload blob STATIC,
                    PRIMARY KEY ((entity_type, entity_id, bucket), seq)
                ) WITH CLUSTERING ORDER BY (seq ASC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.snapshots (
                    entity_type text, entity_id text, seq bigint, version int, ts bigint, payload blob,
                    PRIMARY KEY ((entity_type, entity_id))
                )"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.events_by_shard (
                    shard int, hour bigint, offset bigint, entity_type text, entity_id text, bucket bigint, seq bigint,
                    PRIMARY KEY ((shard, hour), offset)
                ) WITH CLUSTERING ORDER BY (offset ASC)
                  AND compaction = {{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'HOURS', 'compaction_window_size': 1}}
                  AND default_time_to_live = {FEED_TTL_SECS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.entity_ids (
                    entity_type text, shard int, entity_id text,
                    PRIMARY KEY ((entity_type, shard), entity_id)
                )"
            ),
        ],
        ),
        (2, vec![format!("ALTER TABLE {ks}.events ADD fence bigint STATIC")]),
        (
            3,
            vec![
                format!("ALTER TABLE {ks}.events ADD feed_offset bigint"),
                format!("ALTER TABLE {ks}.events ADD idem_key text"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.feed (
                        entity_type text, shard int, block bigint, offset bigint, epoch bigint,
                        entity_id text, bucket bigint, seq bigint, ts bigint, void boolean,
                        PRIMARY KEY ((entity_type, shard, block), offset, epoch)
                    ) WITH CLUSTERING ORDER BY (offset ASC, epoch ASC)
                      AND compaction = {{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'HOURS', 'compaction_window_size': 1}}
                      AND default_time_to_live = {FEED_TTL_SECS}"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.feed_segments (
                        entity_type text, shard int, epoch bigint, start bigint, watermark bigint, sealed_end bigint,
                        PRIMARY KEY ((entity_type, shard), epoch)
                    ) WITH CLUSTERING ORDER BY (epoch ASC)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.idempotency (
                        entity_type text, entity_id text, key text, seq bigint,
                        PRIMARY KEY ((entity_type, entity_id), key)
                    )"
                ),
            ],
        ),
        (
            4,
            vec![
                format!("ALTER TABLE {ks}.events ADD feed_intent bigint"),
                format!("ALTER TABLE {ks}.feed ADD intent bigint"),
                format!("ALTER TABLE {ks}.feed_segments ADD intent_floor bigint"),
                format!("ALTER TABLE {ks}.feed_segments ADD floor_offset bigint"),
                format!("ALTER TABLE {ks}.feed_segments ADD closed_by bigint"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.feed_intents (
                        entity_type text, shard int, epoch bigint, block bigint, id bigint,
                        entity_id text, bucket bigint, first_seq bigint, n int,
                        PRIMARY KEY ((entity_type, shard, epoch, block), id)
                    ) WITH CLUSTERING ORDER BY (id ASC)
                      AND default_time_to_live = {FEED_TTL_SECS}"
                ),
            ],
        ),
        // An end-to-end checksum of each event row (type, version, payload,
        // metadata, seq), written with the row and checked on every read:
        // a flipped byte is the entity's corruption at that seq, not a
        // silently different event. Rows of older schemas have none.
        (5, vec![format!("ALTER TABLE {ks}.events ADD crc bigint")]),
        (6, vec![format!("ALTER TABLE {ks}.feed ADD record boolean")]),
    ]
}

/// `(table, column)` of an `ALTER TABLE ks.table ADD column ...` statement.
fn added_column(cql: &str) -> Option<(&str, &str)> {
    let rest = cql.strip_prefix("ALTER TABLE ")?;
    let (table, rest) = rest.split_once(" ADD ")?;
    let table = table.rsplit('.').next()?;
    Some((table, rest.split_whitespace().next()?))
}

/// A CQL string literal. The schema's one-off queries are sent unprepared
/// (with their values inline) so that they take no room in the server's
/// prepared-statement cache, which every keyspace's journal statements need.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn column_exists(session: &Session, ks: &str, table: &str, column: &str) -> Result<bool, JournalError> {
    let cql = format!(
        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = {} AND table_name = {} AND column_name = {}",
        lit(ks),
        lit(table),
        lit(column)
    );
    let r = session.query_unpaged(cql, ()).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    Ok(r.into_rows_result().map_err(|e| JournalError::Unavailable(e.to_string()))?.rows_num() > 0)
}

async fn meta(session: &Session, ks: &str, key: &str) -> Result<Option<String>, JournalError> {
    let r = session
        .query_unpaged(format!("SELECT value FROM {ks}.tessera_meta WHERE key = {}", lit(key)), ())
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let rows = r.into_rows_result().map_err(|e| JournalError::Unavailable(e.to_string()))?;
    rows.maybe_first_row::<(String,)>().map(|r| r.map(|(v,)| v)).map_err(|e| JournalError::Unavailable(e.to_string()))
}

/// The schema version and bucket size of a keyspace (`None`: not migrated).
pub async fn installed(session: &Session, ks: &str) -> Result<Option<(i32, i64)>, JournalError> {
    let exists = session
        .query_unpaged(
            format!(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = {} AND table_name = 'tessera_meta'",
                lit(ks)
            ),
            (),
        )
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))?
        .into_rows_result()
        .map_err(|e| JournalError::Unavailable(e.to_string()))?
        .rows_num()
        > 0;
    if !exists {
        return Ok(None);
    }
    let version = meta(session, ks, "schema_version").await?.and_then(|v| v.parse().ok());
    let bucket = meta(session, ks, "bucket_size").await?.and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_BUCKET_SIZE);
    Ok(version.map(|v| (v, bucket)))
}

/// Creates the keyspace and tables, or upgrades them; idempotent. Returns
/// the versions applied.
pub async fn migrate(session: &Session, ks: &str, opts: &MigrateOptions) -> Result<Vec<i32>, JournalError> {
    let run = |cql: String| async move {
        session.query_unpaged(cql.clone(), ()).await.map_err(|e| JournalError::Unavailable(format!("{e} (in: {cql})")))
    };
    let server = super::server::detect(session).await?;
    run(super::server::create_keyspace(ks, &opts.replication, server)).await?;
    run(format!("CREATE TABLE IF NOT EXISTS {ks}.tessera_meta (key text PRIMARY KEY, value text)")).await?;
    // Before anything else is written: a keyspace the append cannot work in
    // (ScyllaDB tablets) is refused with what to do.
    super::server::check_conditional_writes(session, ks, server).await?;
    let current = installed(session, ks).await?.map(|(v, _)| v).unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(JournalError::Invalid(format!(
            "keyspace {ks} has schema version {current}, newer than the {SCHEMA_VERSION} this build knows: upgrade Tessera"
        )));
    }
    if current == 0 {
        let set = format!("INSERT INTO {ks}.tessera_meta (key, value) VALUES ('bucket_size', '{}')", opts.bucket_size);
        run(set).await?;
    }
    let mut applied = Vec::new();
    for (version, statements) in migrations(ks) {
        if version <= current {
            continue;
        }
        for cql in statements {
            // A migration that stopped half-way re-runs its statements: a
            // column it already added is skipped (ScyllaDB has no `ADD IF
            // NOT EXISTS`).
            if let Some((table, column)) = added_column(&cql)
                && column_exists(session, ks, table, column).await?
            {
                continue;
            }
            run(cql).await?;
        }
        run(format!("INSERT INTO {ks}.tessera_meta (key, value) VALUES ('schema_version', '{version}')")).await?;
        applied.push(version);
    }
    for ddl in &opts.other_tables {
        run(ddl.replace("{ks}", ks)).await?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_column_an_alter_adds() {
        assert_eq!(super::added_column("ALTER TABLE ks.events ADD fence bigint STATIC"), Some(("events", "fence")));
        assert_eq!(super::added_column("CREATE TABLE ks.x (a int PRIMARY KEY)"), None);
    }
}
