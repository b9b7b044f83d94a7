"""Flags: those derived from the configuration dataclasses, and the arguments several commands share.

A configuration field's flag is its name in kebab case (seq_len -> --seq-len), with the help and
choices kept beside the field in charnn.config. Messages and help name fields in backticks;
`render` shows them as flags.
"""

import argparse
import dataclasses
import types
import typing

from charnn.config import DEVICES, GENERATE_PRECISIONS
from charnn.errors import ConfigError, render_names


def flag(name: str) -> str:
    """The command-line flag for a configuration field or a library parameter: seq_len -> --seq-len."""
    return "--" + name.replace("_", "-")


def add_copy_min(parser) -> None:
    parser.add_argument(
        "--copy-min",
        type=int,
        default=50,
        metavar="N",
        help="with a text to check: the shortest "
        "run of characters found verbatim in the training text that counts as copied (default: 50)",
    )


def render(text: str, renames: dict[str, str] | None = None) -> str:
    """`text` with each backticked name shown as its flag; `renames` maps a parameter to a flag of another name."""
    renames = renames or {}
    return render_names(text, lambda name: flag(renames.get(name, name)))


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


def add_config_flags(parser: argparse.ArgumentParser, cls, *, skip=(), defaults=None, choices=None) -> None:
    """One --kebab-case flag per field of the dataclass `cls`; unset flags stay out of the parsed arguments.

    `defaults` overrides the fields' defaults shown in the help (a preset's values); `choices` adds
    choices a field's metadata cannot name.
    """
    group = parser.add_argument_group(f"{cls.__name__} options")
    defaults, choices = defaults or {}, choices or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        value = defaults.get(field.name, field.default)
        shown = "" if value is None else f" (default: {value})"
        if value is not None and _optional(field.type):
            shown = f" (default: {value}; none: off)"
        help_text = render(field.metadata.get("help", "")) + shown
        if field.type is bool:  # --stateful / --no-stateful
            group.add_argument(flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)  # fmt: skip
            continue
        group.add_argument(
            flag(field.name),
            dest=field.name,
            type=_flag_type(field.type),
            choices=choices.get(field.name, field.metadata.get("choices")),
            default=argparse.SUPPRESS,
            help=help_text,
        )


def field_names(cls) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def config_from_args(args: argparse.Namespace, cls, **fixed):
    """`cls` built from the parsed flags of its fields (those given), and `fixed` values."""
    names = field_names(cls)
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **fixed)


# --- arguments several commands share --------------------------------------------------------------
# CHECKPOINT, each command's first positional argument, comes from a parent parser (argparse
# `parents=`). The shared options are added by functions instead: a parent's options would be
# listed first in --help, ahead of where each command has always listed them.

CHECKPOINT_HELP = "a checkpoint folder, or a run folder"
CHECKPOINT_HELP_RESOLVED = "a checkpoint folder, or a run folder (its best or newest)"


def checkpoint(help_text: str = CHECKPOINT_HELP_RESOLVED) -> argparse.ArgumentParser:
    """A parent parser (argparse `parents=`) with the CHECKPOINT argument a command reads."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("checkpoint", metavar="CHECKPOINT", help=help_text)
    return parent


def add_encoding(parser: argparse.ArgumentParser, of: str = "") -> None:
    """--encoding, of the text the command reads (`of`: " of the corpus")."""
    parser.add_argument("--encoding", default="utf-8", help=f"text encoding{of} (default: utf-8)")


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device for the commands that run a model (training has TrainConfig's own)."""
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """--threads for the commands that run a model without a TrainConfig (`apply_threads` sets it)."""
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: every core; "
                        "on a machine other jobs share, 1 is often faster)")  # fmt: skip


def apply_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"`threads` must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def add_precision(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--precision of the weights after the prime, for the commands that use the generation step."""
    parser.add_argument("--precision", choices=GENERATE_PRECISIONS, default="auto", help=help_text)
