#!/usr/bin/env bash
# The main job on the embedded default: install, train configs/train_qlora.yaml on the
# bundled example data (QLoRA on all-MiniLM-L6-v2), evaluate, and rerank a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/rerankit train --config configs/train_qlora.yaml --output-dir outputs/demo --overwrite
.venv/bin/rerankit rerank --model outputs/demo --docs examples/data/sample_docs.jsonl \
    --query "Which NFL team represented the AFC at Super Bowl 50?" --top-k 5
