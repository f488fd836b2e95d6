#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, pages under docs/) into site/, with every
# warning an error; extra arguments go to mkdocs (e.g. `bash scripts/docs.sh serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# NO_MKDOCS_2_WARNING: mkdocs-material prints a banner about its successor on every build
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false NO_MKDOCS_2_WARNING=1
if [ $# -eq 0 ]; then set -- build --strict; fi
exec .venv/bin/mkdocs "$@"
