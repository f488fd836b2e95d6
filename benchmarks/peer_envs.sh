#!/usr/bin/env bash
# Builds the sentence-transformers peers' own environments for benchmarks/inference.py:
#   .peers/st-openvino  sentence-transformers[openvino] (optimum-intel pins transformers 5.5.x)
#   .peers/st-onnx      sentence-transformers[onnx]     (optimum-onnx pins transformers < 4.58)
#   .peers/infinity     infinity-emb[all], the serving peer of benchmarks/server.py --infinity
#                       (transformers 4.47, numpy < 2)
# Neither pin fits rerankit's transformers, hence separate environments. torch is pinned to the
# CPU build first; torchvision (pulled by optimum) is removed: its pinned wheel breaks
# transformers' import, and nothing here needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
for extra in openvino onnx; do
  env=.peers/st-$extra
  [ -x "$env/bin/python" ] || "$PY" -m venv "$env"
  "$env/bin/python" -m pip install -q --upgrade pip
  "$env/bin/python" -m pip install -q "torch==2.13.0"
  "$env/bin/python" -m pip install -q "torch==2.13.0" "sentence-transformers[$extra]"
  # static int8 (optimum-intel's quantizer) takes its calibration set as a datasets.Dataset;
  # optimum-intel wants huggingface-hub < 1.22, which a bare datasets install would upgrade
  [ "$extra" != openvino ] || "$env/bin/python" -m pip install -q "torch==2.13.0" "huggingface-hub<1.22" datasets
  "$env/bin/python" -m pip uninstall -q -y torchvision 2>/dev/null || true
  "$env/bin/python" -c "import sentence_transformers, transformers; print('$env', sentence_transformers.__version__, transformers.__version__)"
done
env=.peers/infinity
[ -x "$env/bin/python" ] || "$PY" -m venv "$env"
"$env/bin/python" -m pip install -q --upgrade pip
"$env/bin/python" -m pip install -q "torch==2.13.0" "infinity-emb[all]"
"$env/bin/python" -m pip uninstall -q -y torchvision 2>/dev/null || true
"$env/bin/python" -c "import infinity_emb; print('$env', infinity_emb.__version__)"
