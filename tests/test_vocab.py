import json

import numpy as np
import pytest

from charnn.errors import UnknownCharactersError
from charnn.vocab import CharacterSet, Vocabulary
from conftest import TINY_TEXT


def test_sorted_distinct_characters():
    vocab = Vocabulary.from_text("banana")
    assert vocab.characters == ("a", "b", "n")
    assert len(vocab) == 3


def test_round_trip_with_non_ascii():
    vocab = Vocabulary.from_text(TINY_TEXT)
    encoded = vocab.encode(TINY_TEXT)
    assert encoded.dtype.name == "int64"
    assert vocab.decode(encoded) == TINY_TEXT
    assert "你" in vocab and "“" in vocab


def test_json_round_trip():
    vocab = Vocabulary.from_text(TINY_TEXT)
    again = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert again == vocab
    assert list(again.encode(TINY_TEXT)) == list(vocab.encode(TINY_TEXT))


def test_unsorted_vocabulary_still_encodes():
    vocab = Vocabulary(("z", "a", "你"))
    assert list(vocab.encode("a你z")) == [1, 2, 0]


def test_unknown_characters_are_named():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(UnknownCharactersError) as caught:
        vocab.encode("abxcy")
    assert caught.value.characters == ["x", "y"]
    assert "'x'" in str(caught.value) and "'y'" in str(caught.value)


def test_empty_text():
    vocab = Vocabulary.from_text("ab")
    assert len(vocab.encode("")) == 0
    assert vocab.decode([]) == ""


@pytest.mark.parametrize(
    "text",
    ["plain ascii\n", "café crème — “quoted”\n" * 30, "你好世界" * 50 + "ab", "emoji 🙂 and 你好\n", "\udc80 lone"],
    ids=["ascii", "mostly-latin-1", "wide", "astral", "surrogate"],
)
def test_every_lookup_path_agrees_with_the_characters(text):
    vocab = Vocabulary.from_text(text)
    assert vocab.characters == tuple(sorted(set(text)))
    expected = [vocab.characters.index(c) for c in text]
    assert vocab.encode(text).tolist() == expected and vocab.lookup(text).tolist() == expected
    assert vocab.encode(text, np.uint16).dtype == np.uint16
    assert vocab.decode(vocab.encode(text, np.uint8)) == text
    unknown = "x" if "x" not in text else "Ω"
    assert vocab.lookup(text[:3] + unknown).tolist() == expected[:3] + [-1]
    with pytest.raises(UnknownCharactersError):
        vocab.encode(text + unknown)


def test_a_vocabulary_of_more_than_256_characters():
    text = "".join(chr(0x4E00 + i) for i in range(300)) + "abc"
    vocab = Vocabulary(tuple(reversed(sorted(set(text)))))  # unsorted: ASCII characters get indices above 255
    assert vocab.decode(vocab.encode("abc" + text)) == "abc" + text
    assert vocab.encode("a").tolist() == [302]
    assert vocab.lookup("z").tolist() == [-1]


def test_characters_learned_in_pieces_equal_those_of_the_whole_text():
    pieces = ["abc", "“quoted” é", "", "你好" * 40_000, "🙂 a", "\n"]
    characters = CharacterSet()
    for piece in pieces:
        characters.add(piece)
    assert characters.vocabulary() == Vocabulary.from_text("".join(pieces))
    other = CharacterSet("xyz")
    other.update(characters)
    assert other.copy().characters == set("".join(pieces) + "xyz")
    utf8 = CharacterSet()
    utf8.add("Ωmega", "Ωmega".encode())
    assert utf8.characters == set("Ωmega")
