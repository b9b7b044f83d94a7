"""The run folder: its checkpoints found, listed and resolved; its metrics kept in step with them."""

import json
import shutil

import pytest

from charnn.checkpoint import TRAINER_STATE
from charnn.errors import CheckpointError
from charnn.run_folder import METRICS, append_metrics, list_checkpoints, load_checkpoint, resolve, truncate_metrics


def test_one_checkpoint_per_epoch_and_best_then_newest_is_resolved(tiny_run, tmp_path):
    assert [p.name for p in list_checkpoints(tiny_run)] == ["ckpt_1", "ckpt_2"]
    assert resolve(tiny_run).name == "best"
    shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("best"))
    assert resolve(tmp_path / "run").name == "ckpt_2"
    assert (tmp_path / "run" / "ckpt_2" / TRAINER_STATE).is_file()


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "nope")


def test_numbered_checkpoints_sort_by_epoch_then_step(tiny_run, tmp_path):
    for name in ("ckpt_2", "ckpt_10_3", "ckpt_2_7", "ckpt_1", "ckpt_10", "not_a_ckpt"):
        shutil.copytree(tiny_run / "ckpt_1", tmp_path / name)
    (tmp_path / "ckpt_3").mkdir()  # no checkpoint.json: not a checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_1", "ckpt_2_7", "ckpt_2", "ckpt_10_3", "ckpt_10"]


def test_resuming_drops_the_metrics_written_after_its_checkpoint(tmp_path):
    for step in (5, 10, 15):
        append_metrics(tmp_path, {"kind": "log", "step": step, "loss": 1.0})
    with open(tmp_path / METRICS, "a", encoding="utf-8") as f:
        f.write('{"kind": "log", "st')  # torn by a crash mid-write
    truncate_metrics(tmp_path, 10)
    lines = (tmp_path / METRICS).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10]
