//! `embed`: the stateless function, batched by the runtime's executors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tessera_entities::{Device, FnCtx, Function, FunctionError, Resources};

use crate::embedder::{DIM, Embedder};

/// Most texts in one call.
pub const MAX_TEXTS: usize = 256;

/// Input: texts to embed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedInput {
    /// The texts.
    pub texts: Vec<String>,
}

/// Output: one L2-normalised 384-float vector per text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedOutput {
    /// The embeddings, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Their size (384).
    pub dim: usize,
}

/// The `embed` function: all-MiniLM-L6-v2, loaded once per device it runs on.
pub struct Embed {
    dir: PathBuf,
    models: Mutex<HashMap<Device, Arc<Embedder>>>,
}

impl Embed {
    /// A function reading the model from `dir` (see [`crate::model_files::locate`]).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, models: Mutex::new(HashMap::new()) }
    }

    /// The model for a device, loaded on first use.
    pub fn model(&self, device: Device) -> Result<Arc<Embedder>, FunctionError> {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = models.get(&device) {
            return Ok(m.clone());
        }
        let candle_device = match device {
            Device::Cpu => candle_core::Device::Cpu,
            Device::Gpu(i) => candle_core::Device::new_cuda(i as usize).map_err(|e| {
                FunctionError::Unavailable(format!("GPU {i}: {e} (build with `--features cuda` to run on GPUs)"))
            })?,
        };
        let m = Arc::new(Embedder::load(&self.dir, candle_device).map_err(|e| FunctionError::Failed(e.to_string()))?);
        tracing::info!(?device, dir = %self.dir.display(), "embedding model loaded");
        models.insert(device, m.clone());
        Ok(m)
    }
}

fn check(input: &EmbedInput) -> Result<(), FunctionError> {
    if input.texts.is_empty() {
        return Err(FunctionError::rejected("no_texts", "texts must hold at least one text"));
    }
    if input.texts.len() > MAX_TEXTS {
        return Err(FunctionError::rejected("too_many_texts", format!("at most {MAX_TEXTS} texts per call")));
    }
    Ok(())
}

impl Function for Embed {
    const NAME: &'static str = "embed";
    type Input = EmbedInput;
    type Output = EmbedOutput;

    fn resources(&self) -> Resources {
        Resources::Gpu { memory_bytes: 512 << 20 }
    }

    fn max_batch(&self) -> usize {
        64
    }

    async fn call(&self, input: EmbedInput, ctx: &FnCtx) -> Result<EmbedOutput, FunctionError> {
        self.call_batch(vec![input], ctx).await.pop().unwrap_or_else(|| Err(FunctionError::Failed("no result".into())))
    }

    /// One forward pass over every text of every call in the batch.
    async fn call_batch(&self, inputs: Vec<EmbedInput>, ctx: &FnCtx) -> Vec<Result<EmbedOutput, FunctionError>> {
        let checks: Vec<Result<(), FunctionError>> = inputs.iter().map(check).collect();
        let texts: Vec<String> =
            inputs.iter().zip(&checks).filter(|(_, c)| c.is_ok()).flat_map(|(i, _)| i.texts.iter().cloned()).collect();
        let model = match self.model(ctx.device) {
            Ok(m) => m,
            Err(e) => return inputs.iter().map(|_| Err(e.clone())).collect(),
        };
        let embedded = tokio::task::spawn_blocking(move || model.embed(&texts)).await;
        let mut vectors = match embedded {
            Ok(Ok(v)) => v.into_iter(),
            Ok(Err(e)) => return inputs.iter().map(|_| Err(FunctionError::Failed(e.to_string()))).collect(),
            Err(e) => {
                return inputs.iter().map(|_| Err(FunctionError::Failed(format!("embedding task: {e}")))).collect();
            }
        };
        inputs
            .iter()
            .zip(checks)
            .map(|(input, c)| {
                c?;
                let embeddings: Vec<Vec<f32>> = vectors.by_ref().take(input.texts.len()).collect();
                Ok(EmbedOutput { embeddings, dim: DIM })
            })
            .collect()
    }
}
