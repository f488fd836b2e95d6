#!/usr/bin/env bash
# ruff lint and format check over the whole tree (settings in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
