"""Typed errors for every mistake a user can make.

Library code raises these; each edge translates them: the CLI into a one-line message and
exit code 2, the server into an HTTP 4xx with a JSON body. Anything else is a bug.

A message names the caller's parameters as Python spells them, in backticks ("`hidden_size`
must be at least 1"); an edge shows each name as its own users type it, with `render_names`:
the CLI as a flag (--hidden-size).
"""

import re
from collections.abc import Callable

_NAME = re.compile(r"`([a-z][a-z0-9_]*)`")


def render_names(message: str, render: Callable[[str], str]) -> str:
    """`message` with each backticked parameter name replaced by `render(name)`."""
    return _NAME.sub(lambda match: render(match[1]), message)


class CharnnError(Exception):
    """A problem the user can fix; its message says what went wrong and what to do."""


class ConfigError(CharnnError, ValueError):
    """An option out of range, or options that contradict each other."""


class CorpusError(CharnnError):
    """A corpus that cannot be found, read or decoded, or that is too small."""


class UnknownCharactersError(CharnnError, KeyError):
    """Text holds characters the vocabulary does not know."""

    def __init__(self, characters):
        self.characters = sorted(set(characters))
        shown = ", ".join(repr(c) for c in self.characters)
        super().__init__(f"unknown characters (not in the model's vocabulary): {shown}")

    def __str__(self):
        # KeyError would quote the message; keep it readable.
        return self.args[0]


class CheckpointError(CharnnError):
    """A checkpoint that is missing, incomplete, corrupt, or from a newer charnn."""


class DataDirError(CharnnError):
    """A folder for prepared data that already holds something else, or cannot be written."""


class RunDirError(CharnnError):
    """An output folder that cannot be used for a new run."""


class TrainingError(CharnnError):
    """Training cannot start or cannot go on (no such device, a diverging loss)."""


class DistributedError(TrainingError):
    """A process of a distributed run lost contact with the others (one of them failed)."""


class LockedError(CharnnError):
    """A run or data folder that another process is writing into right now."""


class OutputError(CharnnError):
    """An output file that cannot be written (a missing folder, no permission, a full disk)."""
