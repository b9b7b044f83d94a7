"""Does a reduced-precision generation step keep the model's quality? Held-out loss per precision.

Feeds the held-out end of a corpus (the trainer's validation split) through `Stepper.step`, one
character at a time in 64 side-by-side streams, exactly as generation advances, and prints the
mean loss in nats per character for each weight precision next to the plain model's.

    PYTHONPATH=src python benchmarks/generation_quality.py runs/ge --corpus great-expectations
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F

from charnn.data.corpus import load_corpus, train_length
from charnn.fast.step import Stepper, int8_supported
from charnn.run_folder import load_checkpoint
from charnn.scoring.evaluate import model_loss


def stepped_loss(stepper: Stepper, tokens: torch.Tensor, num_streams: int) -> float:
    piece = len(tokens) // num_streams
    streams = tokens[: piece * num_streams].view(num_streams, piece).long()  # (S, L)
    logits, state = stepper.prefill(streams[:, :1])
    total = F.cross_entropy(logits, streams[:, 1], reduction="sum").item()
    for t in range(1, piece - 1):
        logits = stepper.step(streams[:, t], state)
        total += F.cross_entropy(logits, streams[:, t + 1], reduction="sum").item()
    return total / (num_streams * (piece - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint or run folder")
    parser.add_argument("--corpus", default="great-expectations", help="the corpus the model was trained on")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out share at the end of the text")
    parser.add_argument("--streams", type=int, default=64, help="side-by-side streams")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    text = load_corpus(args.corpus).text
    held_out = torch.from_numpy(ckpt.vocab.encode(text))[train_length(len(text), args.val_fraction) :]
    print(f"checkpoint {ckpt.path}, held-out {len(held_out):,} characters of {args.corpus}")
    plain = model_loss(ckpt.model, held_out, seq_len=100, num_streams=args.streams)
    print(f"{'model.forward, fp32':<28}{plain:>10.5f} nats/char")
    # int8 runs twice where the compiled step exists: through it, and through PyTorch's operations.
    steppers = {"fp32": lambda: Stepper(ckpt.model, "fp32"), "bf16": lambda: Stepper(ckpt.model, "bf16")}
    if int8_supported():
        steppers["int8"] = lambda: Stepper(ckpt.model, "int8")
        steppers["int8, PyTorch ops"] = lambda: Stepper(ckpt.model, "int8", compiled=False)
    reference = None
    for precision, make in steppers.items():
        start = time.perf_counter()
        loss = stepped_loss(make(), held_out, args.streams)
        reference = reference or loss
        change = 100 * (loss - reference) / reference
        print(f"{'Stepper, ' + precision:<28}{loss:>10.5f} nats/char  {change:+.4f}% vs fp32  "
              f"perplexity {math.exp(loss):.4f}  ({time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
