import json

import pytest

from charnn.errors import UnknownCharactersError
from charnn.vocab import Vocabulary
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
