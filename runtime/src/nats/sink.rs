//! The JetStream sink: a built-in projection that publishes the events of
//! chosen entity types to `{p}.events.{type}.{shard}` on the stream
//! `{P}_EVENTS`, each with `Nats-Msg-Id` = `type/id/seq` (JetStream drops a
//! redelivered batch's duplicates inside its window; a consumer
//! deduplicates by the same key beyond it) and a self-describing body
//! ([`EventMessage`], JSON or MessagePack). The checkpoint moves only once
//! JetStream acknowledged every message of the batch.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};
use tessera_entities::{Format, codec};

use super::{NatsError, NatsLink};
use crate::projection::{FeedEvent, Projection, ProjectionBatch, ProjectionError};
use crate::wire;

/// The name of the sink's projection (and of its checkpoints).
pub const SINK_NAME: &str = "jetstream";

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The event's seq in its entity's journal.
    pub seq: u64,
    /// The shard.
    pub shard: u32,
    /// Its offset in the unit's feed.
    pub offset: u64,
    /// The event's type name.
    pub event_type: String,
    /// The event's schema version.
    pub version: u32,
    /// Commit time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The event.
    pub event: serde_json::Value,
}

impl EventMessage {
    /// The message of one feed event (its payload as JSON).
    pub fn from_feed(e: &FeedEvent) -> Self {
        Self {
            entity_type: e.entity_type.clone(),
            entity_id: e.entity_id.clone(),
            seq: e.seq,
            shard: e.shard,
            offset: e.offset,
            event_type: e.event_type.clone(),
            version: e.version,
            timestamp_ms: e.timestamp_ms,
            event: e.json(),
        }
    }
}

/// Publishes events of some types to JetStream.
pub(crate) struct JetStreamSink {
    link: NatsLink,
    types: Vec<String>,
    format: Format,
}

impl JetStreamSink {
    /// Creates the events stream (idempotent) and the sink.
    pub(crate) async fn new(
        link: NatsLink,
        types: Vec<String>,
        format: Format,
        max_age: Duration,
    ) -> Result<Self, NatsError> {
        let s = &link.subjects;
        link.js
            .get_or_create_stream(stream::Config {
                name: s.events_stream(),
                subjects: vec![format!("{}.events.>", s.prefix())],
                duplicate_window: Duration::from_secs(120),
                max_age,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError { url: "-".into(), message: format!("cannot create the events stream: {e}") })?;
        Ok(Self { link, types, format })
    }
}

#[async_trait::async_trait]
impl Projection for JetStreamSink {
    fn name(&self) -> &str {
        SINK_NAME
    }
    fn entity_types(&self) -> Vec<String> {
        self.types.clone()
    }
    async fn handle(&self, batch: ProjectionBatch<'_>, _: &mut Option<Vec<u8>>) -> Result<(), ProjectionError> {
        let subject = self.link.subjects.events(batch.entity_type, batch.shard);
        let mut acks = Vec::with_capacity(batch.events.len());
        for e in batch.events {
            let message = EventMessage::from_feed(e);
            let body = codec::encode(&message, self.format).map_err(|err| ProjectionError::Failed(err.to_string()))?;
            let mut h = HeaderMap::new();
            h.insert(wire::NATS_MSG_ID, e.key().as_str());
            h.insert(wire::CONTENT_TYPE, self.format.content_type());
            let ack = self
                .link
                .js
                .publish_with_headers(subject.clone(), h, body.into())
                .await
                .map_err(|err| ProjectionError::Failed(format!("cannot publish to {subject}: {err}")))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|err| ProjectionError::Failed(format!("JetStream did not store an event: {err}")))?;
        }
        Ok(())
    }
}
