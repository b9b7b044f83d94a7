"""Importing the reference TensorFlow code's model.

tests/fixtures/keras/ was made once with real TensorFlow by tests/fixtures/make_keras_fixture.py:
the reference architecture at a tiny size, trained for three epochs on a tiny text read the
reference's way, its weights as Keras 3 writes them, and the Keras model's logits for a fixed
input. Here no TensorFlow is needed: h5py reads the weights. A numpy transcription of Keras's
GRU equations checks the gate mapping on random weights besides, stacked layers included.
"""

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from charnn.checkpoint import read_checkpoint
from charnn.errors import CheckpointError, ConfigError, CorpusError
from charnn.interop.keras import KerasWeights, import_keras, read_keras_weights, read_reference_text, to_charnn
from conftest import run_cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "keras"
WEIGHTS = FIXTURE / "ckpt_3.weights.h5"
CORPUS = FIXTURE / "corpus.txt"


def test_imported_model_gives_the_keras_logits(tmp_path):
    done = run_cli("import-keras", str(WEIGHTS), "--corpus", str(CORPUS), "--out", str(tmp_path / "ckpt"),
                   "--reference")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ckpt = read_checkpoint(tmp_path / "ckpt")
    expected = np.load(FIXTURE / "expected.npz")
    with torch.no_grad():
        logits, _ = ckpt.model(torch.from_numpy(expected["tokens"]))
    assert logits.shape == expected["logits"].shape
    np.testing.assert_allclose(logits.numpy(), expected["logits"], atol=1e-4)
    # The vocabulary is the reference's: sorted(set(text)) of the raw file less its first 835 characters.
    raw = CORPUS.read_bytes().decode("utf-8")[835:]
    assert ckpt.vocab.characters == tuple(sorted(set(raw)))
    assert "\r" in ckpt.vocab and "#" not in ckpt.vocab  # CRLF kept; the preamble's characters cut
    assert ckpt.training["imported_from"]["skip_chars"] == 835

    sample = run_cli("generate", str(tmp_path / "ckpt"), "--prime", "Pip", "--length", "40", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("Pip") and len(sample.stdout) > 40


def test_the_wrong_reading_is_refused_clearly(tmp_path):
    done = run_cli("import-keras", str(WEIGHTS), "--corpus", str(CORPUS), "--out", str(tmp_path / "ckpt"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "vocabulary of 49 characters" in done.stderr and "trained with 35" in done.stderr
    assert "(--raw, --skip-chars 835)" in done.stderr  # the library's parameters, shown as flags
    assert not (tmp_path / "ckpt").exists()
    # The same reading given option by option works; a second import over it is refused.
    import_keras(WEIGHTS, str(CORPUS), tmp_path / "ckpt", raw=True, skip_chars=835)
    with pytest.raises(ConfigError, match="already exists"):
        import_keras(WEIGHTS, str(CORPUS), tmp_path / "ckpt", raw=True, skip_chars=835)


def test_reading_options(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes("\ufeffHEADER\r\nbody “text”\r\n".encode())
    assert read_reference_text(str(path), raw=True) == "\ufeffHEADER\r\nbody “text”\r\n"
    assert read_reference_text(str(path), raw=True, skip_chars=9) == "body “text”\r\n"
    assert read_reference_text(str(path)) == "HEADER\nbody “text”\n"  # charnn's own normalisation
    with pytest.raises(CorpusError, match="no text after"):
        read_reference_text(str(path), skip_chars=1000)
    with pytest.raises(ConfigError, match="skip_chars"):
        read_reference_text(str(path), skip_chars=-1)
    with pytest.raises(ConfigError, match="one file"):
        read_reference_text(str(tmp_path), raw=True)


def keras_gru(x: np.ndarray, kernel, recurrent, bias) -> np.ndarray:
    """Keras's GRU, reset_after=True, written out from its documentation: (T, in) -> (T, H)."""
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    units = recurrent.shape[0]
    h = np.zeros(units)
    out = []
    for x_t in x:
        xi = x_t @ kernel + bias[0]  # (3H,) gates z, r, h
        hi = h @ recurrent + bias[1]
        z = sigmoid(xi[:units] + hi[:units])
        r = sigmoid(xi[units : 2 * units] + hi[units : 2 * units])
        candidate = np.tanh(xi[2 * units :] + r * hi[2 * units :])
        h = z * h + (1 - z) * candidate
        out.append(h)
    return np.array(out)


@pytest.mark.parametrize("layers", [1, 2])
def test_gate_mapping_against_keras_equations(layers):
    rng = np.random.default_rng(layers)
    vocab, embedding, units = 11, 6, 9
    grus = [
        (rng.normal(0, 0.5, (embedding if i == 0 else units, 3 * units)), rng.normal(0, 0.5, (units, 3 * units)),
         rng.normal(0, 0.5, (2, 3 * units)))
        for i in range(layers)
    ]  # fmt: skip
    weights = KerasWeights(rng.normal(size=(vocab, embedding)), grus, rng.normal(size=(units, vocab)),
                           rng.normal(size=vocab))  # fmt: skip
    tokens = rng.integers(0, vocab, 25)
    x = weights.embedding[tokens]
    for kernel, recurrent, bias in grus:
        x = keras_gru(x, kernel, recurrent, bias)
    expected = x @ weights.dense_kernel + weights.dense_bias
    model = to_charnn(weights)
    assert model.config.num_layers == layers
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(tokens)[None])
    np.testing.assert_allclose(logits[0].numpy(), expected, atol=1e-4)


def _rewrite(source: Path, target: Path, change) -> Path:
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as f:
        change(f)
    return target


def test_weights_that_do_not_fit_are_refused(tmp_path):
    def one_bias(f):  # reset_after=False keeps a single bias vector
        del f["layers/gru/cell/vars/2"]
        f["layers/gru/cell/vars/2"] = np.zeros(48, dtype=np.float32)

    with pytest.raises(CheckpointError, match="reset_after=False"):
        read_keras_weights(_rewrite(WEIGHTS, tmp_path / "a.weights.h5", one_bias))

    def narrow_dense(f):
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = np.zeros((12, 35), dtype=np.float32)

    with pytest.raises(CheckpointError, match=r"Dense layer's kernel is \(12, 35\), expected \(16, 35\)"):
        read_keras_weights(_rewrite(WEIGHTS, tmp_path / "b.weights.h5", narrow_dense))

    def no_dense(f):
        del f["layers/dense"]

    with pytest.raises(CheckpointError, match="0 Dense"):
        read_keras_weights(_rewrite(WEIGHTS, tmp_path / "c.weights.h5", no_dense))

    (tmp_path / "d.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="not a Keras weights file"):
        read_keras_weights(tmp_path / "d.weights.h5")
    with pytest.raises(CheckpointError, match="no such weights file"):
        read_keras_weights(tmp_path / "missing.weights.h5")


def test_tensorflow_checkpoints_need_tensorflow(tmp_path):
    (tmp_path / "ckpt_3.index").write_bytes(b"\0" * 16)
    (tmp_path / "ckpt_3.data-00000-of-00001").write_bytes(b"\0" * 16)
    expected = "cannot read the TensorFlow" if importlib.util.find_spec("tensorflow") else "only TensorFlow reads"
    for path in (tmp_path / "ckpt_3", tmp_path / "ckpt_3.index"):
        with pytest.raises(CheckpointError, match=expected):
            read_keras_weights(path)
    done = run_cli("import-keras", str(tmp_path / "ckpt_3"), "--corpus", str(CORPUS), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
