"""A model trained with the reference TensorFlow tutorial's code, turned into a charnn checkpoint.

The reference model is Embedding -> GRU (reset_after=True) -> Dense. Its weights come from

- a Keras 3 ``*.weights.h5`` file (what its ModelCheckpoint writes on today's TensorFlow), read
  with h5py: no TensorFlow needed;
- an older TensorFlow checkpoint (``ckpt_N.index`` + ``ckpt_N.data-*``), read with TensorFlow
  when it is installed.

The reference saves no vocabulary: it is rebuilt from the corpus the way the reference built it,
``sorted(set(text))`` of the text it trained on. The reference read its file raw (no byte-order
mark dropped, CRLF kept) and cut the first 835 characters (`raw=True, skip_chars=835`).

Keras's GRU keeps its gates in the order z, r, h along the columns of (in, 3H) matrices and two
bias vectors, one added to the input's product and one to the state's (inside the reset gate's
product for h, as PyTorch does); PyTorch keeps r, z, n along the rows of (3H, in) matrices. The
mapping is a transpose and a reordering of blocks, so the logits are the same.

    ckpt = import_keras("checkpoints/ckpt_45.weights.h5", "1400-0.txt", "imported", raw=True, skip_chars=835)
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charnn.checkpoint import is_checkpoint, save_checkpoint
from charnn.config import ModelConfig
from charnn.data.corpus import decode_bytes, load_corpus, source_files, source_of
from charnn.errors import CharnnError, CheckpointError, ConfigError, CorpusError
from charnn.model import CharRNN
from charnn.vocab import Vocabulary

REFERENCE_SKIP = 835  # the characters the reference slices off its Gutenberg file


@dataclass(frozen=True)
class KerasWeights:
    """The reference model's weights in Keras's layout."""

    embedding: np.ndarray  # (V, E)
    grus: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per layer: kernel (in, 3H), recurrent (H, 3H), bias (2, 3H)
    dense_kernel: np.ndarray  # (H, V)
    dense_bias: np.ndarray  # (V,)

    @property
    def vocab_size(self) -> int:
        return self.embedding.shape[0]


def read_keras_weights(path: str | Path) -> KerasWeights:
    """The weights of a ``*.weights.h5`` file, or of a TensorFlow checkpoint (its prefix or its .index)."""
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix == ".index" else path
    if prefix.with_name(prefix.name + ".index").is_file():
        return _classify(_tf_checkpoint_layers(prefix), str(path))
    if not path.is_file():
        raise CheckpointError(f"no such weights file: {path}")
    return _classify(_h5_layers(path), str(path))


def _h5_layers(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        import h5py
    except ImportError:
        raise CharnnError("reading Keras weights needs h5py; pip install 'charnn[export]'") from None

    layers: dict[str, list[np.ndarray]] = {}

    def visit(name: str, item) -> None:
        parts = name.split("/")
        if parts[0] == "optimizer" or parts[-1] != "vars" or not isinstance(item, h5py.Group):
            return
        arrays = [np.asarray(item[k], dtype=np.float32) for k in sorted(item, key=int)]
        if arrays:
            layers["/".join(p for p in parts[:-1] if p != "cell")] = arrays

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a Keras weights file ({error})") from None
    return layers


_TF_ORDER = {"embeddings": 0, "kernel": 0, "recurrent_kernel": 1, "bias": 2}


def _tf_checkpoint_layers(prefix: Path) -> dict[str, list[np.ndarray]]:
    try:
        import tensorflow as tf
    except ImportError:
        raise CheckpointError(
            f"{prefix} is a TensorFlow checkpoint, which only TensorFlow reads; install tensorflow, "
            "or save the weights as a Keras 3 *.weights.h5 file"
        ) from None
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as error:  # TensorFlow raises its own kinds for a bad checkpoint
        raise CheckpointError(f"cannot read the TensorFlow checkpoint {prefix} ({error})") from None
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    for name in reader.get_variable_to_shape_map():
        if not name.endswith(suffix) or "OPTIMIZER_SLOT" in name or name.startswith(("optimizer/", "save_counter")):
            continue
        *layer, variable = name[: -len(suffix)].split("/")
        if variable not in _TF_ORDER:
            continue
        key = "/".join(p for p in layer if p != "cell")
        found.setdefault(key, []).append((_TF_ORDER[variable], reader.get_tensor(name).astype(np.float32)))
    return {k: [a for _, a in sorted(v, key=lambda x: x[0])] for k, v in found.items()}


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _classify(layers: dict[str, list[np.ndarray]], source: str) -> KerasWeights:
    """Embedding, GRUs and Dense told apart by their variables' shapes, GRUs in name order."""
    embeddings, grus, dense = [], [], []
    for name in sorted(layers, key=_natural):
        arrays = layers[name]
        shapes = [a.shape for a in arrays]
        if len(arrays) == 1 and arrays[0].ndim == 2:
            embeddings.append(arrays[0])
        elif len(arrays) == 3 and arrays[0].ndim == 2 and arrays[1].ndim == 2:
            kernel, recurrent, bias = arrays
            if bias.ndim == 1:
                raise CheckpointError(
                    f"{source}: layer {name} is a GRU with reset_after=False (one bias vector), which computes its "
                    "candidate state differently from PyTorch's GRU; only reset_after=True (Keras's default) imports"
                )
            units = recurrent.shape[0]
            if kernel.shape[1] != 3 * units or recurrent.shape != (units, 3 * units) or bias.shape != (2, 3 * units):
                raise CheckpointError(f"{source}: layer {name} has shapes {shapes}, not those of a GRU")
            grus.append((kernel, recurrent, bias))
        elif len(arrays) == 2 and arrays[0].ndim == 2 and arrays[1].ndim == 1:
            dense.append(arrays)
        else:
            raise CheckpointError(
                f"{source}: layer {name} with shapes {shapes} is not part of Embedding -> GRU -> Dense"
            )
    if len(embeddings) != 1 or not grus or len(dense) != 1:
        raise CheckpointError(
            f"{source}: expected the reference model, one Embedding, GRU layers and one Dense; found "
            f"{len(embeddings)} Embedding, {len(grus)} GRU, {len(dense)} Dense"
        )
    embedding, (dense_kernel, dense_bias) = embeddings[0], dense[0]
    size = embedding.shape[1]
    for i, (kernel, recurrent, _) in enumerate(grus):
        if kernel.shape[0] != size:
            raise CheckpointError(f"{source}: GRU layer {i} takes inputs of {kernel.shape[0]}, but gets {size}")
        size = recurrent.shape[0]
    if dense_kernel.shape != (size, embedding.shape[0]) or dense_bias.shape != (embedding.shape[0],):
        raise CheckpointError(
            f"{source}: the Dense layer's kernel is {dense_kernel.shape}, expected ({size}, {embedding.shape[0]}) "
            "from the GRU's units and the embedding's vocabulary"
        )
    return KerasWeights(embedding, grus, dense_kernel, dense_bias)


