#!/usr/bin/env bash
# Installs (if needed) and runs the tests: `bash scripts/test.sh` runs the smoke suite;
# extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ $# -eq 0 ]; then set -- -m smoke; fi
exec .venv/bin/python -m pytest "$@"
