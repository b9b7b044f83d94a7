"""A corpus ready to train on: its vocabulary and its training and held-out parts as tokens.

Any corpus reference opens the same way, a text file, a folder, a URL, a registered name or a
DATA_DIR from `charnn prepare`; training, resuming and evaluating all go through here.

    data = open_corpus("great-expectations")  # the last 10% held out
    data.vocab, data.train_tokens, data.val_tokens, data.describe()
    again = find_again(data.reference, data.val_fraction)  # as a checkpoint finds it, sha256 checked

A text is encoded and cut here; prepared data was cut when it was prepared and is read
through memory maps, so its split is fixed and a different one is refused.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charnn.config import TrainConfig
from charnn.data.corpus import Corpus, load_corpus, source_of, train_length
from charnn.data.prepare import PreparedData, is_prepared, open_prepared
from charnn.errors import CheckpointError, ConfigError, CorpusError
from charnn.vocab import Vocabulary

DEFAULT_VAL_FRACTION = TrainConfig.val_fraction  # the field's default


@dataclass(frozen=True, eq=False)
class Dataset:
    """A corpus opened and split: what training reads, and what its checkpoints record."""

    label: str  # what the user named: a corpus, or a DATA_DIR
    vocab: Vocabulary
    train_tokens: torch.Tensor  # (N,) the text before the held-out part
    val_tokens: torch.Tensor  # (M,) the held-out text: the last val_fraction of it
    val_fraction: float
    reference: dict[str, Any]  # what a checkpoint records to find this text again (see find_again)
    prepared: bool = False  # read from a DATA_DIR, whose split is fixed

    @property
    def characters(self) -> int:
        return len(self.train_tokens) + len(self.val_tokens)

    def describe(self) -> str:
        """One line for the top of a training log."""
        if self.prepared:
            return (f"data {self.label}: {self.characters:,} characters ({len(self.train_tokens):,} for training, "
                    f"{len(self.val_tokens):,} held out), {len(self.vocab)} distinct")  # fmt: skip
        return f"corpus {self.label}: {self.characters:,} characters, {len(self.vocab)} distinct"

    def training_text(self) -> str:
        return self.vocab.decode(self.train_tokens)

    def held_out_text(self) -> str:
        return self.vocab.decode(self.val_tokens)


def open_corpus(
    spec: str | Path, *, encoding: str = "utf-8", val_fraction: float | None = None, vocab: Vocabulary | None = None
) -> Dataset:
    """Open the corpus `spec` names (a path, folder, URL, registered name or DATA_DIR) and split it.

    `val_fraction` None keeps a prepared DATA_DIR's own split, and holds out 10% of a text;
    `vocab` None takes the prepared one, or the text's own characters.
    """
    spec = str(spec)
    if is_prepared(spec):
        return split(open_prepared(spec), vocab=vocab, val_fraction=val_fraction, label=spec)
    return split(load_corpus(spec, encoding=encoding), vocab=vocab, val_fraction=val_fraction)


def split(
    corpus: Corpus | PreparedData | Dataset,
    *,
    vocab: Vocabulary | None = None,
    val_fraction: float | None = None,
    label: str | None = None,
) -> Dataset:
    """A Dataset of `corpus` with this vocabulary and held-out share (None: as for `open_corpus`).

    Prepared data, and a Dataset already split, are checked to agree with them.
    """
    if isinstance(corpus, Corpus):
        vocab = Vocabulary.from_text(corpus.text) if vocab is None else vocab
        val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        tokens = torch.from_numpy(vocab.encode(corpus.text))
        cut = train_length(len(tokens), val_fraction)  # the held-out part last, contiguous: no window straddles both
        train_tokens, val_tokens = tokens[:cut], tokens[cut:]
        reference = {
            "name": corpus.name,
            "source": source_of(corpus.name),
            "encoding": corpus.encoding,
            "sha256": corpus.sha256,
            "characters": len(corpus.text),
        }
        return Dataset(corpus.name, vocab, train_tokens, val_tokens, val_fraction, reference)
    data = _from_prepared(corpus, label) if isinstance(corpus, PreparedData) else corpus
    if vocab is not None and vocab != data.vocab:
        made = "prepared" if data.prepared else "opened"
        raise ConfigError(f"the vocabulary differs from the one {data.label} was {made} with")
    if val_fraction is not None and val_fraction != data.val_fraction:
        if not data.prepared:
            raise ConfigError(f"{data.label} was split holding out {data.val_fraction} of its text, the run asks "
                              f"for `val_fraction` {val_fraction}")  # fmt: skip
        raise ConfigError(
            f"{data.label} holds out {data.val_fraction} of its text, the run asks for `val_fraction` "
            f"{val_fraction}; leave the option out, or prepare it again with `val_fraction` {val_fraction}"
        )
    return data


def _from_prepared(data: PreparedData, label: str | None) -> Dataset:
    corpus = data.manifest["corpus"]
    reference = {
        "name": corpus["name"],
        "prepared": str(data.path.resolve()),
        "source": corpus["source"],
        "encoding": corpus["encoding"],
        "sha256": corpus["sha256"],
        "characters": data.characters,
    }
    train_tokens, val_tokens = torch.from_numpy(data.train), torch.from_numpy(data.val)
    label = str(data.path) if label is None else label
    return Dataset(label, data.vocab, train_tokens, val_tokens, data.val_fraction, reference, prepared=True)


def find_again(reference: dict[str, Any], val_fraction: float, vocab: Vocabulary | None = None) -> Dataset:
    """The corpus a checkpoint's `reference` names, opened again and checked against its sha256.

    A text is split with `val_fraction` and encoded with `vocab`; prepared data keeps its own.
    """
    if "prepared" in reference:
        try:
            data = open_prepared(reference["prepared"])
        except CorpusError as error:
            raise CorpusError(f"cannot find the run's prepared data again ({error})") from None
        if data.sha256 != reference.get("sha256"):
            raise CorpusError(
                f"the data in {reference['prepared']} has changed since the model was trained (its sha256 differs); "
                f"run charnn prepare {reference.get('source')} --out {reference['prepared']} again"
            )
        return split(data)
    source = reference.get("source") or reference.get("name")
    if not source:
        raise CheckpointError("the checkpoint does not say which corpus it was trained on")
    try:
        corpus = load_corpus(source, encoding=reference.get("encoding", "utf-8"))
    except CorpusError as error:
        raise CorpusError(f"cannot find the run's training corpus again ({error})") from None
    if corpus.sha256 != reference.get("sha256"):
        raise CorpusError(f"the corpus {source} has changed since the model was trained (its sha256 differs)")
    # Under the name it was trained under, so the run's record stays the same.
    return split(
        dataclasses.replace(corpus, name=reference.get("name", source)), vocab=vocab, val_fraction=val_fraction
    )


def of_checkpoint(ckpt) -> Dataset:
    """The corpus a checkpoint was trained on, found again, split as it was then."""
    return find_again(ckpt.corpus, ckpt.training.get("config", {}).get("val_fraction", 0.0))
