//! The embeddings match the reference implementation: sentence-transformers
//! (fixture computed by `tools/reference.py` from the same model files),
//! cosine ≥ 0.999 for every sentence, whether embedded alone or in a batch.

use inference::embedder::{DIM, Embedder, cosine};

#[derive(serde::Deserialize)]
struct Fixture {
    reference: String,
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn model_dir() -> std::path::PathBuf {
    inference::model_files::locate(None).unwrap_or_else(|e| {
        let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("setup.sh");
        assert!(std::process::Command::new("bash").arg(&setup).status().expect("run setup.sh").success(), "{e}");
        inference::model_files::locate(None).expect("model installed by setup.sh")
    })
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fixture: Fixture = serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let e = Embedder::load(&model_dir(), candle_core::Device::Cpu).unwrap();
    let batch = e.embed(&fixture.sentences).unwrap();
    for (i, (got, want)) in batch.iter().zip(&fixture.embeddings).enumerate() {
        assert_eq!(got.len(), DIM);
        let c = cosine(got, want);
        assert!(c >= 0.999, "sentence {i} {:?}: cosine {c} vs {}", fixture.sentences[i], fixture.reference);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised");
    }
    // Alone (no padding) the same as in the padded batch.
    let alone = e.embed(&fixture.sentences[2..3]).unwrap();
    assert!(cosine(&alone[0], &batch[2]) > 0.9999);
}

#[test]
fn missing_model_files_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = inference::model_files::locate(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("setup.sh") && err.contains("model.safetensors"), "{err}");
    assert!(inference::registry(Some(dir.path())).is_err());
}
