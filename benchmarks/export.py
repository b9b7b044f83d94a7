"""Exported models: one stream's characters/s through onnxruntime (CPU) beside charnn's own step and
in the exported web page, and the int8 ONNX file's size and held-out loss change.

Without a CHECKPOINT it trains the reference model (Embedding 256 -> GRU 1024 -> Linear) on
great-expectations for --train-minutes first, so the loss change is that of a model that learned
something. Greedy generation of --length characters after "Pip", one stream, one thread.

    PYTHONPATH=src python benchmarks/export.py [CHECKPOINT] --train-minutes 4 --length 2000
    PYTHONPATH=src python benchmarks/export.py --quick   # a tiny model, seconds: that it runs
"""

import argparse
import functools
import http.server
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.data.dataset import of_checkpoint, open_corpus
from charnn.fast.step import Stepper, resolve_step_precision
from charnn.interop.onnx import OnnxModel, export_onnx
from charnn.interop.web import export_web
from charnn.run_folder import load_checkpoint
from charnn.training import train


def onnx_rate(model: OnnxModel, prime: str, length: int) -> float:
    start = time.perf_counter()
    model.generate_greedy(prime, length)
    return length / (time.perf_counter() - start)


def stepper_rate(ckpt, precision: str, prime: str, length: int) -> float:
    stepper = Stepper(ckpt.model, precision)
    greedy = SampleConfig(temperature=0)
    uniforms = torch.zeros(1)
    start = time.perf_counter()
    logits, state = stepper.prefill(torch.from_numpy(ckpt.vocab.encode(prime))[None])
    for step in range(length):
        chosen = stepper.sample(logits, greedy, uniforms)
        if step + 1 < length:
            logits = stepper.step(chosen, state)
    return length / (time.perf_counter() - start)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm"}  # fmt: skip

    def log_message(self, *args):
        pass


def browser_rate(ckpt, folder: Path, prime: str, length: int) -> float | None:
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    export_web(ckpt.model, ckpt.vocab, folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
            page = browser.new_page()
            page.set_default_timeout(600_000)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
            page.fill("#prompt", prime)
            page.fill("#temperature", "0")
            page.fill("#length", str(length))
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status').textContent === 'done'")
            rate = float(page.get_attribute("#speed", "data-chars-per-second"))
            browser.close()
            return rate
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint or run folder (default: train one)")
    parser.add_argument("--train-minutes", type=float, default=4.0, help="training time without a CHECKPOINT")
    parser.add_argument("--length", type=int, default=2000, help="greedy characters per measurement")
    parser.add_argument("--quick", action="store_true", help="a tiny model and short runs: that it works")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prime = "Pip"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            ckpt = load_checkpoint(args.checkpoint)
        else:
            data = open_corpus("great-expectations")
            size = dict(embedding_dim=8, hidden_size=16) if args.quick else {}
            config = ModelConfig(vocab_size=len(data.vocab), **size)
            options = TrainConfig(max_steps=5, seed=0) if args.quick else TrainConfig(time_limit=args.train_minutes)
            result = train(data, config, options, tmp / "run")
            ckpt = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
        length = 200 if args.quick else args.length
        text = of_checkpoint(ckpt).held_out_text()
        if args.quick:
            text = text[:5000]
        c = ckpt.config
        print(f"model: {c.cell.upper()} {c.num_layers}x{c.hidden_size}, embedding {c.embedding_dim}, "
              f"{len(ckpt.vocab)} characters, {ckpt.model.num_parameters():,} parameters; "
              f"validation loss {ckpt.training.get('val_loss', float('nan')):.4f}")  # fmt: skip

        fp32 = export_onnx(ckpt.model, ckpt.vocab, tmp / "fp32.onnx")
        int8 = export_onnx(ckpt.model, ckpt.vocab, tmp / "int8.onnx", quantize="int8", text=text)
        print(f"\n| file | bytes | held-out loss (nats/char, {len(text):,} characters) |")
        print("|---|---:|---:|")
        print(f"| fp32 ONNX | {fp32.size:,} | {int8.fp32_loss:.5f} |")
        print(
            f"| int8 ONNX | {int8.size:,} ({int8.size / fp32.size:.1%}) | {int8.loss:.5f} ({int8.loss_change:+.3%}) |"
        )

        rows = []
        for name in ("fp32", "int8"):
            model = OnnxModel(tmp / f"{name}.onnx", threads=1)
            model.generate_greedy(prime, 20)  # warm up
            rows.append((f"onnxruntime (CPU, 1 thread), {name} ONNX", onnx_rate(model, prime, length)))
        for precision in dict.fromkeys(["fp32", resolve_step_precision("auto", torch.device("cpu"))]):
            stepper_rate(ckpt, precision, prime, 20)
            rate = stepper_rate(ckpt, precision, prime, length)
            rows.append((f"charnn generate's step (1 thread), Stepper, {precision}", rate))
        browser = browser_rate(ckpt, tmp / "site", prime, length)
        rows.append(("browser page (headless Chromium, onnxruntime-web wasm, 1 thread), fp32 ONNX", browser))
        print(f"\n| one stream, greedy, {length} characters | characters/s |")
        print("|---|---:|")
        for label, rate in rows:
            print(f"| {label} | {'not run (no Chromium or Playwright)' if rate is None else f'{rate:,.0f}'} |")


if __name__ == "__main__":
    main()
