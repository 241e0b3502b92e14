//! Sentence embeddings with all-MiniLM-L6-v2 on candle: WordPiece
//! tokenisation (the `tokenizers` crate, truncation at 256 tokens, padding to
//! the longest in the batch), a 6-layer BERT, mean pooling over the attention
//! mask and L2 normalisation — what sentence-transformers does.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The model's `max_seq_length` (sentence_bert_config.json).
pub const MAX_TOKENS: usize = 256;
/// Embedding size.
pub const DIM: usize = 384;

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// Model files are unreadable or inconsistent.
    #[error("cannot load the model from {path}: {message}")]
    Load {
        /// The directory.
        path: String,
        /// Why.
        message: String,
    },
    /// Tokenisation failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// The forward pass failed.
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

/// A loaded model on one device.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Embedder {
    /// Loads the model files in `dir` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, EmbedError> {
        let err = |m: String| EmbedError::Load { path: dir.display().to_string(), message: m };
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(format!("config.json: {e}")))?;
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| err(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| err(format!("truncation: {e}")))?;
        // SAFETY: the file is mapped read-only and not modified while mapped.
        let vb =
            unsafe_mmap(&dir.join("model.safetensors"), &device).map_err(|e| err(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| err(e.to_string()))?;
        Ok(Self { model, tokenizer, device })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Embeds a batch of texts: one L2-normalised vector of [`DIM`] floats each.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, candle_core::Error> {
            let v: Vec<Tensor> = encodings.iter().map(|e| Tensor::new(f(e), &self.device)).collect::<Result<_, _>>()?;
            Tensor::stack(&v, 0)
        };
        let ids = rows(&|e| e.get_ids())?;
        let type_ids = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (batch, tokens, 384)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, tokens, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, 384)
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (batch, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

#[allow(unsafe_code)]
fn unsafe_mmap(path: &Path, device: &Device) -> Result<VarBuilder<'static>, candle_core::Error> {
    // SAFETY: memory-mapping is unsafe because another process could change
    // the file underneath; model files are installed read-only and not
    // rewritten while a node runs.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
