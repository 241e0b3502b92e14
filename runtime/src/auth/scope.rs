//! Scopes and what a request needs: pure logic, no IO.
//!
//! A principal holds a tenant and a set of [`Scope`]s; a request needs one
//! [`Need`]; [`Principal::allows`] decides. The invariant: a request is
//! allowed only by a scope that names it (its kind, its name or `*`, its
//! access), or by `admin`. Nothing implies anything else: `write` does not
//! imply `read`, a scope for one entity type says nothing of another, and
//! only `admin` opens the admin routes.
//!
//! | scope | allows |
//! |---|---|
//! | `entity:{type}:read` | an entity's state, the ids of a type (`GET /v1/entities/…`, not `/events`) |
//! | `entity:{type}:write` | every command of the type |
//! | `entity:{type}/{command}:write` | that command |
//! | `entity:{type}:delete` | deleting entities of the type (`DELETE /v1/entities/…`; `write` does not imply it) |
//! | `function:{name}:call` | calling the function, sync or async |
//! | `metrics` | `GET /metrics` |
//! | `admin` | everything, including journal reads, feeds, projections, the autoscaler and every tenant's invocations |
//!
//! `{type}`, `{command}` and `{name}` may be `*`.

use std::fmt;

/// One granted permission (see the module doc for the grammar).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything.
    Admin,
    /// `GET /metrics`.
    Metrics,
    /// Reading entities of a type (`*`: every type).
    EntityRead {
        /// The entity type or `*`.
        entity_type: String,
    },
    /// Commands on entities of a type.
    EntityWrite {
        /// The entity type or `*`.
        entity_type: String,
        /// One command, `*`, or every command (`None`).
        command: Option<String>,
    },
    /// Deleting entities of a type.
    EntityDelete {
        /// The entity type or `*`.
        entity_type: String,
    },
    /// Calling a function.
    FunctionCall {
        /// The function or `*`.
        name: String,
    },
}

/// A scope string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope `{scope}`: {why} (entity:TYPE:read, entity:TYPE[/COMMAND]:write, function:NAME:call, metrics, admin)"
)]
pub struct ScopeError {
    /// The scope as given.
    pub scope: String,
    /// What is wrong with it.
    pub why: &'static str,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains([':', '/', ' '])
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, ScopeError> {
        let err = |why| ScopeError { scope: s.to_owned(), why };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["admin"] => Ok(Self::Admin),
            ["metrics"] => Ok(Self::Metrics),
            ["entity", target, access] => {
                let (ty, command) = match target.split_once('/') {
                    Some((t, c)) => (t, Some(c)),
                    None => (*target, None),
                };
                if !name_ok(ty) || command.is_some_and(|c| !name_ok(c)) {
                    return Err(err("the entity type and command must be names or `*`"));
                }
                match *access {
                    "read" if command.is_none() => Ok(Self::EntityRead { entity_type: ty.to_owned() }),
                    "read" => Err(err("read scopes name a type, not a command")),
                    "delete" if command.is_none() => Ok(Self::EntityDelete { entity_type: ty.to_owned() }),
                    "delete" => Err(err("delete scopes name a type, not a command")),
                    "write" => {
                        Ok(Self::EntityWrite { entity_type: ty.to_owned(), command: command.map(str::to_owned) })
                    }
                    _ => Err(err("entity access is `read`, `write` or `delete`")),
                }
            }
            ["function", name, "call"] if name_ok(name) => Ok(Self::FunctionCall { name: (*name).to_owned() }),
            ["function", ..] => Err(err("function scopes are function:NAME:call")),
            _ => Err(err("unknown scope")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Metrics => f.write_str("metrics"),
            Self::EntityRead { entity_type } => write!(f, "entity:{entity_type}:read"),
            Self::EntityWrite { entity_type, command: None } => write!(f, "entity:{entity_type}:write"),
            Self::EntityWrite { entity_type, command: Some(c) } => write!(f, "entity:{entity_type}/{c}:write"),
            Self::EntityDelete { entity_type } => write!(f, "entity:{entity_type}:delete"),
            Self::FunctionCall { name } => write!(f, "function:{name}:call"),
        }
    }
}

