//! Stateless functions: `async fn call(input) -> output`, with a declared resource need.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::entity::Rejection;

/// What a function needs to run; the runtime places calls on an executor that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Resources {
    /// Any CPU executor.
    #[default]
    Cpu,
    /// A GPU with at least this much free memory (bytes).
    Gpu {
        /// Device memory the function needs, in bytes.
        memory_bytes: u64,
    },
}

/// The device an executor runs a call on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum Device {
    /// The CPU.
    #[default]
    Cpu,
    /// The GPU with this index (as NVML and CUDA number them).
    Gpu(u32),
}

/// What a function knows about the invocation it is serving.
#[derive(Debug, Clone)]
pub struct FnCtx {
    /// The invocation's id (for a batch: the first call's).
    pub invocation_id: String,
    /// Wall-clock time of the invocation, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// The device of the executor running it.
    pub device: Device,
}

/// Why a function call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionError {
    /// The input was refused by the function's rules (HTTP 409).
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The function could not serve the call right now (HTTP 503); retryable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The function failed (HTTP 500).
    #[error("failed: {0}")]
    Failed(String),
}

impl FunctionError {
    /// A rejection with a code and message.
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Rejected(Rejection::new(code, message))
    }
}

/// A stateless function, registered under [`Function::NAME`].
pub trait Function: Send + Sync + 'static {
    /// The name callers use (`POST /v1/functions/{NAME}`), e.g. `product.upsert`.
    const NAME: &'static str;
    /// The input, decoded from JSON or MessagePack.
    type Input: DeserializeOwned + Send + 'static;
    /// The output, encoded to the caller's format.
    type Output: Serialize + Send + 'static;

    /// What the function needs to run. CPU unless overridden.
    fn resources(&self) -> Resources {
        Resources::Cpu
    }

    /// Serves one call.
    fn call(&self, input: Self::Input, ctx: &FnCtx)
    -> impl Future<Output = Result<Self::Output, FunctionError>> + Send;

    /// Most calls [`Function::call_batch`] takes at once; above 1 the
    /// runtime runs the function on executors that batch calls dynamically.
    fn max_batch(&self) -> usize {
        1
    }

    /// Serves several calls at once, one result per input, in order (e.g. one
    /// forward pass of a model). The default serves them one by one.
    fn call_batch(
        &self,
        inputs: Vec<Self::Input>,
        ctx: &FnCtx,
    ) -> impl Future<Output = Vec<Result<Self::Output, FunctionError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(inputs.len());
            for input in inputs {
                out.push(self.call(input, ctx).await);
            }
            out
        }
    }
}
