"""Fine-tuning: a new run that starts from another run's checkpoint instead of random weights.

    result = finetune("dickens/hard-times.txt", "runs/ge", TrainConfig(time_limit=2), "runs/hard-times")

It starts from the parent's model, with the vocabulary grown by the new text's characters
(`initial_model`). From then on it is a run like any other, resumed with `resume`; its
checkpoints say where it started (`init_from`). `default_start` says whether a new run on a text
should start from the base model that ships with charnn, as `charnn train` does by default.
"""

import collections
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charnn import checkpoint, run_folder
from charnn.config import ModelConfig, TrainConfig
from charnn.data import dataset
from charnn.data.corpus import Corpus, load_corpus
from charnn.data.prepare import PreparedData, is_prepared, open_prepared
from charnn.errors import CheckpointError, ConfigError, RunDirError
from charnn.model import CharRNN, grow_vocabulary
from charnn.training import distributed
from charnn.training.record import TrainResult
from charnn.training.stopping import StopCheck
from charnn.training.trainer import EventHandler, start
from charnn.vocab import Vocabulary

# What a fine-tuning run takes from its parent as it is: the shapes of the weights. Dropout may
# change (it is how the network is trained, not what it holds); the vocabulary grows.
FIXED_BY_PARENT = ("embedding_dim", "hidden_size", "cell", "num_layers")
# The base model is where a run starts when it knows at least this share of the text's characters:
# the few it lacks are learned as new rows, but a text mostly in another script gains little from it.
BASE_COVERAGE = 0.99


@dataclass(frozen=True)
class Start:
    """Where a new run starts: the checkpoint to fine-tune (None: random weights), and why, in a line."""

    parent: Path | None
    reason: str


def default_start(text: str | None, model_options: dict[str, Any], preset: str | None) -> Start:
    """Where `charnn train TEXT` starts without --init-from: the base model, when the text's
    characters are mostly ones it knows and no option asks for something else.

    `text` None is prepared data (its vocabulary is fixed); `model_options` are the ModelConfig
    fields the user set; the `seed` preset reproduces the reference system, from random weights.
    """
    scratch = "training from random weights"
    if preset == "seed":
        return Start(None, f"the seed preset reproduces the reference system: {scratch}")
    if text is None:
        return Start(None, f"prepared data has a fixed vocabulary, so it cannot grow the base model's: {scratch}")
    if not checkpoint.is_checkpoint(run_folder.BASE_MODEL):
        return Start(None, f"no base model is installed: {scratch}")
    metadata = checkpoint.read_metadata(run_folder.BASE_MODEL)
    shape = metadata["model"]
    differ = [f"`{k}` {v}" for k, v in model_options.items() if k in FIXED_BY_PARENT and v != shape[k]]
    if differ:
        return Start(None, f"{', '.join(differ)} differs from the base model's shape: {scratch}")
    known = set(Vocabulary.from_json(metadata["vocabulary"]).characters)
    share = base_coverage(text, known)
    if share < BASE_COVERAGE:
        return Start(None, f"the base model knows only {share:.1%} of the text's characters: {scratch}")
    return Start(
        run_folder.BASE_MODEL,
        f"fine-tuning the base model, which knows {share:.2%} of the text's characters "
        "(--init-from none trains from random weights)",
    )


def base_coverage(text: str, known: set[str]) -> float:
    """The share of `text`'s characters, counted with repeats, that are in `known`."""
    counts = collections.Counter(text)
    return sum(n for c, n in counts.items() if c in known) / max(1, len(text))


