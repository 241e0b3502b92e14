//! Node roles and the scale groups they make.
//!
//! A node serves the `entities` role (it takes shard leases and hosts
//! entities), the `functions` role (it runs stateless functions: sync calls
//! on `{p}.call.>` and async calls from the `{P}_INVOKE` queue), or both
//! (the default). The invariant: **every node belongs to exactly one scale
//! group**, and a group's nodes are interchangeable, so the autoscaler can
//! size each group on its own:
//!
//! - [`ScaleGroup::Entities`]: every node with the entities role (with or
//!   without functions). It never shrinks below one node: entities need an
//!   owner, and the leader runs there.
//! - [`ScaleGroup::Functions`]: nodes with the functions role only. It may
//!   be empty: async calls wait in JetStream until a node starts.
//!
//! ```
//! use tessera_cluster::roles::{Roles, ScaleGroup};
//! let r: Roles = "functions".parse().unwrap();
//! assert!(!r.entities() && r.functions());
//! assert_eq!(r.group(), ScaleGroup::Functions);
//! assert_eq!(Roles::default().group(), ScaleGroup::Entities);
//! ```

use serde::{Deserialize, Serialize};

/// The roles of a node: entities, functions, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Roles {
    entities: bool,
    functions: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Self::BOTH
    }
}

impl Roles {
    /// Both roles (a node that does everything).
    pub const BOTH: Self = Self { entities: true, functions: true };
    /// Entities only.
    pub const ENTITIES: Self = Self { entities: true, functions: false };
    /// Functions only.
    pub const FUNCTIONS: Self = Self { entities: false, functions: true };

    /// Takes shard leases and hosts entities.
    pub fn entities(self) -> bool {
        self.entities
    }
    /// Runs stateless functions.
    pub fn functions(self) -> bool {
        self.functions
    }
    /// The scale group a node with these roles belongs to.
    pub fn group(self) -> ScaleGroup {
        if self.entities { ScaleGroup::Entities } else { ScaleGroup::Functions }
    }
    /// The roles as the heartbeat lists them (`["entities", "functions"]`).
    pub fn names(self) -> Vec<String> {
        let mut v = Vec::new();
        if self.entities {
            v.push("entities".to_owned());
        }
        if self.functions {
            v.push("functions".to_owned());
        }
        v
    }
    /// The roles from a heartbeat's list; an empty list (a node from before
    /// roles existed) is both.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() {
            return Self::BOTH;
        }
        let has = |r: &str| names.iter().any(|n| n == r);
        Self { entities: has("entities"), functions: has("functions") }
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl std::str::FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = Self { entities: false, functions: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "entities" => r.entities = true,
                "functions" => r.functions = true,
                "all" | "both" => r = Self::BOTH,
                other => return Err(format!("unknown role `{other}`: entities, functions (or both, comma-separated)")),
            }
        }
        if !r.entities && !r.functions {
            return Err("a node needs at least one role: entities, functions".into());
        }
        Ok(r)
    }
}

impl TryFrom<String> for Roles {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Roles> for String {
    fn from(r: Roles) -> String {
        r.to_string()
    }
}

/// Nodes the autoscaler sizes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleGroup {
    /// Nodes with the entities role (with or without functions).
    Entities,
    /// Nodes with the functions role only.
    Functions,
}

impl ScaleGroup {
    /// The group's name (`entities`, `functions`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Entities => "entities",
            Self::Functions => "functions",
        }
    }
    /// The roles a node started for this group serves.
    pub fn roles(self) -> Roles {
        match self {
            Self::Entities => Roles::ENTITIES,
            Self::Functions => Roles::FUNCTIONS,
        }
    }
}

impl std::fmt::Display for ScaleGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_a_comma_separated_list() {
        assert_eq!("entities,functions".parse::<Roles>().unwrap(), Roles::BOTH);
        assert_eq!("functions, entities".parse::<Roles>().unwrap(), Roles::BOTH);
        assert_eq!("all".parse::<Roles>().unwrap(), Roles::BOTH);
        assert_eq!("entities".parse::<Roles>().unwrap(), Roles::ENTITIES);
        assert!("".parse::<Roles>().unwrap_err().contains("at least one role"));
        assert!("gpu".parse::<Roles>().unwrap_err().contains("unknown role `gpu`"));
    }

    #[test]
    fn every_node_is_in_exactly_one_group() {
        assert_eq!(Roles::BOTH.group(), ScaleGroup::Entities, "a node with entities hosts shards");
        assert_eq!(Roles::ENTITIES.group(), ScaleGroup::Entities);
        assert_eq!(Roles::FUNCTIONS.group(), ScaleGroup::Functions);
        for g in [ScaleGroup::Entities, ScaleGroup::Functions] {
            assert_eq!(g.roles().group(), g, "a node started for a group joins it");
        }
    }

    #[test]
    fn heartbeats_from_before_roles_mean_both() {
        assert_eq!(Roles::from_names(&[]), Roles::BOTH);
        assert_eq!(Roles::from_names(&Roles::FUNCTIONS.names()), Roles::FUNCTIONS);
        assert_eq!(Roles::from_names(&Roles::BOTH.names()), Roles::BOTH);
    }
}
