"""`charnn train`'s defaults on novels: each text trained for --minutes by the command as shipped.

For each TEXT: run `charnn train TEXT --out RUN --time-limit MINUTES --threads N` with no other
option (so whatever DEFAULT_PRESET says), then report the best held-out loss, the held-out loss at
the run's end (its last evaluation), how far the end is above the best, and the best beside a
Kneser-Ney 5-gram fitted on the same training part. The defaults' promise: at least 12% below the
5-gram within 10 minutes, and an end no more than 2% above the best.

    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/defaults.py ../shared/corpora/dickens/hard-times.txt
    python benchmarks/defaults.py ~/books/*.txt --minutes 10 --threads 2 --preset seed   # the reference, for contrast
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from charnn.data.dataset import open_corpus
from charnn.run_folder import METRICS, load_checkpoint
from charnn.scoring.evaluate import evaluate_text


def run(text: str, out: Path, budget: list[str], threads: int, extra: list[str]) -> dict:
    """Train on `text` with the command's defaults (plus `budget` and `extra` flags); read the run's record."""
    command = [sys.executable, "-m", "charnn", "train", text, "--out", str(out), "--overwrite", *budget,
               "--threads", str(threads), *extra]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    evaluations = [r for r in records if "val_loss" in r]
    best = load_checkpoint(out / "best")
    data = open_corpus(text, vocab=best.vocab, val_fraction=best.training["config"]["val_fraction"])
    report = evaluate_text(best.model, best.vocab, data.held_out_text(), training_text=data.training_text())
    best_loss, end_loss = min(r["val_loss"] for r in evaluations), evaluations[-1]["val_loss"]
    return {
        "text": Path(text).name,
        "characters": data.characters,
        "epochs": round(records[-1]["characters_seen"] / max(1, len(data.train_tokens)), 2),
        "stopped_at_minutes": round(records[-1]["elapsed"] / 60, 1),
        "best_val_loss": best_loss,
        "end_val_loss": end_loss,
        "end_above_best": end_loss / best_loss - 1,
        "ngram_loss": report["ngram_loss"],
        "vs_ngram": best_loss / report["ngram_loss"] - 1,
    }


def table(rows: list[dict]) -> list[str]:
    header = ("text", "characters", "epochs", "minutes", "best val", "end val", "end above best", "5-gram KN",
              "best vs 5-gram")  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (r["text"], f"{r['characters']:,}", r["epochs"], r["stopped_at_minutes"], f"{r['best_val_loss']:.4f}",
                 f"{r['end_val_loss']:.4f}", f"{r['end_above_best']:+.1%}", f"{r['ngram_loss']:.4f}",
                 f"{r['vs_ngram']:+.1%}")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+", help="text files (or corpus names)")
    parser.add_argument("--minutes", type=float, default=10.0, help="`charnn train --time-limit` for each text")
    parser.add_argument("--max-steps", type=int, default=None, help="a budget in steps instead of --minutes (the same "
                        "work however busy the machine is; 2 threads do about 1,000 in 10 minutes here)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args, extra = parser.parse_known_args()  # any other flag goes to `charnn train` (e.g. --preset seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        budget = ["--time-limit", str(args.minutes)] if args.max_steps is None else ["--max-steps", str(args.max_steps)]
        rows = [run(text, out / Path(text).stem, budget, args.threads, extra) for text in args.texts]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"command: charnn train TEXT {' '.join(budget)} --threads {args.threads} {' '.join(extra)}".rstrip())
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
