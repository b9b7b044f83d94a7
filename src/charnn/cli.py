"""The command line: a thin layer over the library. `charnn --help` lists the commands.

Every user mistake is a CharnnError, printed here as one line with exit code 2.
"""

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from charnn.config import CELLS, DEVICES, GENERATE_PRECISIONS, PRECISIONS, ModelConfig, SampleConfig, TrainConfig
from charnn.errors import CharnnError, ConfigError

HELP = {
    "embedding_dim": "size of each character's embedding",
    "hidden_size": "units in each recurrent layer",
    "cell": "recurrent cell",
    "num_layers": "stacked recurrent layers",
    "dropout": "dropout between layers and before the output",
    "seq_len": "characters per training window",
    "batch_size": "windows per batch",
    "epochs": "passes over the training text",
    "max_steps": "stop after this many optimizer steps (writes a checkpoint)",
    "time_limit": "stop after this many minutes (writes a checkpoint)",
    "lr": "Adam learning rate",
    "seed": "random seed for initialisation and data order",
    "device": "where to train: auto picks CUDA when present",
    "precision": "compute precision: auto picks bf16 where the hardware has it",
    "threads": "CPU threads for PyTorch (default: all cores)",
    "val_fraction": "share of the text, at its end, held out for validation",
    "log_every_seconds": "seconds between progress lines and metrics records",
}
CHOICES = {"cell": CELLS, "device": DEVICES, "precision": PRECISIONS}