def finetune(
    corpus: Corpus | str | Path,
    init_from: str | Path,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    model_changes: dict[str, Any] | None = None,
    encoding: str = "utf-8",
    on_event: EventHandler | None = None,
    overwrite: bool = False,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """Train the model of checkpoint `init_from` further on `corpus`, into a new run in `run_dir`.

    `init_from` is a checkpoint folder or a run folder (its best, else its newest checkpoint).
    The model keeps its parent's shape; `model_changes` (ModelConfig fields) may only repeat it,
    or set `dropout`. The vocabulary is the parent's followed by the characters of `corpus` it
    lacks (see `initial_model`). Every option of `config` works as in `train`, and the run is
    resumed with `resume` like any other, without the parent. Its checkpoints record the parent's
    path and the sha256 of its weights under `training["init_from"]`.
    """
    run_dir = Path(run_dir)
    parent = load_parent(init_from)
    changes = dict(model_changes or {})
    _refuse_parent_changes(parent.config, changes)
    _refuse_parent_folder(run_dir, parent.path)
    run_folder.check_new(run_dir, overwrite)  # before a large corpus is read
    if not isinstance(corpus, Corpus) and is_prepared(str(corpus)):
        corpus = _prepared_with_parents_vocabulary(str(corpus), parent)
        config = dataclasses.replace(config, val_fraction=corpus.val_fraction)  # prepared data keeps its split
    elif not isinstance(corpus, Corpus):
        corpus = load_corpus(str(corpus), encoding=encoding)
    text = corpus.text if isinstance(corpus, Corpus) else ""  # prepared data: no character to add
    model, vocab = initial_model(parent, text, seed=config.seed, dropout=changes.get("dropout"))
    record = {
        "path": str(parent.path.resolve()),
        "weights_sha256": checkpoint.weights_sha256(parent.path),
        "vocabulary_size": len(parent.vocab),
        "added_characters": list(vocab.characters[len(parent.vocab) :]),
    }
    data = dataset.split(corpus, vocab=vocab, val_fraction=config.val_fraction)
    group = distributed.from_env()
    with distributed.session(group):
        return start(data, model, config, run_dir, on_event, overwrite, should_stop, group, init_from=record)


def _prepared_with_parents_vocabulary(data_dir: str, parent: checkpoint.Checkpoint) -> PreparedData:
    """Prepared data to go on training on (a second stage of a long run, with other options): its
    vocabulary is fixed, so it must be the parent's own."""
    prepared = open_prepared(data_dir)
    if prepared.vocab != parent.vocab:
        raise ConfigError(
            f"corpus {data_dir} is prepared data, whose vocabulary is fixed, and it is not the parent's; "
            "fine-tuning grows the parent's vocabulary by the text's characters, so give it the text itself"
        )
    return prepared


def load_parent(path: str | Path) -> checkpoint.Checkpoint:
    """The checkpoint a fine-tuning run starts from, resolved as `charnn generate` resolves it."""
    try:
        return run_folder.load_checkpoint(Path(path))
    except CheckpointError as error:
        raise CheckpointError(f"cannot fine-tune from {path}: {error}") from None


def initial_model(
    parent: checkpoint.Checkpoint, text: str, *, seed: int = 0, dropout: float | None = None
) -> tuple[CharRNN, Vocabulary]:
    """The model a fine-tuning run on `text` starts from, and its vocabulary.

    The vocabulary is the parent's followed by the characters of `text` it lacks, so every
    character the parent knew keeps its index; the model is the parent's with a row for each new
    character (`charnn.model.grow_vocabulary`, drawn with `seed`), and `dropout` if given.
    """
    vocab = parent.vocab.extended(text)
    model = grow_vocabulary(parent.model, len(vocab), generator=torch.Generator().manual_seed(seed))
    if dropout is not None and dropout != model.config.dropout:
        weights = model.state_dict()
        model = CharRNN(dataclasses.replace(model.config, dropout=dropout))
        model.load_state_dict(weights)
    return model.train(), vocab


def _refuse_parent_changes(parent: ModelConfig, changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"model_changes holds names that are not ModelConfig fields: {', '.join(unknown)}")
    conflicts = [
        f"`{name}` {changes[name]} (the parent has {getattr(parent, name)})"
        for name in FIXED_BY_PARENT
        if name in changes and changes[name] != getattr(parent, name)
    ]
    if conflicts:
        raise ConfigError(
            "a fine-tuned model keeps its parent's shape; these differ: " + "; ".join(conflicts) + ". Leave them out"
        )
    if "dropout" in changes:
        dataclasses.replace(parent, dropout=changes["dropout"])  # validated like any ModelConfig


def _refuse_parent_folder(run_dir: Path, parent_path: Path) -> None:
    """A fine-tuning run writes a folder of its own: never into, or over, its parent's run."""
    out = run_dir.resolve()
    home = run_folder.holder(parent_path)
    if out == home or home in out.parents:
        where = "is" if out == home else "is inside"
        raise RunDirError(
            f"{run_dir} {where} the parent's own run folder {home}; give the fine-tuning run a new folder"
        )
    if out in Path(parent_path).resolve().parents:
        raise RunDirError(f"{run_dir} holds the parent checkpoint {parent_path}; give the run a new folder")
