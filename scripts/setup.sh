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
if ! .venv/bin/python -c "import charnn, pytest, hypothesis, fastapi, uvicorn, httpx, openai, schemathesis, playwright" \
    2>/dev/null || ! [ -x .venv/bin/ruff ]; then
  pip install -e ".[dev]"
fi