def _flag_type(annotation):
    # `int | None` -> int
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One --kebab-case flag per field of the dataclass `cls`; unset flags keep its defaults."""
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = "" if f.default is None else f" (default: {f.default})"
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_flag_type(f.type),
            choices=CHOICES.get(f.name),
            default=argparse.SUPPRESS,
            help=HELP.get(f.name, "") + default,
        )


def config_from_args(args: argparse.Namespace, cls, **fixed):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **fixed)


# --- train -------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from charnn.corpus import load_corpus
    from charnn.train import train
    from charnn.vocab import Vocabulary

    train_config = config_from_args(args, TrainConfig)
    config_from_args(args, ModelConfig, vocab_size=1)  # check model flags before reading the corpus
    corpus = load_corpus(args.corpus, args.encoding)
    vocab = Vocabulary.from_text(corpus.text)
    model_config = config_from_args(args, ModelConfig, vocab_size=len(vocab))
    print(f"corpus {corpus.name}: {len(corpus.text):,} characters, {len(vocab)} distinct", file=sys.stderr)
    with Progress() as progress:
        result = train(corpus, vocab, model_config, train_config, args.out, progress.on_event, args.overwrite)
    print(f"stopped by {result.stopped_by}; last checkpoint: {result.last_checkpoint}", file=sys.stderr)
    print(f'generate with: charnn generate {args.out} --prime "..."', file=sys.stderr)
    return 0


class Progress:
    """A tqdm bar on a terminal; plain log lines when stderr is a file or a pipe (CI)."""

    def __init__(self):
        self.bar = None
        self.interactive = sys.stderr.isatty()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def on_event(self, event) -> None:
        if self.interactive:
            self._draw(event)
        elif event.kind in ("start", "log", "epoch", "checkpoint"):
            print(_describe(event), file=sys.stderr, flush=True)

    def _draw(self, event) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event.total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.bar.n = event.step
        self.bar.set_description(f"epoch {event.epoch}", refresh=False)
        postfix = f"loss {event.loss:.4f}, {event.chars_per_sec:,.0f} chars/s"
        if event.val_loss is not None:
            postfix += f", val {event.val_loss:.4f}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh() if event.kind != "step" else self.bar.update(0)
        if event.kind == "checkpoint":
            self.bar.write(f"saved {event.path}", file=sys.stderr)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _describe(event) -> str:
    if event.kind == "start":
        return f"training: {event.total_steps:,} steps, {event.steps_per_epoch:,} per epoch"
    if event.kind == "checkpoint":
        return f"saved {event.path}"
    text = (
        f"epoch {event.epoch} step {event.step:,}/{event.total_steps:,} loss {event.loss:.4f} "
        f"{event.chars_per_sec:,.0f} chars/s elapsed {_duration(event.elapsed)} eta {_duration(event.eta)}"
    )
    if event.val_loss is not None:
        text += f" val_loss {event.val_loss:.4f}"
    return text


# --- generate ----------------------------------------------------------------------------


def _temperatures(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"--temperature takes a number or a comma-separated list, got {text!r}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from charnn.checkpoint import load_checkpoint
    from charnn.sample import generate, generate_text, new_seed
    from charnn.train import resolve_device

    samplings = [SampleConfig(t, args.top_k, args.top_p) for t in _temperatures(args.temperature)]
    if args.length < 0:
        raise ConfigError(f"--length must be 0 or more, got {args.length}")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}")
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    prime = args.prime if args.prime is not None else _default_prime(ckpt.vocab)
    seed = args.seed if args.seed is not None else new_seed()
    labelled = len(samplings) > 1
    results = []
    for sampling in samplings:
        if args.stream and not args.json:
            for i in range(args.num_samples):
                if labelled or i:
                    print()
                if labelled:
                    print(f"--- temperature {sampling.temperature} ---")
                print(prime, end="", flush=True)
                steps = generate(ckpt.model, ckpt.vocab, prime, args.length, sampling, 1, seed, i, args.precision)
                for step in steps:
                    print(step[0], end="", flush=True)
                print()
            continue
        samples = generate_text(
            ckpt.model, ckpt.vocab, prime, args.length, sampling, args.num_samples, seed, args.precision
        )
        results += [(sampling.temperature, s) for s in samples]
    if args.json:
        out = {"samples": [s for _, s in results], "seed": seed, "checkpoint": str(ckpt.path)}
        out["temperatures"] = [t for t, _ in results]
        print(json.dumps(out, ensure_ascii=False))
    elif not args.stream:
        blocks = [(f"--- temperature {t} ---\n" if labelled else "") + prime + s for t, s in results]
        print("\n\n".join(blocks))
    return 0


def _default_prime(vocab) -> str:
    return "\n" if "\n" in vocab else vocab.characters[0]


# --- info --------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from charnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    rows = ckpt.model.summary()
    total = ckpt.model.num_parameters()
    if args.json:
        layers = [{"layer": n, "output_shape": s, "parameters": p} for n, s, p in rows]
        info = {"checkpoint": str(ckpt.path), "layers": layers, "total_parameters": total,
                "model": ckpt.config.to_dict(), "vocabulary": ckpt.vocab.to_json(),
                "training": ckpt.training, "corpus": ckpt.corpus}  # fmt: skip
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"checkpoint {ckpt.path}")
    print(f"{'Layer':<12}{'Output shape':<18}{'Parameters':>14}")
    for name, shape, count in rows:
        print(f"{name:<12}{shape:<18}{count:>14,}")
    print(f"{'Total':<30}{total:>14,}")
    print(f"vocabulary: {len(ckpt.vocab)} characters")
    t = ckpt.training
    record = ", ".join(f"{k} {t[k]:.4f}" if isinstance(t.get(k), float) else f"{k} {t[k]}"
                       for k in ("epoch", "step", "loss", "val_loss", "characters_seen", "elapsed_seconds",
                                 "precision") if t.get(k) is not None)  # fmt: skip
    print(f"training: {record}")
    if t.get("losses"):
        print("epoch losses: " + " ".join(f"{x:.4f}" for x in t["losses"]))
    c = ckpt.corpus
    if c:
        print(f"corpus: {c.get('name')} ({c.get('characters', 0):,} characters, sha256 {c.get('sha256', '?')[:16]}...)")
    return 0


# --- main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charnn",
        description="Character-level recurrent language models: train on any text, generate in its style.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model on a corpus", description="Train a model on a corpus.")
    p.add_argument("corpus", metavar="CORPUS", help="a text file, a folder of *.txt, an http(s) URL, or a known name "
                   "(great-expectations, tinyshakespeare)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="folder for checkpoints and metrics")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the corpus (default: utf-8)")
    p.add_argument("--overwrite", action="store_true", help="replace whatever RUN_DIR already holds")
    add_config_flags(p, ModelConfig, skip=("vocab_size",))
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("generate", help="generate text from a checkpoint",
                            description="Generate text: the prime followed by --length new characters.")  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder (its best or newest)")
    p.add_argument("--prime", default=None, help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=1000, help="new characters per sample (default: 1000)")
    p.add_argument("--temperature", default="0.8", help="0 = greedy; higher = more random; a comma-separated "
                   "list gives one labelled sample each (default: 0.8)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=None, help="draw only from the K most likely characters")
    p.add_argument("--top-p", type=float, default=None, help="draw only from the most likely characters "
                   "whose probabilities sum to P")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw (default: 1)")
    p.add_argument("--stream", action="store_true", help="print characters as they are produced")
    p.add_argument("--json", action="store_true", help="print {samples, seed, checkpoint} as JSON (no prime)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")
    p.add_argument("--precision", choices=GENERATE_PRECISIONS, default="auto", help="weights after the prime: fp32 "
                   "gives the exact model; auto picks int8 where the CPU computes it fast (default: auto)")  # fmt: skip
    p.set_defaults(run=cmd_generate)

    p = commands.add_parser("info", help="summarise a checkpoint", description="Model summary and training record.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CharnnError as error:
        print(f"charnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("charnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        sys.stderr.close()
        return 0
