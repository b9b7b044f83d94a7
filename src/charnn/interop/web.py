"""A static web folder that generates text in the browser: the ONNX graph of `charnn.interop.onnx`,
run by onnxruntime-web (the files of that npm package, found by `onnxruntime_web_dir`), behind
one page. Any static file host serves it; no server computes anything.

    export_web(ckpt.model, ckpt.vocab, "site")  # then: python -m http.server -d site
"""

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import charnn
from charnn import atomic
from charnn.errors import CharnnError, ConfigError
from charnn.interop.onnx import onnx_bytes, state_names
from charnn.model import CharRNN
from charnn.vocab import Vocabulary

# The files of the npm package onnxruntime-web that the page loads: the script, and the
# WebAssembly build (with its loader) that runs the graph on the CPU in one thread.
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")


def onnxruntime_web_dir() -> Path:
    """Where onnxruntime-web's files are: $CHARNN_ONNXRUNTIME_WEB, else node_modules/onnxruntime-web/dist
    of the charnn source tree (scripts/setup.sh installs it there with npm) or of the current folder."""
    candidates = []
    if os.environ.get("CHARNN_ONNXRUNTIME_WEB"):
        candidates.append(Path(os.environ["CHARNN_ONNXRUNTIME_WEB"]))
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidates.append(root / "node_modules" / "onnxruntime-web" / "dist")
    for folder in candidates:
        if all((folder / name).is_file() for name in ORT_WEB_FILES):
            return folder
    raise CharnnError(
        "onnxruntime-web's files were not found (looked in " + ", ".join(str(c) for c in candidates) + "); "
        "install them with `npm install onnxruntime-web` (scripts/setup.sh does where npm exists) "
        "or set CHARNN_ONNXRUNTIME_WEB to its dist folder"
    )


def export_web(model: CharRNN, vocab: Vocabulary, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a static folder that generates text in the browser: index.html, model.onnx, model.json
    (vocabulary and configuration) and onnxruntime-web's files. Any static file host serves it.

    The folder is written beside `out` under a temporary name, then renamed into place.
    """
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; choose another folder or set `overwrite`")
    ort_dir = onnxruntime_web_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing_folder(out) as tmp:
        (tmp / "model.onnx").write_bytes(onnx_bytes(model, vocab))
        info = {
            "charnn_version": charnn.__version__,
            "vocabulary": vocab.to_json(),
            "model": model.config.to_dict(),
            "inputs": ["tokens", *state_names(model.config.cell)],
        }
        (tmp / "model.json").write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        page = resources.files("charnn.interop").joinpath("page", "index.html").read_bytes()
        (tmp / "index.html").write_bytes(page)
        for name in ORT_WEB_FILES:
            shutil.copyfile(ort_dir / name, tmp / name)
    return out
