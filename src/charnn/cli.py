"""The command line: a thin layer over the library. `charnn --help` lists the commands.

Every user mistake is a CharnnError, printed here as one line with exit code 2.
"""

import argparse
import contextlib
import dataclasses
import heapq
import json
import math
import os
import signal
import sys
import types
import typing
from pathlib import Path

from charnn.config import (
    CELLS,
    DEVICES,
    DYNAMIC_SEGMENT,
    DYNAMIC_UPDATE,
    DYNAMIC_UPDATES,
    GENERATE_PRECISIONS,
    LR_SCHEDULES,
    NANOGPT_WINDOW,
    NANOGPT_WINDOWS,
    PRECISIONS,
    ModelConfig,
    SampleConfig,
    ServeLimits,
    TrainConfig,
)
from charnn.errors import CharnnError, ConfigError, CorpusError, render_names
from charnn.presets import PRESETS, with_preset

HELP = {
    "embedding_dim": "size of each character's embedding",
    "hidden_size": "units in each recurrent layer",
    "cell": "recurrent cell",
    "num_layers": "stacked recurrent layers",
    "dropout": "dropout between layers and before the output",
    "variational_dropout": "--dropout with one mask per sequence, the same at every time step",
    "weight_drop": "DropConnect on the recurrent (hidden-to-hidden) weights: share of them dropped, one mask per batch",
    "embedding_dropout": "share of characters whose whole embedding is dropped, one mask per batch",
    "seq_len": "characters per training window",
    "batch_size": "windows per batch",
    "epochs": "passes over the training text",
    "max_steps": "stop after this many optimizer steps (writes a checkpoint)",
    "time_limit": "stop after this many minutes in all, a resumed run's earlier ones counted (writes a checkpoint)",
    "lr": "Adam learning rate",
    "seed": "random seed for initialisation and data order",
    "device": "where to train: auto picks CUDA when present",
    "precision": "compute precision: auto picks bf16 where the hardware has it",
    "threads": "CPU threads for PyTorch (default: all cores)",
    "val_fraction": "share of the text, at its end, held out for validation",
    "log_every_seconds": "seconds between progress lines and metrics records",
    "eval_every": "also evaluate on the held-out text every N steps",
    "patience": "stop after N evaluations without a better validation loss (with --ema, not counting one at "
    "which the average falls fast enough to reach the best within N more)",
    "checkpoint_every": "also write a checkpoint every N steps",
    "keep_last": "keep only the newest K numbered checkpoints (best is always kept)",
    "grad_clip": "clip gradients to this global norm",
    "lr_schedule": "learning-rate schedule after warm-up: cosine falls to a tenth by the end of the run (its epochs, "
    "--max-steps or --time-limit, whichever ends it first); plateau halves it at each evaluation that is no better",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "weight_decay": "decoupled weight decay (AdamW)",
    "stateful": "truncated BPTT: each batch row reads its own stretch of the text, state carried between windows",
    "seq_len_jitter": "with --stateful: random window lengths around --seq-len with this spread (AWD-LSTM)",
    "ema": "also keep an exponential moving average of the weights with this decay (e.g. 0.999); "
    "best keeps whichever scores better",
    "ema_init_share": "with --ema: share of the run's initial weights mixed into the average it scores "
    "(a pull towards them that regularises; 0 = the plain average)",
    "preset": "start from a named configuration; flags given override it (seed = the reference system)",
    "max_prompt_chars": "longest prompt a request may send",
    "max_new_chars": "most new characters a request may ask for, per sample",
    "max_num_samples": "most samples one request may ask for",
    "max_streams": "generation requests in flight at once (streaming or not); more get HTTP 429",
}
CHOICES = {"cell": CELLS, "device": DEVICES, "precision": PRECISIONS, "lr_schedule": LR_SCHEDULES,
           "preset": tuple(PRESETS)}  # fmt: skip


def _optional(annotation) -> bool:
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    return union and type(None) in typing.get_args(annotation)


def _flag_type(annotation):
    """`int` -> int; `int | None` -> int that also reads `none` (so a default that is on can be switched off)."""
    if not _optional(annotation):
        return annotation
    kind = next(a for a in typing.get_args(annotation) if a is not type(None))

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error: "invalid float value"
    return parse