def _gates_to_torch(matrix: np.ndarray) -> np.ndarray:
    """(..., 3H) in Keras's z, r, h order -> (..., 3H) in PyTorch's r, z, n order."""
    z, r, h = np.split(matrix, 3, axis=-1)
    return np.concatenate([r, z, h], axis=-1)


def to_charnn(weights: KerasWeights) -> CharRNN:
    """The same network as a CharRNN, with the same logits for the same input."""
    hidden = weights.grus[0][1].shape[0]
    config = ModelConfig(
        vocab_size=weights.vocab_size,
        embedding_dim=weights.embedding.shape[1],
        hidden_size=hidden,
        cell="gru",
        num_layers=len(weights.grus),
    )
    if any(r.shape[0] != hidden for _, r, _ in weights.grus):
        raise CheckpointError("the GRU layers have different numbers of units; charnn's layers share one hidden_size")
    state = {"embedding.weight": weights.embedding}
    for layer, (kernel, recurrent, bias) in enumerate(weights.grus):
        state[f"rnn.weight_ih_l{layer}"] = _gates_to_torch(kernel).T  # (3H, in)
        state[f"rnn.weight_hh_l{layer}"] = _gates_to_torch(recurrent).T  # (3H, H)
        state[f"rnn.bias_ih_l{layer}"] = _gates_to_torch(bias[0])
        state[f"rnn.bias_hh_l{layer}"] = _gates_to_torch(bias[1])
    state["head.weight"] = weights.dense_kernel.T  # (V, H)
    state["head.bias"] = weights.dense_bias
    model = CharRNN(config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()})
    return model.eval()


