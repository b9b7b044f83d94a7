"""charnn info (a checkpoint's summary), charnn plot (a run's loss curves) and charnn prepare
(a large corpus encoded once)."""

import argparse
import json
import sys
from pathlib import Path

from charnn.cli.flags import CHECKPOINT_HELP, add_encoding, checkpoint


def add_prepare_parser(commands) -> None:
    p = commands.add_parser("prepare", help="encode a large corpus once, for training from a memory map",
                            description="Read CORPUS in one streaming pass with bounded memory and write its "
                            "encoded text (train.bin, val.bin) and manifest.json into DATA_DIR, for "
                            "`charnn train DATA_DIR`. An unchanged corpus is not read again.")  # fmt: skip
    p.add_argument("corpus", metavar="CORPUS", help="a text file, a folder of *.txt, an http(s) URL, or a known name")
    p.add_argument("--out", type=Path, metavar="DATA_DIR", required=True, help="folder for the prepared data")
    add_encoding(p, " of the corpus")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the text, at its end, held out for "
                   "validation (default: 0.1)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace whatever DATA_DIR holds, and prepare again "
                   "even an unchanged corpus")  # fmt: skip
    p.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from charnn.data.prepare import prepare

    result = prepare(
        args.corpus, args.out, encoding=args.encoding, val_fraction=args.val_fraction, overwrite=args.overwrite
    )
    m = result.manifest
    if result.reused:
        print(f"{args.out} is up to date ({args.corpus} has not changed since it was prepared)", file=sys.stderr)
    else:
        megabytes = m["bytes_read"] / 1e6
        print(f"prepared {args.out}: {m['train_tokens'] + m['val_tokens']:,} characters ({m['train_tokens']:,} for "
              f"training, {m['val_tokens']:,} held out), {len(m['vocabulary'])} distinct, {m['dtype']}; "
              f"{megabytes:,.1f} MB in {result.seconds:.1f} s", file=sys.stderr)  # fmt: skip
    print(f"train with: charnn train {args.out} --out RUN_DIR", file=sys.stderr)
    return 0


def add_plot_parser(commands) -> None:
    p = commands.add_parser("plot", help="redraw RUN_DIR/loss.png", description="Redraw a run's loss curves.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.set_defaults(run=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from charnn.training.plot import plot_run

    print(plot_run(args.run_dir))
    return 0


def add_info_parser(commands) -> None:
    p = commands.add_parser("info", help="summarise a checkpoint", description="Model summary, training record "
                            "and the model card (the checkpoint folder's README.md).",
                            parents=[checkpoint(CHECKPOINT_HELP)])  # fmt: skip
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    from charnn.run_folder import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    rows = ckpt.model.summary()
    total = ckpt.model.num_parameters()
    if args.json:
        layers = [{"layer": n, "output_shape": s, "parameters": p} for n, s, p in rows]
        info = {"checkpoint": str(ckpt.path), "layers": layers, "total_parameters": total,
                "model": ckpt.config.to_dict(), "vocabulary": ckpt.vocab.to_json(),
                "training": ckpt.training, "corpus": ckpt.corpus, "card": ckpt.card()}  # fmt: skip
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"checkpoint {ckpt.path}")
    print(f"{'Layer':<12}{'Output shape':<18}{'Parameters':>14}")
    for name, shape, count in rows:
        print(f"{name:<12}{shape:<18}{count:>14,}")
    print(f"{'Total':<30}{total:>14,}")
    print(f"vocabulary: {len(ckpt.vocab)} characters")
    _print_training(ckpt.training)
    c = ckpt.corpus
    if c:
        print(f"corpus: {c.get('name')} ({c.get('characters', 0):,} characters, sha256 {c.get('sha256', '?')[:16]}...)")
    print(f"\n{ckpt.card()}", end="")
    return 0


def _print_training(t: dict) -> None:
    """The training record: where the run stopped, its epochs' losses, and the parent of a fine-tuned model."""
    record = ", ".join(f"{k} {t[k]:.4f}" if isinstance(t.get(k), float) else f"{k} {t[k]}"
                       for k in ("epoch", "step", "loss", "val_loss", "characters_seen", "elapsed_seconds",
                                 "precision") if t.get(k) is not None)  # fmt: skip
    print(f"training: {record}")
    if t.get("losses"):
        print("epoch losses: " + " ".join(f"{x:.4f}" for x in t["losses"]))
    parent = t.get("init_from")
    if isinstance(parent, dict):
        added = parent.get("added_characters") or []
        shown = f": {', '.join(repr(c) for c in added)}" if 0 < len(added) <= 20 else ""
        print(f"fine-tuned from: {parent.get('path')} (weights sha256 {str(parent.get('weights_sha256'))[:16]}...), "
              f"{len(added)} characters added{shown}")  # fmt: skip
