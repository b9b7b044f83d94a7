"""Property tests over arbitrary Unicode text and random bytes: errors are typed, never crashes.

`pytest tests/test_fuzz.py --hypothesis-show-statistics` reports how many cases ran.
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn.checkpoint import METADATA, WEIGHTS
from charnn.data.corpus import load_corpus, normalize
from charnn.errors import CharnnError, CorpusError, UnknownCharactersError
from charnn.run_folder import load_checkpoint, resolve
from charnn.vocab import Vocabulary

# No time limit per example (deadline) and no example database (which hypothesis keeps in the
# current folder and replays from there): a run depends neither on the machine's speed nor on earlier runs.
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.text())
def test_vocabulary_round_trips_any_text(text):
    vocab = Vocabulary.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    assert Vocabulary.from_json(vocab.to_json()) == vocab


@FUZZ
@given(st.text(min_size=1), st.text())
def test_unknown_characters_are_always_reported(known, text):
    vocab = Vocabulary.from_text(known)
    missing = sorted(set(text) - set(known))
    if missing:
        with pytest.raises(UnknownCharactersError) as caught:
            vocab.encode(text)
        assert caught.value.characters == missing
    else:
        assert vocab.decode(vocab.encode(text)) == text


@FUZZ
@given(st.text())
def test_normalisation_is_idempotent_and_strips_what_it_should(text):
    once = normalize(text)
    assert "\r\n" not in once
    assert not once.startswith("\ufeff")
    if "*** START OF" not in text and "***START OF" not in text and "END OF" not in text:
        assert normalize(once) == once


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_corpus_reader_on_random_bytes(data, encoding):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        path.write_bytes(data)
        try:
            text = load_corpus(str(path), encoding=encoding).text
        except CorpusError:
            return
        assert isinstance(text, str) and text


@pytest.fixture(scope="module")
def good_checkpoint(tiny_run):
    return resolve(tiny_run)


@FUZZ
@given(data=st.binary(max_size=4000), target=st.sampled_from([WEIGHTS, METADATA]), keep=st.integers(0, 3000))
def test_checkpoint_loader_on_random_bytes(good_checkpoint, data, target, keep):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ckpt"
        shutil.copytree(good_checkpoint, path)
        original = (path / target).read_bytes()
        # Random bytes alone, or a real file truncated and followed by garbage.
        (path / target).write_bytes(data if keep % 2 else original[:keep] + data)
        if target == WEIGHTS and keep % 3 == 0:
            # With a matching checksum the bytes reach the safetensors parser itself.
            metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
            metadata["weights_sha256"] = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
            (path / METADATA).write_text(json.dumps(metadata), encoding="utf-8")
        try:
            load_checkpoint(path)
        except CharnnError:
            pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(field=st.sampled_from(["vocabulary", "model", "format_version", "training", "corpus"]), value=JSON)
def test_checkpoint_loader_on_wrong_metadata(good_checkpoint, field, value):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ckpt"
        shutil.copytree(good_checkpoint, path)
        metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
        metadata[field] = value
        (path / METADATA).write_text(json.dumps(metadata), encoding="utf-8")
        try:
            load_checkpoint(path)
        except CharnnError:
            pass
