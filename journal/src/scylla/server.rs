//! Which server the journal talks to, and what that changes.
//!
//! The journal's append is a conditional write (a lightweight transaction,
//! `IF seq = ?`). ScyllaDB releases that create keyspaces with *tablets* by
//! default did not take lightweight transactions in tablet keyspaces (the
//! ScyllaDB manual up to 2025.3: "The LWT feature is not supported in
//! keyspaces with tablets enabled"). So on ScyllaDB the migration creates
//! the keyspace with `tablets = {'enabled': false}` (vnodes), and before a
//! journal is used a conditional write is tried in its keyspace: a keyspace
//! that refuses one is a clear error at start-up, not a failure of every
//! command. Apache Cassandra has neither tablets nor the limitation.

use scylla::client::session::Session;

use crate::error::JournalError;

/// The CQL server behind a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// ScyllaDB (it keeps `system_schema.scylla_keyspaces`).
    Scylla,
    /// Apache Cassandra, or another server without ScyllaDB's tables.
    Cassandra,
}

/// Asks the server which it is: only ScyllaDB has
/// `system_schema.scylla_keyspaces`; a server that is down is an error.
pub async fn detect(session: &Session) -> Result<Server, JournalError> {
    match session.query_unpaged("SELECT keyspace_name FROM system_schema.scylla_keyspaces LIMIT 1", ()).await {
        Ok(_) => Ok(Server::Scylla),
        Err(e) => {
            let msg = e.to_string();
            // Cassandra: "table scylla_keyspaces does not exist" (an invalid
            // request); anything else (a connection error) is the server
            // being unavailable.
            if msg.contains("scylla_keyspaces") || msg.to_ascii_lowercase().contains("unconfigured") {
                Ok(Server::Cassandra)
            } else {
                Err(JournalError::Unavailable(msg))
            }
        }
    }
}

/// `CREATE KEYSPACE IF NOT EXISTS` for `server`: on ScyllaDB with tablets
/// disabled, so that conditional writes work in it.
pub fn create_keyspace(ks: &str, replication: &str, server: Server) -> String {
    match server {
        Server::Scylla => {
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} AND tablets = {{'enabled': false}}"
            )
        }
        Server::Cassandra => format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
    }
}

/// Tries a conditional write in the keyspace (on `tessera_meta`, which
/// every migrated keyspace has): the journal cannot work without one.
pub async fn check_conditional_writes(session: &Session, ks: &str, server: Server) -> Result<(), JournalError> {
    let cql =
        format!("INSERT INTO {ks}.tessera_meta (key, value) VALUES ('conditional_write_probe', 'ok') IF NOT EXISTS");
    match session.query_unpaged(cql, ()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            let lower = msg.to_ascii_lowercase();
            if lower.contains("tablet")
                || lower.contains("lwt")
                || lower.contains("lightweight")
                || lower.contains("paxos")
            {
                Err(JournalError::Invalid(refusal(ks, server, &msg)))
            } else {
                Err(JournalError::Unavailable(msg))
            }
        }
    }
}

/// What to tell a user whose keyspace refuses conditional writes.
pub fn refusal(ks: &str, server: Server, cause: &str) -> String {
    match server {
        Server::Scylla => format!(
            "keyspace `{ks}` does not take conditional writes (lightweight transactions), which the journal's append needs: \
             it was probably created with tablets. Create it with vnodes instead: \
             CREATE KEYSPACE {ks} WITH replication = {{...}} AND tablets = {{'enabled': false}} \
             (`tessera journal migrate` does this for a new keyspace), then migrate. Server said: {cause}"
        ),
        Server::Cassandra => format!(
            "keyspace `{ks}` does not take conditional writes (lightweight transactions), which the journal's append needs. Server said: {cause}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_scylladb_a_new_keyspace_is_created_without_tablets() {
        let r = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}";
        assert_eq!(
            create_keyspace("shop", r, Server::Scylla),
            "CREATE KEYSPACE IF NOT EXISTS shop WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3} \
             AND tablets = {'enabled': false}"
        );
        assert!(!create_keyspace("shop", r, Server::Cassandra).contains("tablets"), "Cassandra has no tablets option");
    }

    #[test]
    fn the_refusal_says_what_to_do() {
        let m = refusal("shop", Server::Scylla, "LWT is not yet supported with tablets");
        assert!(
            m.contains("tablets = {'enabled': false}") && m.contains("shop") && m.contains("LWT is not yet"),
            "{m}"
        );
    }
}
