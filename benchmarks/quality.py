"""Quality under a fixed wall-clock budget: best validation loss beside n-gram and gzip baselines.

For each corpus: train the reference model (GRU 1024) with dropout 0.25, Adam at 2e-3 with
warm-up, a plateau schedule and gradient clipping (override any with --set) for --minutes of
wall-clock time on --threads CPU threads, then score the best checkpoint on the held-out
10% and count invented words in a 2,000-character sample at temperature 0.5.

    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/quality.py              # 15 minutes each
    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/quality.py --minutes 1  # a smoke run
"""

import argparse
import dataclasses
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.corpus import load_corpus
from charnn.data import split
from charnn.evaluate import evaluate_text, invented_words
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.train import train
from charnn.vocab import Vocabulary

QUALITY_OPTIONS = {"lr": 2e-3, "lr_schedule": "plateau", "warmup_steps": 100, "grad_clip": 1.0, "eval_every": 200}


def run(name: str, minutes: float, threads: int, model_options: dict, train_options: dict, out: Path) -> dict:
    corpus = load_corpus(name)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(time_limit=minutes, threads=threads, epochs=1000, **train_options)
    model_config = ModelConfig(vocab_size=len(vocab), **model_options)
    started = time.perf_counter()
    result = train(corpus, vocab, model_config, config, out / name, overwrite=True)
    seconds = time.perf_counter() - started
    best = load_checkpoint(out / name / "best")
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    train_part, _ = split(tokens, config.val_fraction)
    train_text = corpus.text[: len(train_part)]
    held_out = corpus.text[len(train_part) :]
    report = evaluate_text(best.model, best.vocab, held_out, training_text=train_text, seq_len=config.seq_len)
    sample = generate_text(best.model, best.vocab, "\n", length=2000, sampling=SampleConfig(temperature=0.5), seed=0)[0]
    share, invented = invented_words(sample, train_text)
    return {
        "corpus": name,
        "seconds": round(seconds, 1),
        "steps": result.history[-1]["step"],
        "epochs": round(result.history[-1]["characters_seen"] / max(1, len(train_text)), 2),
        "best_val_loss": best.training["val_loss"],
        "val_bpc": best.training["val_loss"] / math.log(2),
        "ngram_loss": report["ngram_loss"],
        "gzip_loss": report["gzip_loss"],
        "vs_ngram": best.training["val_loss"] / report["ngram_loss"] - 1,
        "invented_word_share": share,
        "invented_words": sorted(set(invented))[:20],
        "sample": sample[:300],
        "precision": best.training["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="tinyshakespeare,great-expectations")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    # Any ModelConfig / TrainConfig option, e.g. --set hidden_size=512 --set dropout=0.2
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    model_fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    # The reference model with the training options that did best under the budget (RESULTS.md).
    model_options, train_options = {"dropout": 0.25}, dict(QUALITY_OPTIONS)
    for item in args.set:
        key, value = item.split("=", 1)
        (model_options if key in model_fields else train_options)[key] = json.loads(value)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = [run(n, args.minutes, args.threads, model_options, train_options, out) for n in args.corpora.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    options = {**model_options, **train_options}
    print(f"budget: {args.minutes} minutes per corpus; options: {json.dumps(options)}")
    header = ("corpus", "epochs", "best val", "bits/char", "5-gram KN", "vs 5-gram", "gzip -9", "invented")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = (r["corpus"], r["epochs"], f"{r['best_val_loss']:.4f}", f"{r['val_bpc']:.3f}", f"{r['ngram_loss']:.4f}",
                 f"{r['vs_ngram']:+.1%}", f"{r['gzip_loss']:.4f}", f"{r['invented_word_share']:.2%}")  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for r in rows:
        print(f"\n{r['corpus']} sample at temperature 0.5 (invented: {', '.join(r['invented_words']) or 'none'}):")
        print(r["sample"])


if __name__ == "__main__":
    main()
