"""The command line: a thin layer over the library. `charnn --help` lists the commands; docs/cli.md
is their reference, generated from the same help (charnn.cli.reference).

A module per command or group of commands declares its parser and runs it. Every user mistake is
a CharnnError, printed here as one line with exit code 2, its backticked names shown as flags.
"""

import argparse
import os
import sys

from charnn.cli import console, export, generate, info, score, serve, train
from charnn.cli.flags import flag, render
from charnn.errors import CharnnError

__all__ = ["build_parser", "flag", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charnn",
        description="Character-level recurrent language models: train on any text, generate in its style.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (train.add_parser, info.add_prepare_parser, generate.add_parser, score.add_evaluate_parser,
                score.add_score_parser, info.add_plot_parser, info.add_info_parser, serve.add_parser,
                export.add_export_parser, export.add_import_keras_parser):  # fmt: skip
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if "charnn.training.distributed" in sys.modules:  # perhaps a rank of a distributed run: see exit_process
        from charnn.training.distributed import exit_process

        exit_process(code)
    return code


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    console.prepare()  # before anything is printed: characters the console lacks become escapes
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except CharnnError as error:
        _report(error, getattr(args, "renames", None))
        return 2
    except KeyboardInterrupt:
        print("charnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        sys.stderr.close()
        return 0


def _report(error: CharnnError, renames: dict[str, str] | None) -> None:
    """One line on stderr; in a distributed run, it names the rank and is left for torchrun's agent."""
    message = render(str(error), renames)
    group = train.group()
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
