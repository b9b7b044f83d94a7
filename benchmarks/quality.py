"""Quality under a fixed wall-clock budget: best validation loss beside n-gram and gzip baselines.

For each corpus: train with RECIPE, `charnn train`'s defaults (the `tuned` preset: the reference
model, GRU 1024, with dropout 0.15, Adam at a constant 2e-3 after 100 warm-up steps, clipping at
1.0, an average of the weights; override any with --set) for
--minutes of wall-clock time on --threads CPU threads, then score the best checkpoint on the
held-out 10% three ways: state carried through the text (the training run's own figure),
nanoGPT's protocol (random 256-character windows from a zero state, seeded), and dynamic
evaluation (Krause et al. 2018); and count invented words in a 2,000-character sample at
temperature 0.5.

--ablation trains RECIPE once whole, once with each of its tricks switched off in turn, and once
with each trick it leaves out added, on one corpus for --minutes (or --max-steps) each, and
prints one table: what a trick earns is how much worse the run is without it.

    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/quality.py              # 15 minutes each
    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/quality.py --minutes 1  # a smoke run
    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/quality.py --ablation --corpora tinyshakespeare
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

from charnn.config import (
    DYNAMIC_SEGMENT,
    DYNAMIC_UPDATE,
    DYNAMIC_UPDATES,
    NANOGPT_WINDOW,
    NANOGPT_WINDOWS,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from charnn.data.corpus import load_corpus, train_length
from charnn.generation import generate_text
from charnn.presets import with_preset
from charnn.run_folder import load_checkpoint
from charnn.scoring.evaluate import evaluate_text, invented_words
from charnn.training import train
from charnn.vocab import Vocabulary

# The recipe: `charnn train`'s defaults (the `tuned` preset), with no epoch limit (the budget stops the run).
RECIPE = {k: v for k, v in with_preset("tuned", {}).items() if k not in ("preset", "epochs")}
# --ablation switches each of the recipe's tricks off in turn ...
TRICKS = {
    "dropout": {"dropout": 0.0},
    "weight average (EMA)": {"ema": None},
    "the initial weights' share in the average": {"ema_init_share": 0.0},
    "gradient clipping": {"grad_clip": None},
    "warm-up": {"warmup_steps": 0},
}
# ... and adds each trick the recipe leaves out, so that those are measured too.
ADDITIONS = {
    "a cosine schedule": {"lr_schedule": "cosine"},
    "the plateau schedule": {"lr_schedule": "plateau", "eval_every": 200},
    "stateful training": {"stateful": True, "seq_len_jitter": 5.0},
    "variational dropout": {"variational_dropout": True},
    "weight drop 0.2": {"weight_drop": 0.2},
    "embedding dropout 0.05": {"embedding_dropout": 0.05},
}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def run(name: str, minutes: float | None, threads: int, options: dict, out: Path, evaluation: dict, sample=True):
    """Train on corpus `name` with `options` for `minutes`; score its best checkpoint (evaluate_text's options)."""
    corpus = load_corpus(name)
    vocab = Vocabulary.from_text(corpus.text)
    train_options = {k: v for k, v in options.items() if k not in MODEL_FIELDS}
    config = TrainConfig(time_limit=minutes, threads=threads, epochs=1000, **train_options)
    model_config = ModelConfig(vocab_size=len(vocab), **{k: v for k, v in options.items() if k in MODEL_FIELDS})
    started = time.perf_counter()
    result = train(corpus, model_config, config, out, overwrite=True)
    seconds = time.perf_counter() - started
    best = load_checkpoint(out / "best")
    cut = train_length(len(corpus.text), config.val_fraction)
    train_text = corpus.text[:cut]
    held_out = corpus.text[cut:]
    started = time.perf_counter()
    report = evaluate_text(
        best.model, best.vocab, held_out, training_text=train_text, seq_len=config.seq_len, **evaluation
    )
    row = {
        "corpus": name,
        "seconds": round(seconds, 1),
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "steps": result.history[-1]["step"],
        "epochs": round(result.history[-1]["characters_seen"] / max(1, len(train_text)), 2),
        "best_val_loss": best.training["val_loss"],
        "best_weights": best.training.get("weights", "raw"),
        "val_bpc": best.training["val_loss"] / math.log(2),
        "window_loss": report.get("window_loss"),
        "window_loss_first_8": report.get("window_loss_first_8"),
        "dynamic_loss": report.get("dynamic_loss"),
        "ngram_loss": report["ngram_loss"],
        "gzip_loss": report["gzip_loss"],
        "vs_ngram": best.training["val_loss"] / report["ngram_loss"] - 1,
        "precision": best.training["precision"],
    }
    if sample:
        text = generate_text(best.model, best.vocab, "\n", length=2000, sampling=SampleConfig(temperature=0.5), seed=0)[
            0
        ]
        share, invented = invented_words(text, train_text)
        row.update(invented_word_share=share, invented_words=sorted(set(invented))[:20], sample=text[:300])
    return row


def _figure(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def quality_table(rows: list[dict]) -> list[str]:
    header = ("corpus", "epochs", "best val", "bits/char", "windows", "dynamic", "5-gram KN", "vs 5-gram", "gzip -9",
              "invented")  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (r["corpus"], r["epochs"], f"{r['best_val_loss']:.4f}", f"{r['val_bpc']:.3f}",
                 _figure(r["window_loss"]), _figure(r["dynamic_loss"]), f"{r['ngram_loss']:.4f}",
                 f"{r['vs_ngram']:+.1%}", f"{r['gzip_loss']:.4f}", f"{r['invented_word_share']:.2%}")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def ablation_table(rows: list[dict]) -> list[str]:
    header = ("arm", "steps", "best val", "weights", "windows", "dynamic", "vs recipe")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    whole = rows[0]["best_val_loss"]
    for r in rows:
        cells = (r["arm"], r["steps"], f"{r['best_val_loss']:.4f}", r["best_weights"], _figure(r["window_loss"]),
                 _figure(r["dynamic_loss"]), f"{r['best_val_loss'] - whole:+.4f}")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="tinyshakespeare,great-expectations")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per corpus, or per arm")
    parser.add_argument("--max-steps", type=int, default=None, help="a budget in optimizer steps instead of minutes "
                        "(the same work for every arm however busy the machine is)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    # Any ModelConfig / TrainConfig option, e.g. --set hidden_size=512 --set dropout=0.2
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--ablation", action="store_true", help="train RECIPE whole and without each trick in turn "
                        "on the first of --corpora; --set changes the recipe")  # fmt: skip
    parser.add_argument("--window", type=int, default=NANOGPT_WINDOW, help="nanoGPT protocol's window length")
    parser.add_argument("--num-windows", type=int, default=NANOGPT_WINDOWS, help="windows the protocol scores")
    parser.add_argument("--no-dynamic", action="store_true", help="leave out dynamic evaluation (the slowest figure)")
    parser.add_argument("--dynamic-segment", type=int, default=DYNAMIC_SEGMENT)
    parser.add_argument("--dynamic-update", choices=list(DYNAMIC_UPDATES), default=DYNAMIC_UPDATE)
    parser.add_argument("--dynamic-lr", type=float, default=None, help="default: the update's (charnn.config)")
    args = parser.parse_args()
    options = dict(RECIPE)
    for item in args.set:
        key, value = item.split("=", 1)
        options[key] = json.loads(value)
    minutes = args.minutes
    if args.max_steps is not None:
        options["max_steps"], minutes = args.max_steps, None
    evaluation = {"window": args.window, "num_windows": args.num_windows, "dynamic": not args.no_dynamic,
                  "dynamic_segment": args.dynamic_segment, "dynamic_update": args.dynamic_update,
                  "dynamic_lr": args.dynamic_lr}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.ablation:
            name = args.corpora.split(",")[0]
            arms = {"recipe": {}, **{f"without {trick}": off for trick, off in TRICKS.items()},
                    **{f"with {trick}": on for trick, on in ADDITIONS.items()}}  # fmt: skip
            rows = []
            for i, (arm, change) in enumerate(arms.items()):
                if change and all(options.get(k) == v for k, v in change.items()):
                    continue  # the recipe (with --set) is so already: nothing to compare
                row = run(name, minutes, args.threads, {**options, **change}, out / f"arm{i}", evaluation, False)
                rows.append({"arm": arm, **row})
        else:
            rows = [run(n, minutes, args.threads, options, out / n, evaluation) for n in args.corpora.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    budget = f"{args.max_steps} steps" if minutes is None else f"{minutes} minutes"
    what = f"{budget} per {'arm on ' + rows[0]['corpus'] if args.ablation else 'corpus'}"
    print(f"budget: {what}; options: {json.dumps(options)}")
    lr = DYNAMIC_UPDATES[args.dynamic_update][0] if args.dynamic_lr is None else args.dynamic_lr
    dynamic = "off" if args.no_dynamic else f"{args.dynamic_update} lr {lr:g}, segments of {args.dynamic_segment}"
    print(f"windows: {args.num_windows} of {args.window} characters from zero state (nanoGPT's protocol); "
          f"dynamic: {dynamic}")  # fmt: skip
    print("\n".join(ablation_table(rows) if args.ablation else quality_table(rows)))
    if args.ablation:
        return
    for r in rows:
        print(f"\n{r['corpus']} sample at temperature 0.5 (invented: {', '.join(r['invented_words']) or 'none'}):")
        print(r["sample"])


if __name__ == "__main__":
    main()
