"""charnn train: a new run, a fine-tuning run (--init-from) or a resumed one (--resume), in one
process or in --nproc processes started through torchrun; Ctrl-C stops it with a checkpoint."""

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from charnn.cli.flags import add_config_flags, add_encoding, config_from_args, field_names
from charnn.cli.progress import Progress
from charnn.config import ModelConfig, TrainConfig
from charnn.errors import ConfigError
from charnn.presets import PRESETS, with_preset

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
SCRATCH = "none"  # --init-from none: random weights


def add_parser(commands) -> None:
    p = commands.add_parser("train", help="train a model on a corpus", description="Train a model on a corpus.")
    p.add_argument("corpus", metavar="CORPUS", nargs="?", help="a text file, a folder of *.txt, an http(s) URL, "
                   "a known name (great-expectations, tinyshakespeare), or a DATA_DIR from charnn prepare")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="folder for checkpoints and metrics")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its newest checkpoint "
                   "(its corpus and options are reused; --epochs, --max-steps, --time-limit may change)")  # fmt: skip
    add_encoding(p, " of the corpus")
    p.add_argument("--overwrite", action="store_true", help="replace whatever RUN_DIR already holds")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="fine-tune: start from this checkpoint (or run "
                   "folder: its best, else newest; `base`: the base model that ships with charnn) instead of random "
                   "weights; the model's shape comes from it, and its vocabulary grows by the corpus's new "
                   "characters. `none`: random weights. Default: the base model when it knows 99%% of the text's "
                   "characters and no option asks otherwise (--preset seed, a different model shape, prepared "
                   "data); the run's first line says which")  # fmt: skip
    p.add_argument("--nproc", type=int, metavar="N", help="train in N processes on this machine (one per GPU, or "
                   "a share of the CPU cores each) through torchrun; --batch-size is the total over them")  # fmt: skip
    # The command starts from the default preset: its values are the defaults a user gets.
    preset = with_preset(None, {})
    add_config_flags(p, ModelConfig, skip=("vocab_size",), defaults=preset)
    add_config_flags(p, TrainConfig, defaults=preset, choices={"preset": tuple(PRESETS)})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"`nproc` must be at least 1, got {args.nproc}")
    if args.nproc is not None and "LOCAL_RANK" in os.environ:
        raise ConfigError("`nproc` starts torchrun itself; under torchrun, leave it out")
    if args.resume is not None:
        return _resume(args)
    if args.corpus is None or args.out is None:
        raise ConfigError("give a CORPUS and `out` RUN_DIR, or `resume` RUN_DIR")
    if args.init_from == SCRATCH:
        return _train(args)
    if args.init_from is not None:
        return _finetune(args, args.init_from)
    return _start_by_default(args)


def _start_by_default(args: argparse.Namespace) -> int:
    """No --init-from: the base model where it fits the text, else random weights, and say which."""
    from charnn.data.corpus import load_corpus
    from charnn.data.prepare import is_prepared
    from charnn.training.finetuning import default_start

    _check_cheaply(args)
    corpus = None if is_prepared(args.corpus) else load_corpus(args.corpus, encoding=args.encoding)
    explicit = {k: v for k, v in vars(args).items() if k in field_names(ModelConfig)}
    start = default_start(corpus.text if corpus else None, explicit, vars(args).get("preset"))
    if start.parent is None:
        return _train(args, corpus, start.reason)
    return _finetune(args, start.parent, corpus, start.reason)


def _check_cheaply(args: argparse.Namespace) -> TrainConfig:
    """The flags and the output folder, checked before a large corpus is read."""
    from charnn.run_folder import check_new

    options = _options(args)
    train_config = config_from_args(options, TrainConfig)
    config_from_args(options, ModelConfig, vocab_size=1)
    check_new(args.out, args.overwrite)
    return train_config


def _train(args: argparse.Namespace, corpus=None, why: str | None = None) -> int:
    """A run from random weights; `corpus` is the text when the caller has read it already, and
    `why` the line that says why it starts from random weights, printed when training starts."""
    from charnn.data.dataset import open_corpus, split
    from charnn.training import train

    options = _options(args)
    train_config = _check_cheaply(args)
    if _launching(args):
        return _launch(args, train_config)
    train_config = _threads_for_this_machine(train_config)
    # Without --val-fraction, prepared data keeps the split it was prepared with.
    val_fraction = vars(args).get("val_fraction")
    if corpus is not None:
        data = split(corpus, val_fraction=val_fraction)
    else:
        data = open_corpus(args.corpus, encoding=args.encoding, val_fraction=val_fraction)
    train_config = dataclasses.replace(train_config, val_fraction=data.val_fraction)
    model_config = config_from_args(options, ModelConfig, vocab_size=len(data.vocab))
    heading = data.describe() if why is None else f"{why}\n{data.describe()}"
    with Progress(heading) as progress, _interrupts() as interrupts:
        result = train(data, model_config, train_config, args.out, on_event=progress.on_event,
                       overwrite=args.overwrite, should_stop=interrupts.reason)  # fmt: skip
        _draw_plot(args.out, progress)
    return _finish(result, args.out)


