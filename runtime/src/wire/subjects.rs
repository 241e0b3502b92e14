//! NATS subject, stream and consumer names under a prefix.

/// Subject names under a prefix (default `tessera`).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{p}.cmd.{type}.{shard}`: commands of one shard (request/reply).
    pub fn command(&self, entity_type: &str, shard: u32) -> String {
        format!("{}.cmd.{entity_type}.{shard}", self.prefix)
    }
    /// `{p}.call.{function}`: sync function calls (request/reply).
    pub fn call(&self, function: &str) -> String {
        format!("{}.call.{function}", self.prefix)
    }
    /// `{p}.invoke.{function}`: async function calls (JetStream).
    pub fn invoke(&self, function: &str) -> String {
        format!("{}.invoke.{function}", self.prefix)
    }
    /// `{p}.result.{id}`: results of async invocations (JetStream).
    pub fn result(&self, invocation_id: &str) -> String {
        format!("{}.result.{invocation_id}", self.prefix)
    }
    /// `{p}.metrics.{node}`: a node's load, once a second (JSON).
    pub fn metrics(&self, node: &str) -> String {
        format!("{}.metrics.{node}", self.prefix)
    }
    /// `{p}.dlq.{function}`: invocations that failed every delivery.
    pub fn dead_letter(&self, function: &str) -> String {
        format!("{}.dlq.{function}", self.prefix)
    }
    /// `{p}.events.{type}.{shard}`: the events the JetStream sink publishes.
    pub fn events(&self, entity_type: &str, shard: u32) -> String {
        format!("{}.events.{entity_type}.{shard}", self.prefix)
    }
    /// The stream of published events.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_base())
    }
    /// `{p}.acmd.{type}.{group}.{shard}`: async entity commands of one unit
    /// (JetStream), `group` = `shard % groups` (`nats.command_groups`, 64 by
    /// default: one consumer per group).
    pub fn entity_command(&self, entity_type: &str, shard: u32, groups: u32) -> String {
        format!("{}.acmd.{entity_type}.{}.{shard}", self.prefix, shard % groups.max(1))
    }
    /// What the consumer of one group of a type's async commands takes.
    pub fn entity_command_group(&self, entity_type: &str, group: u32) -> String {
        format!("{}.acmd.{entity_type}.{group}.*", self.prefix)
    }
    /// The stream of async entity commands.
    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.stream_base())
    }
    /// The durable consumer of one group of a type's async commands (the
    /// owner of the group's first unit pulls it).
    pub fn command_consumer(&self, entity_type: &str, group: u32) -> String {
        format!("{}-acmd-{entity_type}-g{group}", self.prefix).replace(['.', '*', '>', ' '], "-")
    }
    /// The stream of async invocations.
    pub fn invoke_stream(&self) -> String {
        format!("{}_INVOKE", self.stream_base())
    }
    /// The stream of results.
    pub fn result_stream(&self) -> String {
        format!("{}_RESULTS", self.stream_base())
    }
    /// The durable consumer every node pulls async invocations from.
    pub fn invoke_consumer(&self) -> String {
        format!("{}-invokers", self.prefix.replace('.', "-"))
    }
    fn stream_base(&self) -> String {
        self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
    }
}