/// What one request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing (`/healthz`, unknown routes).
    Public,
    /// Any valid token (the registry; an invocation, checked against its tenant after).
    Authenticated,
    /// `GET /metrics`.
    Metrics,
    /// Reading entities of a type.
    EntityRead(&'a str),
    /// A command on an entity of a type.
    EntityWrite(&'a str, &'a str),
    /// Deleting an entity of a type.
    EntityDelete(&'a str),
    /// Calling a function.
    FunctionCall(&'a str),
    /// An admin route.
    Admin,
}

impl Need<'_> {
    /// The narrowest scope that grants this need (for 403 messages).
    pub fn scope(&self) -> Option<Scope> {
        Some(match *self {
            Self::Public | Self::Authenticated => return None,
            Self::Metrics => Scope::Metrics,
            Self::EntityRead(t) => Scope::EntityRead { entity_type: t.to_owned() },
            Self::EntityWrite(t, c) => Scope::EntityWrite { entity_type: t.to_owned(), command: Some(c.to_owned()) },
            Self::EntityDelete(t) => Scope::EntityDelete { entity_type: t.to_owned() },
            Self::FunctionCall(n) => Scope::FunctionCall { name: n.to_owned() },
            Self::Admin => Scope::Admin,
        })
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    pattern == "*" || pattern == name
}

impl Scope {
    /// True when this scope alone grants `need`.
    pub fn grants(&self, need: &Need<'_>) -> bool {
        match (self, need) {
            (_, Need::Public | Need::Authenticated) | (Self::Admin, _) => true,
            (Self::Metrics, Need::Metrics) => true,
            (Self::EntityRead { entity_type }, Need::EntityRead(t)) => matches(entity_type, t),
            (Self::EntityWrite { entity_type, command }, Need::EntityWrite(t, c)) => {
                matches(entity_type, t) && command.as_deref().is_none_or(|p| matches(p, c))
            }
            (Self::EntityDelete { entity_type }, Need::EntityDelete(t)) => matches(entity_type, t),
            (Self::FunctionCall { name }, Need::FunctionCall(n)) => matches(name, n),
            _ => false,
        }
    }
}

/// Who is calling: from a verified token or API key.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant (letters, digits, `-`, `_`): async invocations and
    /// idempotency keys are kept apart per tenant.
    pub tenant: String,
    /// Who, for logs: a JWT's `sub` or an API key's `name` (never the secret).
    pub subject: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scopes: Vec<String> = self.scopes.iter().map(Scope::to_string).collect();
        write!(f, "Principal({}@{} {scopes:?})", self.subject, self.tenant)
    }
}

/// True for a tenant name: 1–64 letters, digits, `-`, `_`, and not
/// `tessera` (keys in the `tessera:` namespace are the runtime's own
/// deliveries between entities).
pub fn tenant_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && !t.eq_ignore_ascii_case("tessera")
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Principal {
    /// True when one of its scopes grants `need`.
    pub fn allows(&self, need: &Need<'_>) -> bool {
        matches!(need, Need::Public | Need::Authenticated) || self.scopes.iter().any(|s| s.grants(need))
    }

    /// True with the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// May this principal see an invocation with this id? Its own tenant's
    /// (ids start with `{tenant}:`), or any with `admin`.
    pub fn owns_invocation(&self, id: &str) -> bool {
        self.is_admin() || id.strip_prefix(self.tenant.as_str()).is_some_and(|rest| rest.starts_with(':'))
    }

    /// A caller's key (or invocation id) in this tenant's namespace:
    /// `{tenant}:{key}`, so one tenant's keys never meet another's.
    pub fn scoped_key(&self, key: &str) -> String {
        format!("{}:{key}", self.tenant)
    }
}

