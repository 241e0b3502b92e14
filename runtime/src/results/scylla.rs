//! The result store in the Scylla journal's keyspace: table
//! `invocation_results (invocation_id PRIMARY KEY, final, row)`, rows
//! written with a TTL (so expiry is the database's), final rows protected by
//! lightweight transactions. The table and its statements live here: its
//! migration ([`ScyllaResultStore::migrate`]) runs with the journal's
//! (`tessera journal migrate`), and every statement binds by name.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use tessera_journal::ScyllaJournal;

use super::{InvocationResult, PutOutcome, ResultStore, ResultStoreError};

/// The values of a row write, bound by name.
#[derive(scylla::SerializeRow)]
struct RowValues<'a> {
    invocation_id: &'a str,
    is_final: bool,
    row: &'a [u8],
    ttl: i32,
}

/// The Scylla-backed store; shares the journal's session.
pub struct ScyllaResultStore {
    journal: ScyllaJournal,
    statements: tokio::sync::OnceCell<Prepared>,
}

struct Prepared {
    insert: PreparedStatement,
    update: PreparedStatement,
    get: PreparedStatement,
}

fn unavailable(e: impl std::fmt::Display) -> ResultStoreError {
    ResultStoreError::Unavailable(format!("scylla: {e}"))
}

use crate::now_ms;

impl ScyllaResultStore {
    /// A store in `journal`'s keyspace.
    pub fn new(journal: &ScyllaJournal) -> Self {
        Self { journal: journal.clone(), statements: tokio::sync::OnceCell::new() }
    }

    /// The table, as idempotent DDL for the journal's migration
    /// (`MigrateOptions::other_tables`; `tessera journal migrate` runs it,
    /// never a node on start).
    pub fn table() -> String {
        "CREATE TABLE IF NOT EXISTS {ks}.invocation_results (invocation_id text PRIMARY KEY, final boolean, row blob)"
            .into()
    }

    fn session(&self) -> &Session {
        self.journal.session()
    }

    async fn prepared(&self) -> Result<&Prepared, ResultStoreError> {
        self.statements
            .get_or_try_init(|| async {
                let c = self.journal.config();
                let ks = &c.keyspace;
                let prep = |cql: String| async move {
                    let mut p = self.session().prepare(cql).await.map_err(unavailable)?;
                    p.set_consistency(c.consistency);
                    p.set_serial_consistency(Some(c.serial_consistency));
                    p.set_request_timeout(Some(c.timeout));
                    Ok::<_, ResultStoreError>(p)
                };
                Ok(Prepared {
                    insert: prep(format!(
                        "INSERT INTO {ks}.invocation_results (invocation_id, final, row) \
                         VALUES (:invocation_id, :is_final, :row) IF NOT EXISTS USING TTL :ttl"
                    ))
                    .await?,
                    update: prep(format!(
                        "UPDATE {ks}.invocation_results USING TTL :ttl SET final = :is_final, row = :row \
                         WHERE invocation_id = :invocation_id IF final = false"
                    ))
                    .await?,
                    get: prep(format!("SELECT row FROM {ks}.invocation_results WHERE invocation_id = :invocation_id"))
                        .await?,
                })
            })
            .await
    }

    fn applied(r: scylla::response::query_result::QueryResult) -> Result<(bool, Option<Vec<u8>>), ResultStoreError> {
        let rows = r.into_rows_result().map_err(unavailable)?;
        let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
        let row = rows.maybe_first_row::<scylla::value::Row>().map_err(unavailable)?;
        let mut applied = false;
        let mut existing = None;
        if let Some(row) = row {
            for (n, v) in names.iter().zip(row.columns) {
                match (n.as_str(), v) {
                    ("[applied]", Some(CqlValue::Boolean(b))) => applied = b,
                    ("row", Some(CqlValue::Blob(b))) => existing = Some(b),
                    _ => {}
                }
            }
        }
        Ok((applied, existing))
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<InvocationResult, ResultStoreError> {
        tessera_entities::codec::from_msgpack(bytes)
            .map_err(|e| ResultStoreError::Corrupt { id: id.to_owned(), detail: e.to_string() })
    }
}

#[async_trait::async_trait]
impl ResultStore for ScyllaResultStore {
    async fn put(&self, row: InvocationResult) -> Result<PutOutcome, ResultStoreError> {
        let p = self.prepared().await?;
        let ttl_ms = row.expires_ms - now_ms();
        if ttl_ms <= 0 {
            return Ok(PutOutcome::Stored);
        }
        let ttl = Duration::from_millis(ttl_ms as u64).as_secs().max(1) as i32;
        let bytes = rmp_serde::to_vec_named(&row).map_err(unavailable)?;
        let id = row.invocation_id.clone();
        let fin = row.status.is_final();
        let values = RowValues { invocation_id: &id, is_final: fin, row: &bytes, ttl };
        let r = self.session().execute_unpaged(&p.insert, &values).await.map_err(unavailable)?;
        let (applied, existing) = Self::applied(r)?;
        if applied {
            return Ok(PutOutcome::Stored);
        }
        let r = self.session().execute_unpaged(&p.update, &values).await.map_err(unavailable)?;
        let (applied, _) = Self::applied(r)?;
        if applied {
            return Ok(PutOutcome::Stored);
        }
        // A final row is there: return it.
        let current = match self.get(&id, i64::MIN).await? {
            Some(r) => r,
            None => Self::decode(&id, &existing.unwrap_or_default())?,
        };
        Ok(PutOutcome::AlreadyFinal(Box::new(current)))
    }

    async fn get(&self, id: &str, now_ms: i64) -> Result<Option<InvocationResult>, ResultStoreError> {
        let p = self.prepared().await?;
        #[derive(scylla::SerializeRow)]
        struct Key<'a> {
            invocation_id: &'a str,
        }
        let r = self.session().execute_unpaged(&p.get, Key { invocation_id: id }).await.map_err(unavailable)?;
        let rows = r.into_rows_result().map_err(unavailable)?;
        match rows.maybe_first_row::<(Option<Vec<u8>>,)>().map_err(unavailable)? {
            Some((Some(bytes),)) => Ok(Some(Self::decode(id, &bytes)?).filter(|r| r.expires_ms > now_ms)),
            _ => Ok(None),
        }
    }

    async fn purge_expired(&self, _now_ms: i64) -> Result<u64, ResultStoreError> {
        Ok(0) // rows carry a TTL: the database expires them
    }
}
