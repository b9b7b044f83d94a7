#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The web page tests drive Debian's Chromium, headless (Playwright uses it; it downloads no browser),
# and the web export's tests need npm to fetch onnxruntime-web (scripts/setup.sh runs it). The ARM
# kernels' tests cross-compile them (Debian's aarch64 g++) and run them under QEMU's user-mode emulation.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
  else
    echo "note: ${missing[*]} missing; the tests that need them are skipped (as root: apt-get install ${missing[*]})" >&2
  fi
fi
bash scripts/setup.sh
if [ -z "${CHARNN_CORPUS_DIR:-}" ] && [ -d ../shared/corpora ]; then
  export CHARNN_CORPUS_DIR="$PWD/../shared/corpora"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
