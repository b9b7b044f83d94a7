"""Package a pretraining checkpoint as charnn's base model (src/charnn/base/), with its model card.

The weights are stored as float16, half the size of float32; before writing, the script checks
on each evaluation novel that the stored weights' held-out loss matches the float32 weights' to
0.1%, and refuses otherwise. The card's figures are measured here on each novel's held-out part
(its last 10%, as `charnn train` holds it out): the base alone, a Kneser-Ney 5-gram fitted on the
novel's first 90%, and gzip -9. The pretraining's compute (characters seen, hours) comes from the
checkpoint's own training record.

    python pretraining/export_base.py WORK_DIR/run --eval-dir eval-texts --machine "AMD EPYC, 2 cores"

Run once per base release: the base is committed, not rebuilt on every change.
"""

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

from charnn.checkpoint import (
    TRAINER_STATE,
    Checkpoint,
    load_trainer_state,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)
from charnn.data.corpus import load_corpus
from charnn.data.dataset import open_corpus, split
from charnn.model import CharRNN
from charnn.run_folder import BASE_MODEL, load_checkpoint
from charnn.scoring.evaluate import gzip_loss, model_loss
from charnn.scoring.ngram import KneserNey
from charnn.training import initial_model
from charnn.training.average import WeightAverage

STORAGE = torch.float16
TOLERANCE = 0.001  # the stored weights' held-out loss within 0.1% of float32's
LICENCE = (
    "The pretraining texts are in the public domain in the United States (Project Gutenberg; every one is "
    "listed in charnn's `pretraining/manifest.tsv`). These weights are released into the public domain "
    "(CC0 1.0): use them for anything, without conditions."
)


def held_out_losses(parent: Checkpoint, path: Path) -> dict:
    """The model's loss on the last 10% of the text at `path`, beside the 5-gram's and gzip's; a
    character the model lacks starts as fine-tuning starts it (`initial_model`)."""
    corpus = load_corpus(str(path))
    grown, grown_vocab = initial_model(parent, corpus.text)
    data = split(corpus, vocab=grown_vocab)
    held_out = data.held_out_text()
    return {
        "text": path.stem,
        "characters": len(held_out),
        "loss": model_loss(grown.eval(), data.val_tokens, seq_len=100),
        "ngram_loss": KneserNey(data.training_text(), order=5, discount=0.75).loss(held_out),
        "gzip_loss": gzip_loss(held_out),
    }


def whole_run(training: dict) -> dict:
    """The training record with the stages before it added in (a second stage is a fine-tuning run of
    the first, `init_from`): steps, characters seen and time over all stages, and each stage's own."""
    stages, record = [], training
    while True:
        stages.insert(0, {k: record.get(k) for k in ("step", "characters_seen", "elapsed_seconds", "best_val_loss")})
        parent = record.get("init_from")
        if not isinstance(parent, dict) or not Path(parent["path"]).is_dir():
            break
        record = read_metadata(Path(parent["path"]))["training"]
    whole = {k: v for k, v in training.items() if k != "init_from"}  # a path on the pretraining machine
    for key in ("step", "characters_seen", "elapsed_seconds"):
        whole[key] = sum(stage[key] or 0 for stage in stages)
    return {**whole, "stages": stages}


def averaged(ckpt: Checkpoint) -> Checkpoint:
    """The checkpoint with its run's weight average swapped in, where it holds raw weights and the
    average is in its trainer state (a numbered checkpoint between evaluations); `best` holds it already."""
    config = ckpt.training.get("config") or {}
    if ckpt.training.get("weights") != "raw" or not config.get("ema") or not (ckpt.path / TRAINER_STATE).is_file():
        return ckpt
    average = WeightAverage(ckpt.model, config["ema"], config.get("ema_init_share", 0.0))
    average.load_state_dict(load_trainer_state(ckpt.path), ckpt.training["step"], torch.device("cpu"))
    with torch.no_grad():
        for p, weights in zip(ckpt.model.parameters(), average.weights(), strict=True):
            p.copy_(weights)
    print(f"{ckpt.path}: the weight average of step {ckpt.training['step']:,}")
    return dataclasses.replace(ckpt, training={**ckpt.training, "weights": "ema"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the pretraining run (its best checkpoint) or a checkpoint "
                        "(a numbered one: its weight average)")  # fmt: skip
    parser.add_argument("--eval-dir", type=Path, required=True, help="the evaluation novels (eval-manifest.tsv)")
    parser.add_argument("--machine", required=True, help="what the pretraining ran on, for the card")
    parser.add_argument("--data", help="the pretraining's prepared data: its held-out part is scored again with "
                        "the stored weights, for the card")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BASE_MODEL, help=f"where to write it (default: {BASE_MODEL})")
    args = parser.parse_args()

    source = averaged(load_checkpoint(args.checkpoint))
    stored = CharRNN(source.config)
    stored.load_state_dict({k: v.to(STORAGE).float() for k, v in source.model.state_dict().items()})
    texts = sorted(args.eval_dir.glob("*.txt"))
    if not texts:
        parser.error(f"{args.eval_dir} holds no *.txt")
    evaluation = []
    for path in texts:
        full = held_out_losses(source, path)
        rounded = held_out_losses(dataclasses.replace(source, model=stored), path)
        change = rounded["loss"] / full["loss"] - 1
        print(f"{path.stem}: float32 {full['loss']:.4f}, float16 {rounded['loss']:.4f} ({change:+.4%}), "
              f"5-gram {full['ngram_loss']:.4f}, gzip {full['gzip_loss']:.4f}", flush=True)  # fmt: skip
        if abs(change) > TOLERANCE:
            print(f"float16 storage changes the loss on {path.stem} by {change:+.3%}; not written", file=sys.stderr)
            return 1
        evaluation.append(rounded)
    training = {**whole_run(source.training), "machine": args.machine}
    if args.data:  # the checkpoint's own record may be from an earlier evaluation than its weights
        held_out = open_corpus(args.data).val_tokens
        training["val_loss"] = training["best_val_loss"] = model_loss(stored, held_out, seq_len=100)
        training["val_bpc"] = training["val_loss"] / math.log(2)
        print(f"held-out part of the pretraining corpus: {training['val_loss']:.4f}", flush=True)
    training.pop("state", None)  # resuming state: the base is not resumed
    corpus = {**source.corpus, "name": "charnn's pretraining corpus (pretraining/manifest.tsv in its repository)"}
    for key in ("prepared", "source"):  # paths on the pretraining machine
        corpus.pop(key, None)
    save_checkpoint(args.out, stored, source.vocab, training=training, corpus=corpus, storage=STORAGE,
                    extra={"licence": LICENCE, "evaluation": evaluation})  # fmt: skip
    read_checkpoint(args.out)  # it loads
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
