#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web page tests drive Debian's Chromium, headless (Playwright uses it; it downloads no browser).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "note: Chromium is missing; tests/test_web.py is skipped (as root: apt-get install chromium)" >&2
  fi
fi
if [ -z "${CHARNN_CORPUS_DIR:-}" ] && [ -d ../shared/corpora ]; then
  export CHARNN_CORPUS_DIR="$PWD/../shared/corpora"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
