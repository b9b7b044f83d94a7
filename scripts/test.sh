#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${CHARNN_CORPUS_DIR:-}" ] && [ -d ../shared/corpora ]; then
  export CHARNN_CORPUS_DIR="$PWD/../shared/corpora"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
