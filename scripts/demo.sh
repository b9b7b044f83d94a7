#!/usr/bin/env bash
# The main job: set up, train on Great Expectations for a few minutes, print a sample.
#   CHARNN_DEMO_MINUTES (default 8) bounds the training time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${CHARNN_CORPUS_DIR:-}" ] && [ -d ../shared/corpora ]; then
  export CHARNN_CORPUS_DIR="$PWD/../shared/corpora"
fi
.venv/bin/charnn train great-expectations --out runs/demo --overwrite --time-limit "${CHARNN_DEMO_MINUTES:-8}"
echo
.venv/bin/charnn generate runs/demo --prime "Pip" --length 500 --temperature 0.5
