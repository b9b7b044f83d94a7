#!/usr/bin/env bash
# The main job: set up, print a sample from the base model that ships with charnn, fine-tune it on
# Great Expectations for a few minutes, and print a sample again.
#   CHARNN_DEMO_MINUTES (default 8) bounds the training time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${CHARNN_CORPUS_DIR:-}" ] && [ -d ../shared/corpora ]; then
  export CHARNN_CORPUS_DIR="$PWD/../shared/corpora"
fi
echo "The base model, before any training on Great Expectations:"
.venv/bin/charnn generate base --prime "Pip" --length 300 --temperature 0.5
echo
.venv/bin/charnn train great-expectations --out runs/demo --overwrite --time-limit "${CHARNN_DEMO_MINUTES:-8}"
echo
echo "After training on Great Expectations:"
.venv/bin/charnn generate runs/demo --prime "Pip" --length 500 --temperature 0.5
