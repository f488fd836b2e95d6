#!/usr/bin/env bash
# Creates .venv (if missing) and installs rerankit with every extra (the dev extra takes them all).
# torch is pinned and installed first, so that no later resolve picks another build. On the
# standard package index Linux torch wheels pull CUDA packages: set TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) to take torch from PyTorch's CPU wheel index instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
.venv/bin/python -m pip install -q -e ".[dev]"
