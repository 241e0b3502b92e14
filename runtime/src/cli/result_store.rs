//! `result-store`: a standalone process that persists the results nodes
//! publish on `{prefix}.result.{id}` (JetStream, durable consumer) into a
//! local result store and serves them at `GET /v1/invocations/{id}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use axum::extract::{Path, State};
use clap::Args;
use futures::StreamExt;

use crate::error::InvokeError;
use crate::results::{InvocationResult, LocalResultStore, ResultStore};
use crate::wire::Subjects;

/// Flags of `result-store`.
#[derive(Debug, Clone, Args)]
pub struct ResultStoreArgs {
    /// NATS server URL.
    #[arg(long, env = "TESSERA_NATS")]
    pub nats: String,
    /// NATS subject prefix.
    #[arg(long, default_value = "tessera")]
    pub nats_prefix: String,
    /// Directory of the store.
    #[arg(long, default_value = "tessera-results")]
    pub data_dir: PathBuf,
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub http: String,
}

use crate::now_ms;

pub(crate) async fn run(a: ResultStoreArgs) -> anyhow::Result<()> {
    let store: Arc<dyn ResultStore> = Arc::new(LocalResultStore::open(&a.data_dir)?);
    let client = crate::connect::nats(&a.nats, &crate::config::NatsSection::from_env(), "tessera-result-store").await?;
    let js = jetstream::new(client);
    let subjects = Subjects::new(&a.nats_prefix);
    let stream = js
        .get_stream(subjects.result_stream())
        .await
        .with_context(|| format!("no stream {} yet: start a node with --nats first", subjects.result_stream()))?;
    let name = format!("{}-result-store", a.nats_prefix);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects.result(">"),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let listener =
        tokio::net::TcpListener::bind(&a.http).await.with_context(|| format!("cannot listen on {}", a.http))?;
    eprintln!("tessera result-store serving http://{} from {}", listener.local_addr()?, a.data_dir.display());
    let app = axum::Router::new()
        .route(
            "/v1/invocations/{id}",
            axum::routing::get(|State(s): State<Arc<dyn ResultStore>>, Path(id): Path<String>| async move {
                let row = s.get(&id, now_ms()).await.map_err(|e| InvokeError::Unavailable(e.to_string()));
                crate::http::invocation_response(&id, row)
            }),
        )
        .with_state(store.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    loop {
        let mut messages = consumer.messages().await?;
        while let Some(msg) = messages.next().await {
            let Ok(msg) = msg else { continue };
            match tessera_entities::codec::from_msgpack::<InvocationResult>(&msg.payload) {
                Ok(row) => match store.put(row).await {
                    Ok(_) => {
                        let _ = msg.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot store a result; it will be redelivered");
                        let _ = msg.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    }
                },
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable result message dropped");
                    let _ = msg.ack().await;
                }
            }
        }
    }
}
