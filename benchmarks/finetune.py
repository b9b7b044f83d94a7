"""Fine-tuning against training from scratch: the same architecture, text and time budget.

1. The parent: train a model on --parent-corpus (Great Expectations) for --parent-minutes
   (skipped when --parent names an existing checkpoint or run folder).
2. The small text: --chars characters of --novel from --offset on (past the title pages),
   written to a file; its last 10% is held out, the same part in both runs.
3. Fine-tune the parent on it for --minutes (`charnn.training.finetune`), and train the same
   architecture from random weights on it for --minutes (`charnn.training.train`), with the same
   training options. Report each run's best held-out loss, and the parent's loss on the
   held-out text before any fine-tuning.

    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/finetune.py                       # about 9 minutes
    CHARNN_CORPUS_DIR=../shared/corpora python benchmarks/finetune.py --parent-minutes 0.2 --minutes 0.2  # smoke
"""

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.data.dataset import of_checkpoint, split
from charnn.run_folder import load_checkpoint
from charnn.scoring.evaluate import model_loss
from charnn.training import finetune, initial_model, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parent", type=Path, help="an existing checkpoint or run folder to fine-tune (skips step 1)")
    parser.add_argument("--parent-corpus", default="great-expectations", help="the parent's corpus")
    parser.add_argument("--parent-minutes", type=float, default=5.0, help="the parent's training budget")
    parser.add_argument("--novel", default=None, help="the small text's source (default: dickens/hard-times.txt)")
    parser.add_argument("--offset", type=int, default=20_000, help="first character of the small text in the novel")
    parser.add_argument("--chars", type=int, default=100_000, help="length of the small text")
    parser.add_argument("--minutes", type=float, default=2.0, help="budget of the fine-tuning and scratch runs, each")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations (best is kept)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        run(args, out)


def run(args: argparse.Namespace, out: Path) -> None:
    options = dict(lr=args.lr, threads=args.threads, precision=args.precision, epochs=10_000, grad_clip=1.0)
    parent_path = args.parent
    if parent_path is None:
        corpus = load_corpus(args.parent_corpus)
        data = split(corpus)
        model_config = ModelConfig(len(data.vocab), embedding_dim=args.embedding_dim, hidden_size=args.hidden_size)
        config = TrainConfig(time_limit=args.parent_minutes, eval_every=200, **options)
        started = time.perf_counter()
        train(data, model_config, config, out / "parent", overwrite=True)
        print(f"parent: {args.parent_corpus}, {time.perf_counter() - started:.0f} s", flush=True)
        parent_path = out / "parent"
    parent = load_checkpoint(parent_path)

    novel = args.novel or os.path.join(os.environ.get("CHARNN_CORPUS_DIR", "."), "dickens", "hard-times.txt")
    text = load_corpus(novel).text[args.offset : args.offset + args.chars]
    small = out / "small.txt"
    small.write_text(text, encoding="utf-8")

    config = TrainConfig(time_limit=args.minutes, eval_every=args.eval_every, **options)
    # The parent on the held-out part before any fine-tuning (new characters at their starting odds).
    model, vocab = initial_model(parent, text, seed=config.seed)
    held_out = split(load_corpus(str(small)), vocab=vocab, val_fraction=config.val_fraction).val_tokens
    zero_shot = model_loss(model, held_out, seq_len=config.seq_len)
    new_odds = new_character_probability(model, parent)

    rows = []
    result = finetune(small, parent_path, config, out / "finetuned", overwrite=True)
    rows.append(("fine-tuned from the parent", result))
    scratch_config = ModelConfig(len(set(text)), embedding_dim=parent.config.embedding_dim,
                                 hidden_size=parent.config.hidden_size, cell=parent.config.cell,
                                 num_layers=parent.config.num_layers)  # fmt: skip
    scratch_data = split(load_corpus(str(small)), vocab=None, val_fraction=config.val_fraction)
    result = train(scratch_data, scratch_config, config, out / "scratch", overwrite=True)
    rows.append(("from scratch", result))

    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    c, own_loss = parent.config, parent.training.get("val_loss", math.nan)
    print(f"parent: {parent.path} ({c.cell.upper()} {c.hidden_size}, embedding {c.embedding_dim}; "
          f"its own held-out loss {own_loss:.4f})")  # fmt: skip
    added = "".join(vocab.characters[len(parent.vocab) :])
    print(f"small text: {novel}[{args.offset}:{args.offset + len(text)}], {len(held_out):,} characters held out, "
          f"{len(added)} characters new to the parent: {added!r}")  # fmt: skip
    print(f"budget: {args.minutes} minutes each; {', '.join(f'{k} {v}' for k, v in options.items() if k != 'epochs')}")
    print(f"parent before fine-tuning, on the held-out part: {zero_shot:.4f} nats/char")
    if new_odds is not None:
        print(f"new characters at step 0, over the parent's own held-out text: {new_odds[0]:.2g} each on average, "
              f"{new_odds[1]:.2g} together at most")  # fmt: skip
    print("| run | steps | best held-out loss (nats/char) | bits/char |")
    print("|---|---|---|---|")
    for label, r in rows:
        steps = r.history[-1]["step"] if r.history else 0
        print(f"| {label} | {steps:,} | {r.best_val_loss:.4f} | {r.best_val_loss / math.log(2):.3f} |")
    tuned, scratch = rows[0][1].best_val_loss, rows[1][1].best_val_loss
    print(f"fine-tuned vs scratch: {tuned / scratch - 1:+.1%} (target: -10% or lower)")


def new_character_probability(model, parent) -> tuple[float, float] | None:
    """(Mean probability of a new character, largest total of the new ones) over the parent's held-out text."""
    old = len(parent.vocab)
    if model.config.vocab_size == old:
        return None
    tokens = of_checkpoint(parent).val_tokens[:20_000].unsqueeze(0)  # (1, T)
    model.eval()
    with torch.no_grad():
        probabilities = model(tokens)[0].softmax(-1)[0, :, old:]  # (T, new)
    return probabilities.mean().item(), probabilities.sum(-1).max().item()


if __name__ == "__main__":
    main()
