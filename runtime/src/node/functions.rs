//! Stateless functions: run as tasks (bounded by `function_concurrency`)
//! or, when they batch or need a device, on executors.

use std::time::Instant;

use tessera_entities::{FnCtx, Format};
use tracing::Instrument;

use super::{InFlight, Node, new_invocation_id};
use crate::error::InvokeError;
use crate::now_ms;

impl Node {
    /// Calls a stateless function; the output is MessagePack.
    pub async fn call_function(&self, name: &str, body: &[u8], format: Format) -> Result<Vec<u8>, InvokeError> {
        self.call_function_as(name, body, format, new_invocation_id()).await
    }

    /// Calls a stateless function as invocation `invocation_id`.
    pub async fn call_function_as(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
    ) -> Result<Vec<u8>, InvokeError> {
        self.call_function_placed(name, body, format, invocation_id).await.0
    }

    /// Calls a function; also says which executor ran it (`tasks` for
    /// functions that run directly as tasks).
    pub(super) async fn call_function_placed(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
    ) -> (Result<Vec<u8>, InvokeError>, String) {
        let placed = std::sync::Mutex::new(String::from("tasks"));
        let started = Instant::now();
        let span = crate::telemetry::invocation_span!("function", function = %name, invocation_id = %invocation_id);
        let result = self.call_inner(name, body, format, invocation_id, &placed).instrument(span).await;
        self.record("function", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        let executor = placed.into_inner().unwrap_or_else(|p| p.into_inner());
        (result, executor)
    }

    async fn call_inner(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
        placed: &std::sync::Mutex<String>,
    ) -> Result<Vec<u8>, InvokeError> {
        let n = &self.inner;
        let f = n.registry.function(name).ok_or_else(|| InvokeError::UnknownFunction(name.into()))?;
        let input = f
            .decode_input(body, format)
            .map_err(|e| InvokeError::Malformed(format!("malformed `{name}` input: {e}")))?;
        let _in_flight = InFlight::enter(n)?;
        let timeout = n.config.invocation_timeout();
        if !n.config.cluster.roles.functions() {
            *placed.lock().unwrap_or_else(|p| p.into_inner()) = "remote".into();
            return self.call_remote(name, body, format, &invocation_id, timeout).await;
        }
        let work = async {
            let _permit =
                n.functions.acquire().await.map_err(|_| InvokeError::Unavailable("node shutting down".into()))?;
            n.metrics.functions_running.inc();
            if f.max_batch() > 1 || !matches!(f.resources(), tessera_entities::Resources::Cpu) {
                // Batching or device-bound functions run on executors.
                let r = n.executors.call(f.clone(), input, invocation_id).in_current_span().await;
                n.metrics.functions_running.dec();
                return r.map(|(out, executor)| {
                    *placed.lock().unwrap_or_else(|p| p.into_inner()) = executor;
                    out
                });
            }
            let ctx = FnCtx { invocation_id, now_ms: now_ms(), device: tessera_entities::Device::Cpu };
            let joined = tokio::spawn(f.call(input, ctx).in_current_span()).await;
            n.metrics.functions_running.dec();
            match joined {
                Ok(r) => r.map_err(InvokeError::from),
                Err(e) if e.is_panic() => {
                    n.metrics.handler_panics.inc();
                    Err(InvokeError::HandlerPanicked(format!("function `{name}` panicked")))
                }
                Err(e) => Err(InvokeError::Internal(e.to_string())),
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            InvokeError::Timeout(format!("function `{name}` took longer than {} ms", timeout.as_millis()))
        })?
    }

    /// Runs the call on a node of the functions role (this node has not
    /// got the role). While none answers (the group is scaled to zero, or
    /// its nodes are starting) the call waits, counted in
    /// `tessera_functions_unplaced` (the autoscaler's backlog for that
    /// group), and tries again until its deadline.
    async fn call_remote(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, InvokeError> {
        struct Unplaced(prometheus::IntGauge);
        impl Drop for Unplaced {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let n = &self.inner;
        let Some(forwarder) = &n.forwarder else {
            return Err(InvokeError::Unavailable(format!(
                "function `{name}`: this node has no functions role and no way to reach a node that has"
            )));
        };
        let started = Instant::now();
        let mut pause = std::time::Duration::from_millis(50);
        let mut unplaced = None;
        loop {
            if let Some(out) = forwarder.function(name, body.to_vec(), format, invocation_id).await? {
                return Ok(out);
            }
            if started.elapsed() + pause >= timeout {
                return Err(InvokeError::Unavailable(format!(
                    "function `{name}`: no node of the functions role answered within {} ms (start one, or let the autoscaler scale the functions group)",
                    timeout.as_millis()
                )));
            }
            if unplaced.is_none() {
                n.metrics.functions_unplaced.inc();
                unplaced = Some(Unplaced(n.metrics.functions_unplaced.clone()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
    }
}