/// Parses scopes from a list of strings (every one must parse).
pub fn parse_scopes<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Result<Vec<Scope>, ScopeError> {
    scopes.into_iter().filter(|s| !s.is_empty()).map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(scopes: &[&str]) -> Principal {
        Principal { tenant: "acme".into(), subject: "t".into(), scopes: parse_scopes(scopes.iter().copied()).unwrap() }
    }

    #[test]
    fn scopes_round_trip_through_their_strings() {
        for s in [
            "admin",
            "metrics",
            "entity:stock:read",
            "entity:*:read",
            "entity:stock:write",
            "entity:stock/purchase:write",
            "entity:*/*:write",
            "entity:stock:delete",
            "function:product.image:call",
            "function:*:call",
        ] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn malformed_scopes_say_what_is_wrong() {
        for bad in [
            "",
            "root",
            "entity:stock",
            "entity:stock:drop",
            "entity:stock/buy:delete",
            "entity:stock/buy:read",
            "entity::write",
            "function:f",
        ] {
            let e = bad.parse::<Scope>().unwrap_err();
            assert!(e.to_string().contains("invalid scope"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_command_scope_grants_that_command_only() {
        let p = who(&["entity:stock/purchase:write"]);
        assert!(p.allows(&Need::EntityWrite("stock", "purchase")));
        assert!(!p.allows(&Need::EntityWrite("stock", "restock")));
        assert!(!p.allows(&Need::EntityWrite("order", "purchase")));
    }

    #[test]
    fn write_does_not_imply_read_and_nothing_implies_admin() {
        let p = who(&["entity:*:write", "function:*:call", "metrics"]);
        assert!(p.allows(&Need::EntityWrite("stock", "restock")));
        assert!(!p.allows(&Need::EntityRead("stock")));
        assert!(!p.allows(&Need::Admin));
        assert!(p.allows(&Need::Metrics));
        assert!(!p.allows(&Need::EntityDelete("stock")), "write does not imply delete");
        let d = who(&["entity:stock:delete"]);
        assert!(d.allows(&Need::EntityDelete("stock")) && !d.allows(&Need::EntityDelete("order")));
        assert!(!d.allows(&Need::EntityWrite("stock", "restock")) && !d.allows(&Need::EntityRead("stock")));
    }

    #[test]
    fn admin_grants_everything() {
        let p = who(&["admin"]);
        for need in
            [Need::Admin, Need::Metrics, Need::EntityRead("x"), Need::EntityWrite("x", "y"), Need::FunctionCall("f")]
        {
            assert!(p.allows(&need), "{need:?}");
        }
        assert!(p.owns_invocation("other:123"));
    }

    #[test]
    fn invocations_belong_to_their_tenant() {
        let p = who(&["function:*:call"]);
        assert!(p.owns_invocation("acme:0190"));
        assert!(!p.owns_invocation("acme2:0190"), "a tenant whose name extends another's");
        assert!(!p.owns_invocation("other:0190"));
        assert!(!p.owns_invocation("0190"), "an id from a node without auth");
        assert_eq!(p.scoped_key("order-1"), "acme:order-1");
    }

    #[test]
    fn no_scopes_allow_only_public_and_authenticated_routes() {
        let p = who(&[]);
        assert!(p.allows(&Need::Public) && p.allows(&Need::Authenticated));
        assert!(!p.allows(&Need::FunctionCall("f")));
        assert_eq!(Need::FunctionCall("f").scope().unwrap().to_string(), "function:f:call");
    }

    #[test]
    fn tenants_are_plain_names() {
        assert!(tenant_ok("acme") && tenant_ok("team_7-eu"));
        assert!(!tenant_ok("") && !tenant_ok("a:b") && !tenant_ok("a.b") && !tenant_ok(&"x".repeat(65)));
        assert!(!tenant_ok("tessera"), "reserved: the runtime's own keys are `tessera:…`");
    }
}