def flag(name: str) -> str:
    """The command-line flag for a configuration field or a library parameter: seq_len -> --seq-len."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One --kebab-case flag per field of the dataclass `cls`; unset flags keep its defaults."""
    group = parser.add_argument_group(f"{cls.__name__} options")
    # `charnn train` starts from the default preset: its values are the defaults a user gets.
    preset = with_preset(None, {}) if cls in (ModelConfig, TrainConfig) else {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = preset.get(f.name, f.default)
        default = "" if value is None else f" (default: {value})"
        if value is not None and _optional(f.type):
            default = f" (default: {value}; none: off)"
        flag_name = flag(f.name)
        if f.type is bool:  # --stateful / --no-stateful
            group.add_argument(flag_name, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=HELP.get(f.name, "") + default)  # fmt: skip
            continue
        group.add_argument(
            flag_name,
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
    from charnn.data.dataset import open_corpus
    from charnn.run_folder import check_new
    from charnn.training import finetune, resume, train

    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc is not None and "LOCAL_RANK" in os.environ:
        raise ConfigError("--nproc starts torchrun itself; under torchrun, leave it out")
    launching = args.nproc is not None and args.nproc > 1
    interrupts = Interrupts(quiet=not _group().is_main)
    if args.resume is not None:
        if args.corpus is not None or args.out is not None or args.init_from is not None:
            raise ConfigError(
                "--resume RUN_DIR continues a run with its own corpus, folder and starting point; give neither a "
                "CORPUS, --out nor --init-from"
            )
        if launching:
            return _launch(args)
        overrides = {k: v for k, v in vars(args).items() if k in _fields(TrainConfig) | _fields(ModelConfig)}
        with Progress(f"resuming {args.resume}") as progress, interrupts:
            result = resume(args.resume, overrides, on_event=progress.on_event, should_stop=interrupts.reason)
            _draw_plot(args.resume, progress)
        return _finish(result, args.resume)
    if args.corpus is None or args.out is None:
        raise ConfigError("give a CORPUS and --out RUN_DIR, or --resume RUN_DIR")
    if args.init_from is not None:
        return _finetune(args, finetune, interrupts, launching)
    # Cheap checks first: flags and the output folder, before reading a large corpus.
    # The preset's values, then the flags given: argparse leaves unset flags out of args.
    options = argparse.Namespace(**with_preset(vars(args).get("preset"), vars(args)))
    train_config = config_from_args(options, TrainConfig)
    config_from_args(options, ModelConfig, vocab_size=1)
    check_new(args.out, args.overwrite)
    if launching:
        if train_config.batch_size % args.nproc:
            raise ConfigError(f"--batch-size {train_config.batch_size} is not a multiple of --nproc {args.nproc}; "
                              "each process takes an equal share of every batch")  # fmt: skip
        return _launch(args)
    # Without --val-fraction, prepared data keeps the split it was prepared with.
    data = open_corpus(args.corpus, encoding=args.encoding, val_fraction=vars(args).get("val_fraction"))
    train_config = dataclasses.replace(train_config, val_fraction=data.val_fraction)
    model_config = config_from_args(options, ModelConfig, vocab_size=len(data.vocab))
    with Progress(data.describe()) as progress, interrupts:
        result = train(data, model_config, train_config, args.out, on_event=progress.on_event,
                       overwrite=args.overwrite, should_stop=interrupts.reason)  # fmt: skip
        _draw_plot(args.out, progress)
    return _finish(result, args.out)


def _finetune(args: argparse.Namespace, finetune, interrupts: "Interrupts", launching: bool) -> int:
    """charnn train CORPUS --init-from CHECKPOINT --out RUN_DIR: the library checks the parent."""
    # The preset's training options, then the flags given; the model's shape is the parent's.
    options = argparse.Namespace(**with_preset(vars(args).get("preset"), vars(args)))
    train_config = config_from_args(options, TrainConfig)
    if launching:
        if train_config.batch_size % args.nproc:
            raise ConfigError(f"--batch-size {train_config.batch_size} is not a multiple of --nproc {args.nproc}; "
                              "each process takes an equal share of every batch")  # fmt: skip
        return _launch(args)
    changes = {k: v for k, v in vars(args).items() if k in _fields(ModelConfig)}
    with Progress(f"fine-tuning {args.init_from} on {args.corpus}") as progress, interrupts:
        result = finetune(args.corpus, args.init_from, train_config, args.out, model_changes=changes,
                          encoding=args.encoding, on_event=progress.on_event, overwrite=args.overwrite,
                          should_stop=interrupts.reason)  # fmt: skip
        _draw_plot(args.out, progress)
    return _finish(result, args.out)


def _draw_plot(run_dir, progress: "Progress") -> None:
    """RUN_DIR/loss.png when training stops, drawn by rank 0."""
    if not _group().is_main:
        return
    from charnn.training.plot import plot_run

    try:
        plot_run(run_dir)
    except Exception as error:  # a picture is a bonus: never fail a finished run over it
        progress.warn(f"could not draw loss.png: {error}")


def _group():
    """This process's place in a distributed run (torchrun's environment); one process without it."""
    from charnn.training.distributed import from_env

    return from_env()


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _launch(args: argparse.Namespace) -> int:
    """The same command in --nproc processes, started by torchrun."""
    from charnn.training.distributed import launch

    argv, skip = [], False
    for token in args.argv:
        name = token.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 3 and "--nproc".startswith(name):  # argparse accepts --np, --npr...
            skip = "=" not in token
        else:
            argv.append(token)
    return launch(args.nproc, argv)


def _finish(result, run_dir) -> int:
    if not _group().is_main:  # rank 0 speaks for the run
        return SIGNAL_EXIT_CODES.get(result.stopped_by, 0)
    last = result.last_checkpoint or "none written"
    print(f"stopped by {result.stopped_by}; last checkpoint: {last}", file=sys.stderr)
    if result.best_checkpoint is not None:
        print(f"best validation loss {result.best_val_loss:.4f} in {result.best_checkpoint}", file=sys.stderr)
    if result.stopped_by in SIGNAL_EXIT_CODES:
        print(f"resume with: {_resume_command(run_dir)}", file=sys.stderr)
        return SIGNAL_EXIT_CODES[result.stopped_by]
    print(f'generate with: charnn generate {run_dir} --prime "..."', file=sys.stderr)
    return 0


def _resume_command(run_dir) -> str:
    world = _group().world_size
    if world == 1:
        return f"charnn train --resume {run_dir}"
    if os.environ.get("CHARNN_LAUNCHER"):
        return f"charnn train --resume {run_dir} --nproc {world}"
    return f"the same torchrun command, ending with -m charnn train --resume {run_dir}"


SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupts:
    """Ctrl-C or SIGTERM asks training to finish its step and write a checkpoint; a second one
    stops at once (checkpoints are written atomically, so nothing is corrupted)."""

    def __init__(self, quiet: bool = False):
        self.received: str | None = None
        self.quiet = quiet  # the other ranks of a distributed run: rank 0 speaks

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if not self.quiet:
            print(f"\n{self.received}: finishing this step and writing a checkpoint (again to stop at once)",
                  file=sys.stderr, flush=True)  # fmt: skip

    def reason(self) -> str | None:
        return self.received


class Progress:
    """A tqdm bar on a terminal; plain log lines when stderr is a file or a pipe (CI)."""

    def __init__(self, heading: str):
        self.heading = heading
        self.bar = None
        self.interactive = sys.stderr.isatty()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def on_event(self, event) -> None:
        if event.kind == "start":
            print(self.heading, file=sys.stderr, flush=True)
        if event.kind == "warning":
            self.warn(event.message)
        elif self.interactive:
            self._draw(event)
        elif event.kind in ("start", "log", "eval", "epoch", "checkpoint"):
            self._print(_describe(event))

    def warn(self, message: str) -> None:
        self._print(f"warning: {message}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

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
        if event.kind in ("checkpoint", "eval", "epoch"):
            self._print(_describe(event))


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
        text += f" val_loss {event.val_loss:.4f} ({event.val_loss / math.log(2):.3f} bits/char)"
    return text


# --- prepare -----------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
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


# --- generate ----------------------------------------------------------------------------


def _temperatures(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"--temperature takes a number or a comma-separated list, got {text!r}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from charnn.generation import generate, generate_best_of, generate_text
    from charnn.hardware import resolve_device
    from charnn.run_folder import load_checkpoint
    from charnn.sample import new_seed

    samplings = [SampleConfig(t, args.top_k, args.top_p) for t in _temperatures(args.temperature)]
    if args.length < 0:
        raise ConfigError(f"--length must be 0 or more, got {args.length}")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.best_of is not None:
        if args.best_of < args.num_samples:
            raise ConfigError(f"--best-of must be at least --num-samples ({args.num_samples}), got {args.best_of}")
        if args.stream:
            raise ConfigError("--best-of cannot --stream: the best sample is known only when all are drawn")
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    prime = args.prime if args.prime is not None else _default_prime(ckpt.vocab)
    seed = args.seed if args.seed is not None else new_seed()
    labelled = len(samplings) > 1
    results = []
    means = []  # with --best-of: each printed sample's mean log-probability per character
    for sampling in samplings:
        if args.best_of is not None:
            ranked = generate_best_of(ckpt.model, ckpt.vocab, prime, args.length, sampling, best_of=args.best_of,
                                      seed=seed, precision=args.precision)  # fmt: skip
            chosen = ranked.order[: args.num_samples]
            results += [(sampling.temperature, ranked.samples[i]) for i in chosen]
            means += [ranked.mean_logprobs[i] for i in chosen]
            continue
        if args.stream and not args.json:
            for i in range(args.num_samples):
                if labelled or i:
                    print()
                if labelled:
                    print(f"--- temperature {sampling.temperature} ---")
                print(prime, end="", flush=True)
                steps = generate(
                    ckpt.model,
                    ckpt.vocab,
                    prime,
                    length=args.length,
                    sampling=sampling,
                    num_samples=1,
                    seed=seed,
                    first_sample=i,
                    precision=args.precision,
                )
                for step in steps:
                    print(step[0], end="", flush=True)
                print()
            continue
        samples = generate_text(
            ckpt.model,
            ckpt.vocab,
            prime,
            length=args.length,
            sampling=sampling,
            num_samples=args.num_samples,
            seed=seed,
            precision=args.precision,
        )
        results += [(sampling.temperature, s) for s in samples]
    if args.json:
        out = {"samples": [s for _, s in results], "seed": seed, "checkpoint": str(ckpt.path)}
        out["temperatures"] = [t for t, _ in results]
        if args.best_of is not None:
            out["best_of"] = args.best_of
            out["mean_logprobs"] = [m if math.isfinite(m) else None for m in means]
        print(json.dumps(out, ensure_ascii=False))
    elif not args.stream:
        blocks = [(f"--- temperature {t} ---\n" if labelled else "") + prime + s for t, s in results]
        print("\n\n".join(blocks))
    return 0


def _default_prime(vocab) -> str:
    return "\n" if "\n" in vocab else vocab.characters[0]


# --- info --------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from charnn.run_folder import load_checkpoint

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
    parent = t.get("init_from")
    if isinstance(parent, dict):
        added = parent.get("added_characters") or []
        shown = f": {', '.join(repr(c) for c in added)}" if 0 < len(added) <= 20 else ""
        print(f"fine-tuned from: {parent.get('path')} (weights sha256 {str(parent.get('weights_sha256'))[:16]}...), "
              f"{len(added)} characters added{shown}")  # fmt: skip
    c = ckpt.corpus
    if c:
        print(f"corpus: {c.get('name')} ({c.get('characters', 0):,} characters, sha256 {c.get('sha256', '?')[:16]}...)")
    return 0


# --- score -------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from charnn.hardware import resolve_device
    from charnn.run_folder import load_checkpoint
    from charnn.scoring.highlight import Page
    from charnn.scoring.score import ScoreConfig, ScoreTotals, line_scores, score

    if args.top < 0:  # the library calls it `top_k`: checked here under the flag's name
        raise ConfigError(f"--top must be 0 or more, got {args.top}")
    config = ScoreConfig(top_k=args.top, streams=args.streams, precision=args.precision)
    if args.html is not None and args.html.is_dir():
        raise ConfigError(f"--html {args.html} is a folder; give a file name such as scored.html")
    text, name = _read_text(args.text, args.encoding)
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    records = score(ckpt.model, ckpt.vocab, text, config)
    totals, surprises = ScoreTotals(), _Surprises()
    page = Page(args.html, title=f"{ckpt.path.name} on {name}") if args.html is not None else None
    with _ScoreProgress(len(text)) as progress, page or contextlib.nullcontext():
        records = _counted(progress.follow(records), totals, surprises, page)
        if args.by_line:
            kept = (line for line in line_scores(records)
                    if line.scored and line.text.strip() and len(line.text) >= args.min_chars)  # fmt: skip
            lines = sorted(kept, key=lambda line: -line.bits_per_character)
            for line in lines:
                if args.json:
                    print(json.dumps({"line": line.line, "bits_per_character": line.bits_per_character,
                                      "bits": line.bits, "scored": line.scored, "text": line.text},
                                     ensure_ascii=False))  # fmt: skip
                else:
                    print(f"{line.bits_per_character:8.3f} bits/char  line {line.line:>6}  {line.text}")
        elif args.json:
            for record in records:
                print(json.dumps(record.to_dict(), ensure_ascii=False))
        else:
            for _ in records:
                pass
    summary = {"checkpoint": str(ckpt.path), "text": name, **totals.to_dict()}
    if args.json:
        if not args.by_line:
            print(json.dumps({"summary": summary}, ensure_ascii=False))
    elif not args.by_line:
        _print_score_summary(summary, surprises)
    if args.html is not None:
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _read_text(path: str, encoding: str) -> tuple[str, str]:
    """The text to score and what to call it: a file (read as `charnn evaluate` reads one), or - for stdin."""
    from charnn.data.corpus import decode, load_corpus, normalize

    if path != "-":
        return load_corpus(path, encoding=encoding).text, path
    text = normalize(decode(sys.stdin.buffer.read(), encoding, "standard input"))
    if not text:
        raise CorpusError("standard input is empty; give some text to score")
    return text, "standard input"


def _counted(records, totals, surprises, page):
    for record in records:
        totals.add(record)
        surprises.add(record)
        if page is not None:
            page.add(record)
        yield record


class _Surprises:
    """The few most surprising characters, with where they are."""

    def __init__(self, keep: int = 5):
        self.keep = keep
        self.found: list = []
        self.line, self.column = 1, 1

    def add(self, record) -> None:
        if record.bits is not None:
            item = (record.bits, record.position, self.line, self.column, record)
            if len(self.found) < self.keep:
                heapq.heappush(self.found, item)
            elif item[0] > self.found[0][0]:
                heapq.heapreplace(self.found, item)
        self.line, self.column = (self.line + 1, 1) if record.character == "\n" else (self.line, self.column + 1)

    def worst(self) -> list:
        return sorted(self.found, key=lambda item: -item[0])


def _print_score_summary(summary: dict, surprises: _Surprises) -> None:
    print(f"checkpoint {summary['checkpoint']}, text: {summary['text']} ({summary['characters']:,} characters)")
    bpc = summary["bits_per_character"]
    if bpc is None:
        print("no character scored (the first character has nothing before it to be predicted from)")
    else:
        print(f"scored {summary['scored']:,} characters: {summary['bits']:,.1f} bits, {bpc:.4f} bits/char "
              f"({bpc * math.log(2):.4f} nats/char)")  # fmt: skip
    if summary["unknown_count"]:
        shown = ", ".join(repr(c) for c in summary["unknown"])
        print(f"left out {summary['unknown_count']:,} characters the model does not know: {shown}")
    worst = surprises.worst()
    if worst:
        print("most surprising:")
    for bits, _, line, column, record in worst:
        expected = ", ".join(f"{c!r} {p:.0%}" for c, p in record.alternatives[:3])
        print(f"  {record.character!r} at line {line}, column {column}: {bits:.2f} bits"
              + (f" (expected {expected})" if expected else ""))  # fmt: skip


class _ScoreProgress:
    """A tqdm bar of characters scored, on a terminal and for texts long enough to wait for."""

    def __init__(self, total: int, minimum: int = 50_000):
        self.bar = None
        if sys.stderr.isatty() and total >= minimum:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="char", unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                            desc="scoring")  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def follow(self, records):
        if self.bar is None:
            yield from records
            return
        pending = 0
        for record in records:
            pending += 1
            if pending == 8192:
                self.bar.update(pending)
                pending = 0
            yield record
        self.bar.update(pending)


# --- evaluate and plot -------------------------------------------------------------------


class _PhaseProgress:
    """A tqdm bar of characters for each slow phase of an evaluation, on a terminal."""

    def __init__(self):
        self.bar, self.phase = None, None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if phase != self.phase:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, unit="char", unit_scale=True, dynamic_ncols=True, file=sys.stderr, desc=phase)
            self.phase = phase
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from charnn.data.corpus import load_corpus
    from charnn.data.dataset import of_checkpoint
    from charnn.run_folder import load_checkpoint
    from charnn.scoring.evaluate import evaluate_text

    # The library names these `window`, `segment`...; checked here first, under the flags' names.
    for name, value in (("--windows", args.windows), ("--num-windows", args.num_windows),
                        ("--dynamic-segment", args.dynamic_segment)):  # fmt: skip
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.dynamic_lr is not None and args.dynamic_lr <= 0:
        raise ConfigError(f"--dynamic-lr must be positive, got {args.dynamic_lr}")
    if args.dynamic_decay is not None and not 0.0 <= args.dynamic_decay < 1.0:
        raise ConfigError(f"--dynamic-decay must be in [0, 1), got {args.dynamic_decay}")
    ckpt = load_checkpoint(args.checkpoint)
    data = None  # the checkpoint's own corpus, found again when needed
    if args.train_text is not None:
        train_text = load_corpus(str(args.train_text), encoding=args.encoding).text
    else:
        try:
            data = of_checkpoint(ckpt)
        except CorpusError as error:
            raise CorpusError(f"{error}; pass --train-text PATH") from None
        train_text = data.training_text()
    if args.text:
        text = load_corpus(args.text, encoding=args.encoding).text
    else:
        text = (data or of_checkpoint(ckpt)).held_out_text()
        if not text:
            raise ConfigError("this model was trained without held-out text; give a TEXT to evaluate on")
    with _PhaseProgress() as progress:
        report = evaluate_text(ckpt.model, ckpt.vocab, text, training_text=train_text, window=args.windows,
                               num_windows=args.num_windows, window_seed=args.window_seed, dynamic=args.dynamic,
                               dynamic_segment=args.dynamic_segment, dynamic_update=args.dynamic_update,
                               dynamic_lr=args.dynamic_lr, dynamic_decay=args.dynamic_decay,
                               progress=progress)  # fmt: skip
    report["checkpoint"] = str(ckpt.path)
    report["text"] = args.text or "held-out part of the training corpus"
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(f"checkpoint {ckpt.path}, text: {report['text']} ({report['characters']:,} characters)")
    if report["unknown_characters"]:
        shown = ", ".join(repr(c) for c in report["unknown"])
        print(f"left out {report['unknown_characters']:,} characters the model does not know: {shown}")
    rows = [("model", "loss")]
    if args.windows is not None:
        rows.append((f"model, {args.windows}-char windows", "window_loss"))
    if args.dynamic:
        rows.append((f"model, dynamic eval ({args.dynamic_update})", "dynamic_loss"))
    rows += [("Kneser-Ney 5-gram", "ngram_loss"), ("gzip -9", "gzip_loss")]
    width = max(22, *(len(label) + 2 for label, _ in rows))
    print(f"{'':<{width}}{'nats/char':>10}{'bits/char':>11}")
    for label, key in rows:
        print(f"{label:<{width}}{report[key]:>10.4f}{report[key] / math.log(2):>11.4f}")
    if args.windows is not None and "window_loss_after_8" in report:
        print(f"windows: {report['num_windows']:,} from zero state (seed {report['window_seed']}); first 8 characters "
              f"{report['window_loss_first_8']:.4f}, the rest {report['window_loss_after_8']:.4f}")  # fmt: skip
    invented = report["invented_words"]
    print(
        f"invented words: {report['invented_word_share']:.2%}" + (f" ({', '.join(invented[:10])})" if invented else "")
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from charnn.training.plot import plot_run

    print(plot_run(args.run_dir))
    return 0


# --- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from charnn.serve import serve
    except ImportError as error:
        raise CharnnError(f"charnn serve needs FastAPI and uvicorn ({error}); pip install 'charnn[serve]'") from None

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        limits=config_from_args(args, ServeLimits),
        threads=args.threads,
    )
    return 0


# --- export and import -------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from charnn.interop.onnx import export_onnx
    from charnn.interop.web import export_web
    from charnn.run_folder import load_checkpoint

    if args.quantize and args.format != "onnx":
        raise ConfigError("--quantize applies to --format onnx only")
    if args.format == "onnx" and args.out.exists() and not args.overwrite:
        raise ConfigError(f"{args.out} already exists; choose another --out or pass --overwrite")
    ckpt = load_checkpoint(args.checkpoint)
    if args.format == "web":
        out = export_web(ckpt.model, ckpt.vocab, args.out, overwrite=args.overwrite)
        print(f"wrote {out}/ (index.html, model.onnx, model.json, onnxruntime-web); serve it with any static file "
              f"server, e.g. python -m http.server -d {out}")  # fmt: skip
        return 0
    text = _held_out_text(ckpt, args) if args.quantize else None
    if text is None:
        result = export_onnx(ckpt.model, ckpt.vocab, args.out, quantize=args.quantize)
    else:
        from tqdm import tqdm

        # Scoring both graphs on the held-out text takes the time here: a minute for the reference model.
        with tqdm(total=2 * len(text), unit="char", unit_scale=True, desc="held-out loss, fp32 and int8",
                  file=sys.stderr, disable=not sys.stderr.isatty()) as bar:  # fmt: skip
            result = export_onnx(ckpt.model, ckpt.vocab, args.out, quantize=args.quantize, text=text,
                                 on_progress=lambda done, total: bar.update(min(done, bar.total) - bar.n))  # fmt: skip
    line = f"wrote {result.path} ({result.size / 1e6:.2f} MB"
    print(line + (f"; fp32: {result.fp32_size / 1e6:.2f} MB)" if args.quantize else ")"))
    if result.loss_change is not None:
        print(f"held-out loss {result.fp32_loss:.4f} (fp32) -> {result.loss:.4f} ({args.quantize}) nats/char: "
              f"{result.loss_change:+.3%}")  # fmt: skip
    return 0


def _held_out_text(ckpt, args: argparse.Namespace) -> str | None:
    from charnn.data.corpus import load_corpus
    from charnn.data.dataset import of_checkpoint

    if args.text:
        return load_corpus(args.text, encoding=args.encoding).text
    try:
        text = of_checkpoint(ckpt).held_out_text()
    except CharnnError as error:
        print(f"charnn: warning: held-out loss not measured ({error}); pass --text TEXT", file=sys.stderr)
        return None
    if not text:
        print("charnn: warning: the model has no held-out text; pass --text TEXT to measure the loss", file=sys.stderr)
    return text or None


def cmd_import_keras(args: argparse.Namespace) -> int:
    from charnn.interop.keras import REFERENCE_SKIP, import_keras

    raw = args.raw or args.reference
    skip = args.skip_chars if args.skip_chars is not None else (REFERENCE_SKIP if args.reference else 0)
    out = import_keras(args.weights, args.corpus, args.out, raw=raw, skip_chars=skip, encoding=args.encoding,
                       overwrite=args.overwrite)  # fmt: skip
    print(f"wrote checkpoint {out}; try: charnn generate {out} --prime ...")
    return 0


# --- main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charnn",
        description="Character-level recurrent language models: train on any text, generate in its style.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model on a corpus", description="Train a model on a corpus.")
    p.add_argument("corpus", metavar="CORPUS", nargs="?", help="a text file, a folder of *.txt, an http(s) URL, "
                   "a known name (great-expectations, tinyshakespeare), or a DATA_DIR from charnn prepare")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="folder for checkpoints and metrics")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its newest checkpoint "
                   "(its corpus and options are reused; --epochs, --max-steps, --time-limit may change)")  # fmt: skip
    p.add_argument("--encoding", default="utf-8", help="text encoding of the corpus (default: utf-8)")
    p.add_argument("--overwrite", action="store_true", help="replace whatever RUN_DIR already holds")
    p.add_argument("--init-from", type=Path, metavar="CHECKPOINT", help="fine-tune: start from this checkpoint "
                   "(or run folder: its best, else newest) instead of random weights; the model's shape comes from "
                   "it, and its vocabulary grows by the corpus's new characters")  # fmt: skip
    p.add_argument("--nproc", type=int, metavar="N", help="train in N processes on this machine (one per GPU, or "
                   "a share of the CPU cores each) through torchrun; --batch-size is the total over them")  # fmt: skip
    add_config_flags(p, ModelConfig, skip=("vocab_size",))
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("prepare", help="encode a large corpus once, for training from a memory map",
                            description="Read CORPUS in one streaming pass with bounded memory and write its "
                            "encoded text (train.bin, val.bin) and manifest.json into DATA_DIR, for "
                            "`charnn train DATA_DIR`. An unchanged corpus is not read again.")  # fmt: skip
    p.add_argument("corpus", metavar="CORPUS", help="a text file, a folder of *.txt, an http(s) URL, or a known name")
    p.add_argument("--out", type=Path, metavar="DATA_DIR", required=True, help="folder for the prepared data")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the corpus (default: utf-8)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the text, at its end, held out for "
                   "validation (default: 0.1)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace whatever DATA_DIR holds, and prepare again "
                   "even an unchanged corpus")  # fmt: skip
    p.set_defaults(run=cmd_prepare)

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
    p.add_argument("--best-of", type=int, metavar="N", help="draw N samples and print the --num-samples of them "
                   "with the highest mean log-probability per character (scored by the model at temperature 1, "
                   "whatever --temperature drew them; best first)")  # fmt: skip
    p.add_argument("--stream", action="store_true", help="print characters as they are produced")
    p.add_argument("--json", action="store_true", help="print {samples, seed, checkpoint} as JSON (no prime)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")
    p.add_argument("--precision", choices=GENERATE_PRECISIONS, default="auto", help="weights after the prime: fp32 "
                   "gives the exact model; auto picks int8 where the CPU computes it fast (default: auto)")  # fmt: skip
    p.set_defaults(run=cmd_generate)

    p = commands.add_parser("evaluate", help="score a model on a text beside n-gram and gzip baselines",
                            description="Loss (nats and bits per character) of a model on a text, beside an "
                            "interpolated Kneser-Ney 5-gram fitted on the training text and gzip -9; and the "
                            "share of the text's words never seen in training (for generated samples).")  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder")
    p.add_argument("text", metavar="TEXT", nargs="?", help="a text file (or any corpus); default: the held-out "
                   "part of the model's training corpus")  # fmt: skip
    p.add_argument("--train-text", type=Path, help="the training text for the baselines, when the checkpoint's "
                   "corpus cannot be found")  # fmt: skip
    p.add_argument("--encoding", default="utf-8", help="text encoding (default: utf-8)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--windows", type=int, metavar="N", help="also score random N-character windows, each from a "
                   f"zero state (nanoGPT's protocol; it uses {NANOGPT_WINDOW})")  # fmt: skip
    p.add_argument("--num-windows", type=int, default=NANOGPT_WINDOWS, help="windows to score with --windows "
                   f"(default: {NANOGPT_WINDOWS}, nanoGPT's 200 batches of 64)")  # fmt: skip
    p.add_argument("--window-seed", type=int, default=0, help="seed for the windows' positions (default: 0)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: every core; on a machine "
                   "other jobs share, 1 is often faster)")  # fmt: skip
    p.add_argument("--dynamic", action="store_true", help="also score with dynamic evaluation (Krause et al. "
                   "2018): each segment scored, then a gradient step taken on it")  # fmt: skip
    p.add_argument("--dynamic-segment", type=int, default=DYNAMIC_SEGMENT, help="characters per segment of "
                   f"dynamic evaluation (default: {DYNAMIC_SEGMENT})")  # fmt: skip
    lrs = ", ".join(f"{lr:g} for {name}" for name, (lr, _) in DYNAMIC_UPDATES.items())
    decays = ", ".join(f"{decay:g} for {name}" for name, (_, decay) in DYNAMIC_UPDATES.items())
    p.add_argument("--dynamic-update", choices=list(DYNAMIC_UPDATES), default=DYNAMIC_UPDATE, help="dynamic "
                   "evaluation's update: rms (Krause et al.'s: each weight's step scaled by its gradient RMS on "
                   "the training text, and pulled back towards the trained weights) or sgd "
                   f"(default: {DYNAMIC_UPDATE})")  # fmt: skip
    p.add_argument("--dynamic-lr", type=float, help=f"learning rate of dynamic evaluation (default: {lrs})")
    p.add_argument("--dynamic-decay", type=float, help="pull towards the trained weights after each step of dynamic "
                   f"evaluation, a share in [0, 1) (default: {decays})")  # fmt: skip
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("score", help="each character's surprisal under a model, and the total",
                            description="Score a text with a model: every character's surprisal (-log2 of "
                            "its probability given the text before it) and the model's top alternatives. The "
                            "first character has nothing before it and is not scored, as in charnn evaluate; "
                            "characters the model does not know are reported and left out. Prints a summary "
                            "unless --json or --by-line says otherwise.")  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder (its best or newest)")
    p.add_argument("text", metavar="TEXT", help="a text file (read as charnn evaluate reads it), or - for "
                   "standard input")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON record per character per line (position, "
                   "character, bits, known, alternatives), streamed, then {\"summary\": ...}; with --by-line, "
                   "one record per line of text")  # fmt: skip
    p.add_argument("--by-line", action="store_true", help="each line's bits per character, most surprising first "
                   "(blank lines left out): lines that do not belong to the text stand out")  # fmt: skip
    p.add_argument("--min-chars", type=int, default=1, metavar="N", help="with --by-line, leave out lines shorter "
                   "than N characters: a few characters make a noisy figure (default: 1)")  # fmt: skip
    p.add_argument("--html", type=Path, metavar="OUT.html", help="also write the text as a web page, coloured by "
                   "surprisal, with the alternatives on hover")  # fmt: skip
    p.add_argument("--top", type=int, default=5, metavar="K", help="alternatives reported per character "
                   "(default: 5)")  # fmt: skip
    p.add_argument("--streams", type=int, default=64, metavar="N", help="pieces of a long text scored side by "
                   "side, each after a 256-character warm-up (faster); 1 scores every character after the "
                   "whole text before it (default: 64; a text under 4,096 characters is one piece)")  # fmt: skip
    p.add_argument("--precision", choices=GENERATE_PRECISIONS, default="auto", help="fp32: the plain model, the "
                   "figures of charnn evaluate; auto: the generation step, int8 where the CPU computes it fast "
                   "(several times faster; totals within 0.1%%, see benchmarks/RESULTS.md), else fp32 "
                   "(default: auto)")  # fmt: skip
    p.add_argument("--encoding", default="utf-8", help="text encoding (default: utf-8)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")
    p.set_defaults(run=cmd_score)

    p = commands.add_parser("plot", help="redraw RUN_DIR/loss.png", description="Redraw a run's loss curves.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.set_defaults(run=cmd_plot)

    p = commands.add_parser("info", help="summarise a checkpoint", description="Model summary and training record.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=cmd_info)

    p = commands.add_parser("serve", help="serve an HTTP API and a web page for a checkpoint",
                            description="Serve the model: an HTTP API (/v1/generate, OpenAI's /v1/completions, "
                            "/docs) and a page to try it at /.")  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder (its best or newest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: every core; the web "
                   "server's own work is small, see benchmarks/RESULTS.md)")  # fmt: skip
    add_config_flags(p, ServeLimits)
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser("export", help="export a model as ONNX, or as a web page that generates in the browser",
                            description="Export a checkpoint: --format onnx writes one ONNX file (characters and "
                            "state in, logits and new state out; vocabulary and configuration in its metadata); "
                            "--format web writes a static folder whose index.html generates text in the browser "
                            "with onnxruntime-web, with no server behind it.")  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder (its best or newest)")
    p.add_argument("--format", choices=("onnx", "web"), default="onnx", help="what to write (default: onnx)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file, or the folder for --format web")
    p.add_argument("--quantize", choices=("int8",), default=None, help="store int8 weights (a smaller file) and report "
                   "the held-out loss change")  # fmt: skip
    p.add_argument("--text", default=None, help="text to measure the loss change on (default: the held-out part of "
                   "the model's training corpus)")  # fmt: skip
    p.add_argument("--encoding", default="utf-8", help="text encoding of --text (default: utf-8)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("import-keras", help="turn a model trained with the reference TensorFlow code into a "
                            "checkpoint", description="Import the reference tutorial's Keras model (Embedding -> "
                            "GRU -> Dense). Its vocabulary is rebuilt from CORPUS as the reference built it: "
                            "sorted(set(text)); --reference reads the file as the reference did.")  # fmt: skip
    p.add_argument("weights", metavar="WEIGHTS", help="a Keras 3 *.weights.h5 file, or (with TensorFlow installed) "
                   "a TensorFlow checkpoint prefix such as checkpoints/ckpt_45")  # fmt: skip
    p.add_argument("--corpus", required=True, help="the text the model was trained on (file, URL or known name)")
    p.add_argument("--out", type=Path, required=True, metavar="CHECKPOINT_DIR", help="the checkpoint folder to write")
    p.add_argument("--raw", action="store_true", help="read the file's characters as they are: no byte-order mark "
                   "dropped, CRLF kept, no Gutenberg header cut (the reference's reading)")  # fmt: skip
    p.add_argument("--skip-chars", type=int, default=None, help="cut this many characters from the start of the "
                   "text (the reference cut 835)")  # fmt: skip
    p.add_argument("--reference", action="store_true", help="the reference's reading: --raw --skip-chars 835")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the corpus (default: utf-8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.set_defaults(run=cmd_import_keras)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if "charnn.training.distributed" in sys.modules:  # perhaps a rank of a distributed run: see exit_process
        from charnn.training.distributed import exit_process

        exit_process(code)
    return code


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except CharnnError as error:
        _report(error)
        return 2
    except KeyboardInterrupt:
        print("charnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        sys.stderr.close()
        return 0


def _report(error: CharnnError) -> None:
    """One line on stderr; in a distributed run, it names the rank and is left for torchrun's agent."""
    message = render_names(str(error), flag)
    group = _group()
    if group.active:
        rank = group.rank
        if not message.startswith(f"rank {rank}:"):
            message = f"rank {rank}: {message}"
        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            from charnn.training.distributed import record_error

            record_error(message, type(error).__name__)
            if os.environ.get("CHARNN_LAUNCHER"):
                return  # `charnn train --nproc` names the failing rank itself, once
    print(f"charnn: error: {message}", file=sys.stderr)
