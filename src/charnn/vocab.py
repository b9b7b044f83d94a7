"""The vocabulary: the sorted set of distinct characters of a corpus, and the two mappings.

>>> vocab = Vocabulary.from_text("hello")
>>> vocab.decode(vocab.encode("hole"))
'hole'
"""

from dataclasses import dataclass, field

import numpy as np

from charnn.errors import UnknownCharactersError


@dataclass(frozen=True)
class Vocabulary:
    characters: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _sorted_points: np.ndarray = field(init=False, repr=False, compare=False)
    _sorted_index: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(set(self.characters)) != len(self.characters):
            raise ValueError("vocabulary characters must be distinct")
        if any(len(c) != 1 for c in self.characters):
            raise ValueError("vocabulary entries must be single characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.characters)})
        # Code points in ascending order and the index of each: encode() is then one
        # vectorised searchsorted instead of a dictionary lookup per character.
        points = np.array([ord(c) for c in self.characters], dtype=np.uint32)
        order = np.argsort(points)
        object.__setattr__(self, "_sorted_points", points[order])
        object.__setattr__(self, "_sorted_index", order.astype(np.int64))

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.characters)

    def __contains__(self, character: str) -> bool:
        return character in self._index

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self._index.keys())

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 indices. Raises UnknownCharactersError naming every unknown character."""
        indices = self.lookup(text)
        if len(indices) and indices.min() < 0:
            raise UnknownCharactersError(self.unknown(text))
        return indices

    def lookup(self, text: str) -> np.ndarray:
        """Text -> int64 indices, -1 for each character the vocabulary does not know."""
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if len(self.characters) == 0:
            return np.full(len(points), -1, dtype=np.int64)
        position = np.searchsorted(self._sorted_points, points)
        position = np.minimum(position, len(self._sorted_points) - 1)
        return np.where(self._sorted_points[position] == points, self._sorted_index[position], -1)

    def decode(self, indices) -> str:
        return "".join(self.characters[int(i)] for i in indices)

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
