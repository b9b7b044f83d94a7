"""A base model against training from scratch, on texts the base has not seen (issue 27).

For each TEXT, with its last 10% held out as `charnn train` holds it out:
- the base alone on the held-out part (new characters at the odds fine-tuning starts them with);
- `charnn train TEXT --init-from BASE --time-limit M` for each M of --minutes;
- `charnn train TEXT --init-from none --time-limit S` from random weights for each S of --scratch-minutes;
each with its best held-out loss beside a Kneser-Ney 5-gram fitted on the same training part
(the issue's targets: 10 minutes from the base at least 20% below the 5-gram on every text, and 2
minutes from the base below 10 minutes from scratch).

    python benchmarks/base_model.py --base BASE eval/*.txt --minutes 2 10 --scratch-minutes 10 --threads 1

Arms can be split between processes (one runs `--minutes 10 2 --scratch-minutes`, another
`--minutes --scratch-minutes 10`), each with one thread on a 2-core machine. On a machine shared
with other work, budgets in steps (--steps, --scratch-steps) keep the arms equal.
"""

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

from charnn.data.corpus import load_corpus
from charnn.data.dataset import split
from charnn.run_folder import load_checkpoint
from charnn.scoring.evaluate import model_loss
from charnn.scoring.ngram import KneserNey
from charnn.training import initial_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import run  # noqa: E402  (the same runs of `charnn train` as the defaults' benchmark)


def base_alone(base: Path, path: str) -> tuple[float, float]:
    """(The base's loss on the held-out part of the text at `path`, the 5-gram's), both in nats per character."""
    corpus = load_corpus(path)
    model, vocab = initial_model(load_checkpoint(base), corpus.text)
    data = split(corpus, vocab=vocab)
    loss = model_loss(model.eval(), data.val_tokens, seq_len=100)
    ngram = KneserNey(data.training_text(), order=5, discount=0.75).loss(data.held_out_text())
    return loss, ngram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+", help="text files the base has not seen")
    parser.add_argument("--base", type=Path, required=True, help="the base model: a checkpoint or run folder")
    parser.add_argument("--minutes", type=float, nargs="*", default=[2.0, 10.0], help="budgets from the base "
                        "(none: no such arm)")  # fmt: skip
    parser.add_argument("--scratch-minutes", type=float, nargs="*", default=[10.0], help="budgets from scratch")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="budgets from the base in steps, for a "
                        "machine too busy for minutes to be equal (the base's steps cost a little more: its output "
                        "layer has a row for each of its characters)")  # fmt: skip
    parser.add_argument("--scratch-steps", type=int, nargs="+", default=[], help="budgets from scratch in steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args, extra = parser.parse_known_args()  # any other flag goes to every `charnn train` (e.g. --seq-len 200)
    base, scratch = ["--init-from", str(args.base), *extra], ["--init-from", "none", *extra]
    if args.steps:
        arms = [(f"from base, {n} steps", ["--max-steps", str(n)], base) for n in args.steps]
        arms += [(f"scratch, {n} steps", ["--max-steps", str(n)], scratch) for n in args.scratch_steps]
    else:
        arms = [(f"from base, {m:g} min", ["--time-limit", str(m)], base) for m in args.minutes]
        arms += [(f"scratch, {m:g} min", ["--time-limit", str(m)], scratch) for m in args.scratch_minutes]
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"base: {args.base}; each arm `charnn train TEXT BUDGET --threads {args.threads} {' '.join(extra)}`")
    header = ["text", "characters", "5-gram", "base alone", *(label for label, _, _ in arms)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for text in args.texts:
            zero_shot, ngram = base_alone(args.base, text)
            cells = [Path(text).name, f"{len(load_corpus(text).text):,}", f"{ngram:.4f}", _versus(zero_shot, ngram)]
            for index, (_, budget, extra) in enumerate(arms):
                report = run(text, out / f"{Path(text).stem}-{index}", budget, args.threads, extra)
                cells.append(_versus(report["best_val_loss"], ngram))
            print("| " + " | ".join(cells) + " |", flush=True)


def _versus(loss: float, ngram: float) -> str:
    return f"{loss:.4f} ({loss / ngram - 1:+.1%})"


if __name__ == "__main__":
    main()