def _finetune(args: argparse.Namespace, parent, corpus=None, why: str | None = None) -> int:
    """charnn train CORPUS --init-from CHECKPOINT --out RUN_DIR: the library checks the parent.
    Without --init-from, `why` is the line that says why the run starts from the base model."""
    from charnn.training import finetune

    # The preset's options (its dropout too), then the flags given; the model's shape is the parent's.
    options = _options(args)
    train_config = config_from_args(options, TrainConfig)
    if _launching(args):
        return _launch(args, train_config)
    train_config = _threads_for_this_machine(train_config)
    changes = {k: v for k, v in vars(options).items() if k in field_names(ModelConfig)}
    heading = why or f"fine-tuning {args.init_from} on {args.corpus}"
    with Progress(heading) as progress, _interrupts() as interrupts:
        result = finetune(corpus or args.corpus, parent, train_config, args.out, model_changes=changes,
                          encoding=args.encoding, on_event=progress.on_event, overwrite=args.overwrite,
                          should_stop=interrupts.reason)  # fmt: skip
        _draw_plot(args.out, progress)
    return _finish(result, args.out)


def _resume(args: argparse.Namespace) -> int:
    from charnn.training import resume

    if args.corpus is not None or args.out is not None or args.init_from is not None:
        raise ConfigError(
            "`resume` RUN_DIR continues a run with its own corpus, folder and starting point; give neither a "
            "CORPUS, `out` nor `init_from`"
        )
    if _launching(args):
        return _launch(args)
    overrides = {k: v for k, v in vars(args).items() if k in field_names(TrainConfig) | field_names(ModelConfig)}
    with Progress(f"resuming {args.resume}") as progress, _interrupts() as interrupts:
        result = resume(args.resume, overrides, on_event=progress.on_event, should_stop=interrupts.reason)
        _draw_plot(args.resume, progress)
    return _finish(result, args.resume)


def _threads_for_this_machine(config: TrainConfig) -> TrainConfig:
    """Without --threads, the cores other processes leave free now; saved with the run, so that a resumed
    run keeps the count (and its numbers)."""
    from charnn.hardware import default_threads

    return config if config.threads else dataclasses.replace(config, threads=default_threads())


def _options(args: argparse.Namespace) -> argparse.Namespace:
    """The preset's values, then the flags given (argparse leaves unset flags out of `args`)."""
    return argparse.Namespace(**with_preset(vars(args).get("preset"), vars(args)))


def _launching(args: argparse.Namespace) -> bool:
    return args.nproc is not None and args.nproc > 1


def _launch(args: argparse.Namespace, train_config: TrainConfig | None = None) -> int:
    """The same command in --nproc processes, started by torchrun."""
    from charnn.training.distributed import launch

    if train_config is not None and train_config.batch_size % args.nproc:
        raise ConfigError(f"`batch_size` {train_config.batch_size} is not a multiple of `nproc` {args.nproc}; "
                          "each process takes an equal share of every batch")  # fmt: skip
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


def group():
    """This process's place in a distributed run (torchrun's environment); one process without it."""
    from charnn.training.distributed import from_env

    return from_env()


def _draw_plot(run_dir, progress: Progress) -> None:
    """RUN_DIR/loss.png when training stops, drawn by rank 0."""
    if not group().is_main:
        return
    from charnn.training.plot import plot_run

    try:
        plot_run(run_dir)
    except Exception as error:  # a picture is a bonus: never fail a finished run over it
        progress.warn(f"could not draw loss.png: {error}")


def _finish(result, run_dir) -> int:
    if not group().is_main:  # rank 0 speaks for the run
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
    world = group().world_size
    if world == 1:
        return f"charnn train --resume {run_dir}"
    if os.environ.get("CHARNN_LAUNCHER"):
        return f"charnn train --resume {run_dir} --nproc {world}"
    return f"the same torchrun command, ending with -m charnn train --resume {run_dir}"


def _interrupts() -> "Interrupts":
    return Interrupts(quiet=not group().is_main)


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
