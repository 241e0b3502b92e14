//! Stateless inference on Tessera's executors: the `embed` function
//! (sentence embeddings with all-MiniLM-L6-v2 on candle, mean pooling, L2
//! normalisation), batched dynamically by the executor that owns the device
//! (a GPU when built with `--features cuda` and one is present, else the CPU),
//! callable sync or async over HTTP and NATS, with async results in the
//! durable result store.
//!
//! ```no_run
//! # fn f() -> anyhow::Result<()> {
//! let dir = inference::model_files::locate(None)?;
//! let embedder = inference::embedder::Embedder::load(&dir, candle_core::Device::Cpu)?;
//! let v = embedder.embed(&["hello world".to_string()])?;
//! assert_eq!(v[0].len(), inference::embedder::DIM);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod demo;
pub mod embedder;
mod function;
pub mod model_files;

use std::path::Path;

pub use function::{Embed, EmbedInput, EmbedOutput, MAX_TEXTS};
use tessera_entities::Registry;

/// The inference application: the `embed` function, its model located from
/// `model_dir` or the defaults (see [`model_files::locate`]).
pub fn registry(model_dir: Option<&Path>) -> anyhow::Result<Registry> {
    let dir = model_files::locate(model_dir)?;
    Ok(Registry::builder().function(Embed::new(dir)).build()?)
}
