"""Any corpus reference opens into the same Dataset: a text or prepared data, split alike, found again."""

import pytest

from charnn.data.corpus import Corpus
from charnn.data.dataset import find_again, open_corpus, split
from charnn.data.prepare import prepare
from charnn.errors import ConfigError, CorpusError
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT


def test_a_text_and_its_prepared_data_open_alike(tiny_corpus, tmp_path):
    text = open_corpus(str(tiny_corpus))
    prepared = open_corpus(prepare(str(tiny_corpus), tmp_path / "data").data_dir)
    assert text.vocab == prepared.vocab and text.val_fraction == prepared.val_fraction == 0.1
    assert text.training_text() + text.held_out_text() == TINY_TEXT * 40
    assert prepared.training_text() == text.training_text() and prepared.held_out_text() == text.held_out_text()
    assert text.reference["sha256"] == prepared.reference["sha256"]
    assert text.reference["source"] == str(tiny_corpus.resolve()) and "prepared" not in text.reference
    assert prepared.reference["prepared"] == str((tmp_path / "data").resolve())
    assert text.describe() == f"corpus {tiny_corpus}: {len(TINY_TEXT) * 40:,} characters, {len(text.vocab)} distinct"
    assert prepared.describe().startswith(f"data {tmp_path / 'data'}: {len(TINY_TEXT) * 40:,} characters (")


def test_the_split_of_prepared_data_is_fixed(tiny_corpus, tmp_path):
    data_dir = prepare(str(tiny_corpus), tmp_path / "data", val_fraction=0.2).data_dir
    assert open_corpus(data_dir).val_fraction == 0.2
    assert open_corpus(data_dir, val_fraction=0.2).val_fraction == 0.2
    with pytest.raises(ConfigError, match="`val_fraction` 0.1"):
        open_corpus(data_dir, val_fraction=0.1)
    with pytest.raises(ConfigError, match="vocabulary"):
        open_corpus(data_dir, vocab=Vocabulary.from_text("abc"))


def test_a_split_dataset_is_checked_not_split_again():
    data = split(Corpus("tiny", TINY_TEXT * 40), val_fraction=0.3)
    assert split(data, vocab=data.vocab, val_fraction=0.3) is data
    with pytest.raises(ConfigError, match="`val_fraction` 0.1"):
        split(data, vocab=data.vocab, val_fraction=0.1)
    with pytest.raises(ConfigError, match="vocabulary"):
        split(data, vocab=Vocabulary.from_text(TINY_TEXT + "@"), val_fraction=0.3)


def test_found_again_through_its_reference_and_checked(tiny_corpus, tmp_path):
    data = open_corpus(str(tiny_corpus), val_fraction=0.2)
    again = find_again(data.reference, 0.2)
    assert again.reference == data.reference and again.held_out_text() == data.held_out_text()
    tiny_corpus.write_text(TINY_TEXT * 41, encoding="utf-8")
    with pytest.raises(CorpusError, match="has changed"):
        find_again(data.reference, 0.2)
    tiny_corpus.unlink()
    with pytest.raises(CorpusError, match="cannot find the run's training corpus again"):
        find_again(data.reference, 0.2)
