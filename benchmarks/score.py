"""Scoring: `charnn score`'s characters per second beside training's, and lines from another author found by --by-line.

Speed: a model of the reference's size (Embedding 256 -> GRU 1024 -> Linear, freshly initialised:
speed does not depend on what the weights learned) scores --chars characters of Great Expectations
with `charnn score CKPT TEXT` in a subprocess, timed from start to exit (start-up and loading
included), in rounds alternating with `charnn.training.train`'s characters per second
(`benchmarks/speed.py`'s measure) on the same threads; each keeps its best round. fp32 (the plain
model) is timed once, on the same text.

Anomaly detection, as a user would try it: a model trained on Great Expectations' training part
(--run, or trained here for --minutes on one thread) scores its held-out part with 20 lines of
tinyshakespeare (at least 30 characters each) inserted between lines at random places; how many of
the 20 does `charnn score --by-line` rank among its 40 most surprising lines? It also reports the
held-out bits per character by every route (evaluate; score exact, 64 pieces, int8).

    CHARNN_CORPUS_DIR=../shared/corpora PYTHONPATH=src python benchmarks/score.py
    CHARNN_CORPUS_DIR=../shared/corpora PYTHONPATH=src python benchmarks/score.py --run runs/ge --only anomaly
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import charnn_training_rate, machine  # noqa: E402

from charnn.checkpoint import save_checkpoint  # noqa: E402
from charnn.config import ModelConfig, TrainConfig  # noqa: E402
from charnn.data.corpus import load_corpus  # noqa: E402
from charnn.data.dataset import open_corpus  # noqa: E402
from charnn.model import CharRNN  # noqa: E402
from charnn.run_folder import load_checkpoint  # noqa: E402
from charnn.scoring.evaluate import evaluate_text  # noqa: E402
from charnn.scoring.score import ScoreConfig, ScoreTotals, score  # noqa: E402
from charnn.training import train  # noqa: E402
from charnn.vocab import Vocabulary  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
_SUMMARY = re.compile(r"scored ([\d,]+) characters: ([\d,.]+) bits, ([\d.]+) bits/char")


def charnn(*args: str, threads: int, text_input: str | None = None) -> tuple[str, float]:
    """stdout of `python -m charnn ARGS` and its wall-clock seconds."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "charnn", *args], capture_output=True, text=True, env=env,
                            input=text_input)  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"charnn {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout, seconds


