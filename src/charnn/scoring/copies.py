"""What a text copied from a model's training text: the longest span found there verbatim, and
the share of its characters that lie in copied spans of at least `min_length` characters.

The training text's suffix array (pydivsufsort's, built once per text and cached by its sha256)
turns each position of the text into a binary search for the longest piece of the training text
that starts with it, so a sample is checked against a novel in milliseconds.

    index = CopyIndex(training_text)
    report = index.report(sample)  # report.longest, report.share, report.spans
"""

import bisect
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from charnn import atomic
from charnn.errors import ConfigError

MIN_LENGTH = 50  # characters: a shorter run is usually a common phrase, not a copied passage


@dataclass(frozen=True)
class Span:
    start: int  # in the text checked
    length: int
    training_offset: int  # where the same characters stand in the training text


@dataclass(frozen=True)
class CopyReport:
    characters: int
    min_length: int
    longest: Span | None  # the longest piece found verbatim in the training text (None for an empty text)
    share: float  # of the characters, those inside copied spans of at least min_length
    spans: list[tuple[int, int]] = field(default_factory=list)  # (start, end) of each copied stretch, merged

    def to_dict(self) -> dict:
        """As JSON has it: spans as [start, end] lists."""
        return asdict(self) | {"spans": [list(span) for span in self.spans]}


_INDEXES: dict[tuple[str, str], "CopyIndex"] = {}  # per checkpoint and corpus, once per process


def index_for(training_text: str) -> "CopyIndex":
    """The copy index of `training_text`, its suffix array cached with charnn's other downloads and builds."""
    from charnn.data.corpus import cache_dir

    return CopyIndex(training_text, cache_dir() / "copies")


def index_of(checkpoint) -> "CopyIndex":
    """The copy index of a checkpoint's training text, found again as `charnn evaluate` finds it (a
    CharnnError says why it cannot be); built once per process however often it is asked for."""
    from charnn.data.dataset import of_checkpoint

    key = (str(checkpoint.path), str(checkpoint.corpus.get("sha256")))
    if key not in _INDEXES:
        _INDEXES[key] = index_for(of_checkpoint(checkpoint).training_text())
    return _INDEXES[key]


class CopyIndex:
    """The training text and its suffix array, for finding what another text copied from it."""

    def __init__(self, training_text: str, cache: Path | None = None):
        self.text = training_text
        self.order = _suffix_array(training_text, cache)

    def longest_at(self, text: str, start: int) -> Span:
        """The longest prefix of `text[start:]` that the training text holds, and where it holds it."""
        # Suffixes sorted; the longest match of `rest` is next to where it would be inserted. Comparing
        # only its first `size` characters keeps each step short; a match as long as that is looked
        # for again with more, so a long copied passage is still measured whole.
        size = 256
        while True:
            rest = text[start : start + size]
            where = bisect.bisect_left(range(len(self.order)), rest, key=lambda i: self._piece(i, len(rest)))
            best = Span(start, 0, 0)
            for i in (where - 1, where):
                if 0 <= i < len(self.order):
                    offset = int(self.order[i])
                    length = _common_prefix(rest, self.text, offset)
                    if length > best.length:
                        best = Span(start, length, offset)
            if best.length < len(rest) or start + len(rest) >= len(text):
                return best
            size *= 4

    def _piece(self, i: int, size: int) -> str:
        offset = int(self.order[i])
        return self.text[offset : offset + size]

    def report(self, text: str, min_length: int = MIN_LENGTH) -> CopyReport:
        if min_length < 1:
            raise ConfigError(f"`min_length` must be at least 1, got {min_length}")
        longest, spans = None, []
        for start in range(len(text)):
            span = self.longest_at(text, start)
            if longest is None or span.length > longest.length:
                longest = span
            if span.length >= min_length:  # [start, start + length) copied; merge with what overlaps
                if spans and start <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], max(spans[-1][1], start + span.length))
                else:
                    spans.append((start, start + span.length))
        copied = sum(stop - begin for begin, stop in spans)
        share = copied / len(text) if text else 0.0
        return CopyReport(len(text), min_length, longest, share, spans)


def not_copied(index: CopyIndex, samples: list[str], max_copied: float, min_length: int = MIN_LENGTH) -> list[int]:
    """The indices of the samples that copied at most a share `max_copied` of their characters."""
    if not 0.0 <= max_copied <= 1.0:
        raise ConfigError(f"`max_copied` must be a share from 0 to 1, got {max_copied}")
    return [i for i, sample in enumerate(samples) if index.report(sample, min_length).share <= max_copied]


def _common_prefix(text: str, training: str, offset: int) -> int:
    """How many characters `text` and `training[offset:]` share at their start."""
    low, high = 0, min(len(text), len(training) - offset)
    while low < high:  # the longest equal prefix, by halving (string comparison is done in C)
        middle = (low + high + 1) // 2
        if training.startswith(text[:middle], offset):
            low = middle
        else:
            high = middle - 1
    return low


def _suffix_array(text: str, cache: Path | None) -> np.ndarray:
    """pydivsufsort's suffix array of `text` by code point, read from `cache` when built before."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    path = None if cache is None else cache / f"suffix-array-{digest[:32]}.npy"
    if path is not None and path.is_file():
        try:
            order = np.load(path)
            if len(order) == len(text):
                return order
        except (OSError, ValueError):
            pass  # a damaged cache file is built again
    from pydivsufsort import divsufsort

    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int32)
    order = divsufsort(codes) if len(codes) else np.zeros(0, dtype=np.int32)
    if path is not None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, order)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, buffer.getvalue())
    return order
