import json

import pytest
import torch

from charnn.card import CARD
from charnn.checkpoint import FORMAT_VERSION, METADATA, WEIGHTS, read_checkpoint
from charnn.errors import CheckpointError
from charnn.run_folder import resolve


def test_checkpoint_describes_itself(tiny_run):
    path = resolve(tiny_run)
    assert sorted(p.name for p in path.iterdir()) == sorted([CARD, METADATA, WEIGHTS])
    metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
    assert metadata["format_version"] == FORMAT_VERSION
    assert "你" in metadata["vocabulary"]
    assert metadata["model"]["hidden_size"] == 32
    assert metadata["training"]["epoch"] == 2
    assert len(metadata["corpus"]["sha256"]) == 64


def test_reloaded_checkpoint_gives_bit_identical_logits(tiny_run, tmp_path):
    from charnn.checkpoint import save_checkpoint

    ckpt = read_checkpoint(resolve(tiny_run))
    tokens = torch.from_numpy(ckpt.vocab.encode("“Pip,” said Joe")).unsqueeze(0)
    with torch.no_grad():
        before, _ = ckpt.model(tokens)
    save_checkpoint(tmp_path / "copy", ckpt.model, ckpt.vocab, training=ckpt.training, corpus=ckpt.corpus)
    again = read_checkpoint(tmp_path / "copy")
    with torch.no_grad():
        after, _ = again.model(tokens)
    assert torch.equal(before, after)
    assert again.vocab == ckpt.vocab


def _copy(tiny_run, tmp_path):
    import shutil

    target = tmp_path / "ckpt"
    shutil.copytree(resolve(tiny_run), target)
    return target


def test_missing_weights(tiny_run, tmp_path):
    path = _copy(tiny_run, tmp_path)
    (path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        read_checkpoint(path)


def test_corrupt_weights(tiny_run, tmp_path):
    path = _copy(tiny_run, tmp_path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-10:] = b"\xff" * 10
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(path)


def test_corrupt_metadata(tiny_run, tmp_path):
    path = _copy(tiny_run, tmp_path)
    (path / METADATA).write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)


def test_newer_format_version(tiny_run, tmp_path):
    path = _copy(tiny_run, tmp_path)
    metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
    metadata["format_version"] = FORMAT_VERSION + 1
    (path / METADATA).write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(CheckpointError, match="newer"):
        read_checkpoint(path)


def test_vocabulary_that_does_not_match_the_weights(tiny_run, tmp_path):
    path = _copy(tiny_run, tmp_path)
    metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
    metadata["vocabulary"] = metadata["vocabulary"][:-1]
    (path / METADATA).write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(CheckpointError, match="vocabulary"):
        read_checkpoint(path)