def speed(chars: int, threads: int, repeats: int, steps: int, work: Path) -> None:
    corpus = load_corpus("great-expectations")
    text = (corpus.text * (chars // len(corpus.text) + 1))[:chars]
    (work / "text.txt").write_text(text, encoding="utf-8")
    vocab = Vocabulary.from_text(corpus.text)
    torch.manual_seed(0)
    save_checkpoint(work / "reference", CharRNN(ModelConfig(vocab_size=len(vocab))), vocab, training={}, corpus={})
    torch.set_num_threads(threads)
    best = {"training": 0.0, "score": 0.0}
    for _ in range(repeats):
        best["training"] = max(best["training"], charnn_training_rate(corpus, vocab, steps))
        _, seconds = charnn("score", str(work / "reference"), str(work / "text.txt"), threads=threads)
        best["score"] = max(best["score"], len(text) / seconds)
    _, seconds = charnn("score", str(work / "reference"), str(work / "text.txt"), "--precision", "fp32",
                        threads=threads)  # fmt: skip
    fp32 = len(text) / seconds
    print(f"machine: {machine()}; {threads} thread(s); text: {len(text):,} characters of {corpus.name}")
    print("| characters/s | figure | vs training |")
    print("|---|---:|---:|")
    print(f"| training (train(), batch 64 x window 100, precision auto, best of {repeats}) | "
          f"{best['training']:,.0f} | 1.00x |")  # fmt: skip
    print(f"| charnn score, --precision auto (best of {repeats}) | {best['score']:,.0f} | "
          f"{best['score'] / best['training']:.2f}x |")  # fmt: skip
    print(f"| charnn score, --precision fp32 (once) | {fp32:,.0f} | {fp32 / best['training']:.2f}x |")


def trained_run(run: Path | None, minutes: float, work: Path) -> Path:
    if run is not None:
        return run
    data = open_corpus("great-expectations")
    config = TrainConfig(time_limit=minutes, threads=1, epochs=1000, lr=2e-3, precision="fp32")
    model_config = ModelConfig(vocab_size=len(data.vocab), embedding_dim=64, hidden_size=256)
    train(data, model_config, config, work / "ge")
    return work / "ge"


def anomaly(run: Path, inserted: int, top: int, seed: int) -> None:
    ckpt = load_checkpoint(run)
    data = open_corpus("great-expectations")
    held_out = data.held_out_text().splitlines()
    others = [line for line in load_corpus("tinyshakespeare").text.splitlines() if len(line) >= 30]
    rng = random.Random(seed)
    picked = rng.sample(others, inserted)
    # Places between lines of the held-out text, each one taking one of the picked lines.
    places = sorted(rng.sample(range(1, len(held_out)), inserted), reverse=True)
    lines = list(held_out)
    for place, line in zip(places, picked, strict=True):
        lines.insert(place, line)
    marked = {i + 1 for i, line in enumerate(lines) if line in set(picked)}
    text = "\n".join(lines) + "\n"
    val_loss = ckpt.training.get("val_loss", float("nan"))
    print(f"model: {run} ({val_loss:.4f} nats/char held out); text: the held-out part, {len(held_out):,} lines, "
          f"with {inserted} lines of tinyshakespeare inserted (seed {seed})")  # fmt: skip
    for options in ([], ["--min-chars", "20"]):
        out, seconds = charnn("score", str(run), "-", "--by-line", "--json", *options, threads=1, text_input=text)
        ranking = [json.loads(line)["line"] for line in out.splitlines()]
        found = [rank + 1 for rank, number in enumerate(ranking) if number in marked]
        print(f"charnn score --by-line {' '.join(options)}: inserted lines among the {top} most surprising of "
              f"{len(ranking):,}: {sum(rank <= top for rank in found)} of {inserted} ({seconds:.1f} s)")  # fmt: skip
        print(f"  their ranks: {found}")
        others_shown = [(rank, n) for rank, n in enumerate(ranking[:top], start=1) if n not in marked][:8]
        for rank, number in others_shown:
            print(f"  not inserted, rank {rank}: line {number}: {lines[number - 1][:70]}")

    # The held-out figure by each route.
    held_text = data.held_out_text()
    report = evaluate_text(ckpt.model, ckpt.vocab, held_text, training_text=None)
    print(f"held-out bits/char: charnn evaluate {report['bpc']:.6f}")
    for label, config in (
        ("score, exact (streams 1, fp32)", ScoreConfig(top_k=0, streams=1)),
        ("score, 64 pieces (fp32)", ScoreConfig(top_k=0, streams=64)),
        ("score, 64 pieces (auto)", ScoreConfig(top_k=0, streams=64, precision="auto")),
    ):
        totals = ScoreTotals()
        for record in score(ckpt.model, ckpt.vocab, held_text, config):
            totals.add(record)
        print(f"  {label}: {totals.bits_per_character:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("speed", "anomaly"), help="run one part")
    parser.add_argument("--chars", type=int, default=1_000_000, help="characters to score for speed (default 1 MB)")
    parser.add_argument("--threads", type=int, default=1, help="threads for the speed rows (default: 1)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds of the speed rows (default: 2)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per round (default: 30)")
    parser.add_argument("--run", type=Path, help="a run trained on great-expectations (default: train one here)")
    parser.add_argument("--minutes", type=float, default=4, help="training time when no --run is given")
    parser.add_argument("--seed", type=int, default=0, help="which lines are inserted, and where")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if args.only in (None, "speed"):
            speed(args.chars, args.threads, args.repeats, args.steps, Path(work))
        if args.only in (None, "anomaly"):
            anomaly(trained_run(args.run, args.minutes, Path(work)), 20, 40, args.seed)


if __name__ == "__main__":
    main()