def read_reference_text(corpus: str, *, raw: bool = False, skip_chars: int = 0, encoding: str = "utf-8") -> str:
    """The text a model was trained on: `raw` reads the file's characters as they are (the
    reference's reading; otherwise charnn's normalisation applies), then `skip_chars` are cut."""
    if skip_chars < 0:
        raise ConfigError(f"`skip_chars` must be 0 or more, got {skip_chars}")
    if raw:
        files, folder = source_files(corpus)
        if folder:
            raise ConfigError("`raw` reading takes one file, as the reference read it; `corpus` names a folder")
        try:
            text = decode_bytes(files[0].read_bytes(), encoding, str(files[0]))
        except OSError as error:
            raise CorpusError(f"cannot read {files[0]}: {error.strerror}") from None
    else:
        text = load_corpus(corpus, encoding=encoding).text
    text = text[skip_chars:]
    if not text:
        raise CorpusError(f"corpus {corpus} holds no text after its first {skip_chars} characters")
    return text


def import_keras(
    weights: str | Path,
    corpus: str,
    out: str | Path,
    *,
    raw: bool = False,
    skip_chars: int = 0,
    encoding: str = "utf-8",
    overwrite: bool = False,
) -> Path:
    """Write a charnn checkpoint at `out` from the reference code's `weights` and its `corpus`.

    A corpus whose characters do not give the vocabulary the weights were trained with (its
    size against the embedding's rows) is refused: the reading options are then not the ones
    the model was trained with.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another folder or set `overwrite`")
    if out.exists() and not is_checkpoint(out):
        raise ConfigError(f"{out} exists and is not a checkpoint; it is not replaced")
    keras = read_keras_weights(weights)
    text = read_reference_text(corpus, raw=raw, skip_chars=skip_chars, encoding=encoding)
    vocab = Vocabulary.from_text(text)
    if len(vocab) != keras.vocab_size:
        hint = "" if raw and skip_chars == REFERENCE_SKIP else (
            f"; the reference read its file raw and cut its first {REFERENCE_SKIP} characters "
            f"(`raw`, `skip_chars` {REFERENCE_SKIP})"
        )  # fmt: skip
        raise CorpusError(
            f"the corpus gives a vocabulary of {len(vocab)} characters, but the weights were trained with "
            f"{keras.vocab_size}: not the text, or not the reading, the model was trained on{hint}"
        )
    model = to_charnn(keras)
    record = {"characters": len(text), "encoding": encoding, "label": corpus}
    if not raw and not skip_chars:  # read as charnn reads corpora: charnn evaluate can find it again
        corpus_text = load_corpus(corpus, encoding=encoding)
        record |= {"name": corpus, "source": source_of(corpus), "sha256": corpus_text.sha256}
    training = {
        "imported_from": {"weights": str(Path(weights).resolve()), "format": "keras", "raw": raw,
                          "skip_chars": skip_chars},
    }  # fmt: skip
    return save_checkpoint(out, model, vocab, training=training, corpus=record)
