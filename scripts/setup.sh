#!/usr/bin/env bash
# Create .venv with charnn, its dependencies and the dev tools. Safe to run again: it only
# installs what is missing. Without a GPU it installs PyTorch's CPU build, not a
# multi-gigabyte CUDA one (pip finds the 2.13.0+cpu wheel on machines that keep one locally;
# elsewhere set CHARNN_TORCH_INDEX=https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${CHARNN_TORCH_INDEX:-}" ]; then
    pip install "torch==2.13.0" --index-url "$CHARNN_TORCH_INDEX"
  else
    pip install "torch==2.13.0"
  fi
fi
# Reinstall whenever pyproject.toml changes, so new dependencies arrive in an old .venv.
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat .venv/.charnn-installed 2>/dev/null)" != "$stamp" ]; then
  pip install -e ".[dev]"
  echo "$stamp" > .venv/.charnn-installed
fi
# Compile the kernels now (the int8 generation step and the GRU training gates; under a
# minute each, once per machine and source version)
# rather than in the middle of the first `charnn generate` or `charnn train`.
CHARNN_KERNEL_WAIT=900 .venv/bin/python -m charnn.fast.build
# onnxruntime-web's files for `charnn export --format web` (the page runs them in the browser),
# pinned by package-lock.json, into node_modules/ (git-ignored). Only where npm exists:
# scripts/test.sh installs npm first, since the web export's tests need the files.
if command -v npm >/dev/null; then
  lock="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ "$(cat node_modules/.charnn-installed 2>/dev/null)" != "$lock" ]; then
    npm ci --silent --no-audit --no-fund --ignore-scripts
    echo "$lock" > node_modules/.charnn-installed
  fi
fi
