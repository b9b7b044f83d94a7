"""Self-describing checkpoints: a folder with ``model.safetensors``, ``checkpoint.json`` and a
model card, ``README.md`` (`charnn.card`).

This module reads and writes one such folder; `charnn.run_folder` knows a run's many.

The JSON holds the format version, the vocabulary, the model configuration, the training
record and the corpus reference, so generating needs nothing else. Weights are read only
through safetensors: loading never executes code. A checkpoint is written into a temporary
folder beside its final name, flushed, then renamed into place (`charnn.atomic`), so a reader
never sees half of one.
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from charnn import atomic
from charnn.card import CARD, model_card
from charnn.config import ModelConfig
from charnn.errors import CheckpointError, ConfigError
from charnn.model import CharRNN
from charnn.vocab import Vocabulary

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "checkpoint.json"
TRAINER_STATE = "trainer.pt"  # optimizer, schedule and random states, for --resume


@dataclass
class Checkpoint:
    model: CharRNN
    vocab: Vocabulary
    training: dict[str, Any]
    corpus: dict[str, Any]
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def card(self) -> str:
        """The folder's model card; one written from its metadata where the folder predates cards."""
        try:
            return (self.path / CARD).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return model_card(read_metadata(self.path), self.path, self.model.num_parameters())


def save_checkpoint(
    directory: Path,
    model: CharRNN,
    vocab: Vocabulary,
    *,
    training: dict[str, Any],
    corpus: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    storage: torch.dtype = torch.float32,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically; an existing one of the same name is replaced.

    `trainer_state` (tensors, numbers, lists and dicts only) is what resuming needs besides
    the weights; it is read back with torch.load(weights_only=True), which runs no code.
    `storage` float16 halves the file (the base model ships so); loading always gives float32
    weights. `extra` adds keys to checkpoint.json, such as the card's `licence` and `evaluation`.
    """
    directory = Path(directory)
    with atomic.replacing_folder(directory) as tmp:
        weights = {k: v.detach().to("cpu", storage).contiguous() for k, v in model.state_dict().items()}
        # Serialised in memory, written by Python: a full disk is then a plain OSError.
        weights_bytes = safetensors.torch.save(weights)
        atomic.write_bytes(tmp / WEIGHTS, weights_bytes)
        metadata = {
            "format_version": FORMAT_VERSION,
            "vocabulary": vocab.to_json(),
            "model": model.config.to_dict(),
            "training": training,
            "corpus": corpus,
            "weights_sha256": hashlib.sha256(weights_bytes).hexdigest(),
            **(extra or {}),
        }
        if trainer_state is not None:
            buffer = io.BytesIO()
            torch.save(trainer_state, buffer)
            atomic.write_bytes(tmp / TRAINER_STATE, buffer.getvalue())
            metadata["trainer_state_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
        atomic.write_bytes(tmp / METADATA, text.encode("utf-8"))
        card = model_card(metadata, directory, model.num_parameters())
        atomic.write_bytes(tmp / CARD, card.encode("utf-8"))
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """The sha256 of a checkpoint's weights file, as a fine-tuning run records its parent's."""
    return _sha256(Path(path) / WEIGHTS)


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / METADATA).is_file()


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((Path(path) / METADATA).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing {METADATA}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path}: {METADATA} is corrupt ({error})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path}: {METADATA} is corrupt (not a JSON object)")
    version = metadata.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: {METADATA} has no format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this charnn reads "
            f"({FORMAT_VERSION}); upgrade charnn"
        )
    return metadata


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The optimizer, schedule and random states saved beside a checkpoint's weights."""
    path = Path(path)
    metadata = read_metadata(path)
    state_path = path / TRAINER_STATE
    if not state_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {TRAINER_STATE}, so training cannot resume from it")
    if metadata.get("trainer_state_sha256") != _sha256(state_path):
        raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE} does not match its checksum (corrupt or altered)")
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds on a bad file; all mean the same here
        raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE} is corrupt ({type(error).__name__})") from None


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load one checkpoint folder, checking its files against their checksums.

    `charnn.run_folder.load_checkpoint` takes a run folder too.
    """
    path = Path(path)
    metadata = read_metadata(path)
    weights_path = path / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing {WEIGHTS}")
    expected = metadata.get("weights_sha256")
    if expected is not None and _sha256(weights_path) != expected:
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} does not match its checksum (corrupt or altered)")
    try:
        vocab = Vocabulary.from_json(metadata["vocabulary"])
        config = ModelConfig.from_dict(metadata["model"])
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"checkpoint {path}: {METADATA} is incomplete or invalid ({error})") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"checkpoint {path}: vocabulary has {len(vocab)} characters but the model expects {config.vocab_size}"
        )
    try:
        state = safetensors.torch.load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} is corrupt ({error})") from None
    model = CharRNN(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: weights do not match the configuration ({first})") from None
    model.to(device).eval()
    return Checkpoint(
        model=model,
        vocab=vocab,
        training=metadata.get("training", {}),
        corpus=metadata.get("corpus", {}),
        path=path,
    )
