"""The vocabulary: the sorted set of distinct characters of a corpus, and the two mappings.

>>> vocab = Vocabulary.from_text("hello")
>>> vocab.decode(vocab.encode("hole"))
'hole'

Both mappings are vectorised (a table indexed by code point, and an array of code points), so
they serve one character and a whole corpus alike.
"""

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from charnn.errors import UnknownCharactersError

CODE_POINTS = 0x110000
HEAD = 1 << 16  # characters: fewer are looked at one by one (a set), more through a table
SLICE = 1 << 22  # characters of a large text learned at a time


@dataclass(frozen=True)
class Vocabulary:
    characters: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(set(self.characters)) != len(self.characters):
            raise ValueError("vocabulary characters must be distinct")
        if any(len(c) != 1 for c in self.characters):
            raise ValueError("vocabulary entries must be single characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.characters)})

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return CharacterSet(text).vocabulary()

    def __len__(self) -> int:
        return len(self.characters)

    def __contains__(self, character: str) -> bool:
        return character in self._index

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self._index.keys())

    def encode(self, text: str, dtype=np.int64) -> np.ndarray:
        """Text -> indices of `dtype`. Raises UnknownCharactersError naming every unknown character."""
        indices = self._indices(text)
        if len(indices) and indices.max() >= len(self.characters):
            raise UnknownCharactersError(self.unknown(text))
        return indices.astype(dtype, copy=False)

    def lookup(self, text: str) -> np.ndarray:
        """Text -> int64 indices, -1 for each character the vocabulary does not know."""
        indices = self._indices(text).astype(np.int64)
        indices[indices == len(self.characters)] = -1
        return indices

    def decode(self, indices) -> str:
        """Indices (a sequence, an array or a CPU tensor) -> text."""
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":  # an empty list
            indices = indices.astype(np.int64)
        return self._code_points[indices].tobytes().decode("utf-32-le", "surrogatepass")

    def _indices(self, text: str) -> np.ndarray:
        """The index of each character, len(self) for an unknown one."""
        # bytes.translate looks characters below 256 up several times faster than array indexing.
        table, small = self._table, self._table.dtype == np.uint8
        if text.isascii() and small:
            return np.frombuffer(text.encode("ascii").translate(self._byte_table), dtype=np.uint8)
        units = text.encode("utf-16-le", "surrogatepass")
        if len(units) != 2 * len(text):  # characters beyond the Basic Multilingual Plane
            return table[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)]
        points = np.frombuffer(units, dtype=np.uint16)
        wide = np.flatnonzero(points >= 256) if small else None
        if wide is None or len(wide) > len(points) // 4:
            return table[points]
        # Mostly Latin-1: translate the low bytes, then patch the few wider characters.
        indices = np.frombuffer(bytearray(points.astype(np.uint8)).translate(self._byte_table), dtype=np.uint8)
        indices[wide] = table[points[wide]]
        return indices

    @cached_property
    def _table(self) -> np.ndarray:
        """(CODE_POINTS,) the index of each code point; len(self) for those not in the vocabulary."""
        unknown = len(self.characters)
        dtype = np.uint8 if unknown < 1 << 8 else np.uint16 if unknown < 1 << 16 else np.uint32
        table = np.full(CODE_POINTS, unknown, dtype=dtype)
        table[self._code_points] = np.arange(unknown)
        return table

    @cached_property
    def _byte_table(self) -> bytes:
        return self._table[:256].tobytes()

    @cached_property
    def _code_points(self) -> np.ndarray:
        return np.array([ord(c) for c in self.characters], dtype="<u4")

    def extended(self, text: str) -> "Vocabulary":
        """This vocabulary followed by the characters of `text` it lacks, sorted.

        Every character keeps its index, so a model trained with this vocabulary still reads and
        writes the same rows (fine-tuning grows a model this way: `charnn.model.grow_vocabulary`).
        """
        return Vocabulary(self.characters + tuple(self.unknown(text)))

    def to_json(self) -> list[str]:
        return list(self.characters)

    @classmethod
    def from_json(cls, data) -> "Vocabulary":
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ValueError("a vocabulary is a JSON list of characters")
        return cls(tuple(data))


class CharacterSet:
    """The distinct characters of a text fed in pieces: how every vocabulary is learned.

    Most of a piece repeats characters already seen. Those are deleted from its UTF-8 form
    (bytes.translate for ASCII, bytes.replace for the first few others) and only what remains,
    usually little, is decoded and looked at.
    """

    def __init__(self, text: str = ""):
        self.characters: set[str] = set()
        self._ascii_seen = b""  # deleted by bytes.translate
        self._wide_seen: list[bytes] = []  # the UTF-8 of each non-ASCII character seen
        self._seen_points: np.ndarray | None = None  # (CODE_POINTS,) bool, for text rich in non-ASCII
        if text:
            self.add(text)

    def add(self, text: str, utf8: bytes | None = None) -> None:
        """Add the characters of `text`; `utf8`, when given, is its UTF-8 form already at hand."""
        if utf8 is None and len(text) > SLICE:  # a large text in one piece: bounded memory
            for start in range(0, len(text), SLICE):
                self.add(text[start : start + SLICE])
            return
        if not self.characters and len(text) > HEAD:
            self._learn(text[:HEAD], None)  # most characters show up early: then little is left to decode
        self._learn(text, utf8)

    def _learn(self, text: str, utf8: bytes | None) -> None:
        data = text.encode("utf-8", "surrogatepass") if utf8 is None else utf8
        rest = data.translate(None, self._ascii_seen)
        if rest and len(self._wide_seen) <= 16:  # a few curly quotes and dashes: cheaper to delete too
            for character in self._wide_seen:
                rest = rest.replace(character, b"")
        if not rest:
            return
        remaining = rest.decode("utf-8", "surrogatepass")
        if len(remaining) < HEAD:
            self._add(set(remaining) - self.characters)
            return
        if self._seen_points is None:
            self._seen_points = np.zeros(CODE_POINTS, dtype=bool)
            self._seen_points[[ord(c) for c in self.characters]] = True
        points = np.frombuffer(remaining.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self._add({chr(p) for p in np.unique(points[~self._seen_points[points]]).tolist()})

    def update(self, other: "CharacterSet") -> None:
        self._add(other.characters - self.characters)

    def copy(self) -> "CharacterSet":
        twin = CharacterSet()
        twin.update(self)
        return twin

    def vocabulary(self) -> Vocabulary:
        return Vocabulary(tuple(sorted(self.characters)))

    def _add(self, characters: set[str]) -> None:
        if not characters:
            return
        self.characters |= characters
        self._ascii_seen = bytes(sorted(ord(c) for c in self.characters if ord(c) < 128))
        self._wide_seen += [c.encode("utf-8", "surrogatepass") for c in characters if ord(c) >= 128]
        if self._seen_points is not None:
            self._seen_points[[ord(c) for c in characters]] = True
