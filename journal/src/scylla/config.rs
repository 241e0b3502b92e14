//! Connection settings of the Scylla journal, from a URL:
//! `scylla://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/KEYSPACE[?OPTIONS]`.
//!
//! Options: `consistency` (`local_quorum` default, `quorum`, `one`, `all`,
//! `local_one`, `each_quorum`), `serial` (`local_serial` default, `serial`),
//! `timeout_ms` (request timeout, default 5000; the driver's default retry
//! policy retries idempotent reads), `conditional` (`true` default; `false` is the documented unsafe fast
//! mode, see [`ScyllaConfig::conditional`]), `tls` (`true`: connect with
//! TLS), `tls_ca` (PEM file of the certificate authorities to trust; required
//! with `tls=true`), `feed_ttl_secs` (how long feed entries are kept,
//! default 7 days).

use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

/// Parsed connection settings.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace.
    pub keyspace: String,
    /// Username and password (PasswordAuthenticator).
    pub credentials: Option<(String, String)>,
    /// Consistency of reads and writes (default LOCAL_QUORUM).
    pub consistency: Consistency,
    /// Consistency of the Paxos round of conditional appends (default LOCAL_SERIAL).
    pub serial_consistency: SerialConsistency,
    /// Client-side timeout of one request.
    pub timeout: Duration,
    /// Conditional appends (lightweight transactions) so two writers can
    /// never both commit a seq. `false` writes events with plain batches:
    /// faster, but only safe when a single writer per entity is guaranteed
    /// by other means (the runtime's shard leases). Opt-in, documented.
    pub conditional: bool,
    /// TLS: the PEM file of trusted certificate authorities (`None`: plain TCP).
    pub tls_ca: Option<std::path::PathBuf>,
    /// How long feed entries are kept (a TTL on each row).
    pub feed_ttl: Duration,
}

fn anyhow_positive(secs: u64) -> Result<(), &'static str> {
    if secs == 0 { Err("feed_ttl_secs must be at least 1") } else { Ok(()) }
}

/// A malformed journal URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid Scylla journal URL `{url}`: {reason} (expected scylla://[user:password@]host:port[,host:port]/keyspace[?options])"
)]
pub struct UrlError {
    /// The URL (password masked).
    pub url: String,
    /// What is wrong.
    pub reason: String,
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 48 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !s.starts_with('_')
}

impl ScyllaConfig {
    /// Parses a `scylla://` URL.
    pub fn from_url(url: &str) -> Result<Self, UrlError> {
        let masked = match url.split_once('@') {
            Some((creds, rest)) if creds.contains(':') => {
                format!("{}:***@{rest}", creds.rsplit_once(':').map_or(creds, |(u, _)| u))
            }
            _ => url.to_owned(),
        };
        let err = |reason: &str| UrlError { url: masked.clone(), reason: reason.to_owned() };
        let rest = url
            .strip_prefix("scylla://")
            .or_else(|| url.strip_prefix("cassandra://"))
            .ok_or_else(|| err("scheme must be scylla://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, keyspace) = rest.split_once('/').ok_or_else(|| err("missing /keyspace"))?;
        if !valid_identifier(keyspace) {
            return Err(err("the keyspace must be 1-48 letters, digits or `_`"));
        }
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((c, h)) => {
                let (u, p) = c.split_once(':').ok_or_else(|| err("credentials must be user:password"))?;
                (Some((u.to_owned(), p.to_owned())), h)
            }
            None => (None, authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| if h.contains(':') { h.to_owned() } else { format!("{h}:9042") })
            .collect();
        if nodes.is_empty() {
            return Err(err("no host"));
        }
        let mut c = Self {
            nodes,
            keyspace: keyspace.to_owned(),
            credentials,
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            timeout: Duration::from_millis(5000),
            conditional: true,
            tls_ca: None,
            feed_ttl: Duration::from_secs(super::schema::FEED_TTL_SECS as u64),
        };
        let mut tls = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| err(&format!("option `{pair}` is not key=value")))?;
            match k {
                "consistency" => {
                    c.consistency = match v {
                        "one" => Consistency::One,
                        "local_one" => Consistency::LocalOne,
                        "quorum" => Consistency::Quorum,
                        "local_quorum" => Consistency::LocalQuorum,
                        "each_quorum" => Consistency::EachQuorum,
                        "all" => Consistency::All,
                        _ => return Err(err(&format!("unknown consistency `{v}`"))),
                    }
                }
                "serial" => {
                    c.serial_consistency = match v {
                        "serial" => SerialConsistency::Serial,
                        "local_serial" => SerialConsistency::LocalSerial,
                        _ => return Err(err(&format!("unknown serial consistency `{v}`"))),
                    }
                }
                "timeout_ms" => {
                    c.timeout = Duration::from_millis(v.parse().map_err(|_| err("timeout_ms must be a number"))?)
                }
                "conditional" => c.conditional = v.parse().map_err(|_| err("conditional must be true or false"))?,
                "tls" => tls = v.parse().map_err(|_| err("tls must be true or false"))?,
                "tls_ca" => c.tls_ca = Some(std::path::PathBuf::from(v)),
                "feed_ttl_secs" => {
                    let secs: u64 = v.parse().map_err(|_| err("feed_ttl_secs must be a number"))?;
                    anyhow_positive(secs).map_err(&err)?;
                    c.feed_ttl = Duration::from_secs(secs);
                }
                other => return Err(err(&format!("unknown option `{other}`"))),
            }
        }
        if tls && c.tls_ca.is_none() {
            return Err(err("tls=true needs tls_ca=PATH (a PEM file of the certificate authorities to trust)"));
        }
        if !tls {
            c.tls_ca = None;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_urls_and_masks_passwords() {
        let c = ScyllaConfig::from_url(
            "scylla://app:s3cret@10.0.0.1:9042,10.0.0.2/ks_1?consistency=quorum&timeout_ms=250&conditional=false",
        )
        .unwrap();
        assert_eq!(c.nodes, vec!["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(c.keyspace, "ks_1");
        assert_eq!(c.credentials, Some(("app".into(), "s3cret".into())));
        assert_eq!(c.consistency, Consistency::Quorum);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert!(!c.conditional);
        let e = ScyllaConfig::from_url("scylla://app:s3cret@h/bad-name").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(ScyllaConfig::from_url("http://h/ks").is_err());
        assert!(ScyllaConfig::from_url("scylla://h/ks?consistency=most").is_err());
    }
}
