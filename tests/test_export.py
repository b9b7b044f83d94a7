"""ONNX export: the graph run by onnxruntime against charnn's own fp32 model.

Tiny models (embedding 8, hidden 16) of every cell, one and two layers, trained for a few
steps on a small text so their choices are clear-cut: 1,000 held-out characters fed one at a
time give every logit within 1e-4 of the PyTorch model, and 500 greedy characters equal
charnn's own greedy text (`--precision fp32`).
"""

import json

import numpy as np
import onnx
import pytest
import torch

from charnn.checkpoint import read_checkpoint
from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.data.dataset import of_checkpoint
from charnn.errors import CharnnError, CheckpointError, ConfigError
from charnn.generation import generate_text
from charnn.interop import web as export
from charnn.interop.onnx import OnnxModel, export_onnx, onnx_loss
from charnn.interop.web import export_web
from charnn.training import train
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT, run_cli

SHAPES = [(cell, layers) for cell in ("gru", "lstm", "rnn") for layers in (1, 2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cell, layers) -> a checkpoint folder trained briefly, with a held-out fifth of its text."""
    folder = tmp_path_factory.mktemp("export-runs")
    corpus_path = folder / "corpus.txt"
    corpus_path.write_text(TINY_TEXT * 40, encoding="utf-8")
    corpus = load_corpus(str(corpus_path))
    vocab = Vocabulary.from_text(corpus.text)
    runs = {}
    for cell, layers in SHAPES:
        config = ModelConfig(vocab_size=len(vocab), embedding_dim=8, hidden_size=16, cell=cell, num_layers=layers)
        options = TrainConfig(seq_len=20, batch_size=8, epochs=1, max_steps=150, lr=2e-2, seed=1, precision="fp32",
                              val_fraction=0.2)  # fmt: skip
        result = train(corpus, config, options, folder / f"{cell}{layers}")
        runs[cell, layers] = result.last_checkpoint
    return runs


@pytest.mark.parametrize("cell,layers", SHAPES)
def test_onnx_matches_the_model(trained, tmp_path, cell, layers):
    ckpt = read_checkpoint(trained[cell, layers])
    export_onnx(ckpt.model, ckpt.vocab, tmp_path / "model.onnx")
    session = OnnxModel(tmp_path / "model.onnx")
    held_out = of_checkpoint(ckpt).held_out_text()[:1000]
    assert len(held_out) == 1000
    tokens = ckpt.vocab.encode(held_out)
    with torch.no_grad():
        expected, _ = ckpt.model(torch.from_numpy(tokens)[None])  # (1, 1000, V)
    state, worst = None, 0.0
    for i, token in enumerate(tokens):  # one character at a time, the state carried by the graph
        logits, state = session.run(np.array([[token]]), state)
        worst = max(worst, float(np.abs(logits[0, 0] - expected[0, i].numpy()).max()))
    assert worst < 1e-4

    greedy = generate_text(
        ckpt.model, ckpt.vocab, "Pip", length=500, sampling=SampleConfig(temperature=0), precision="fp32"
    )[0]
    assert session.generate_greedy("Pip", 500) == greedy
    assert len(set(greedy)) > 1  # a model that says something, so the comparison means something

    # Any batch, any number of steps: the prompt pass and a batch of two agree with PyTorch.
    batch = np.stack([tokens[:37], tokens[100:137]])
    logits, state = session.run(batch)
    with torch.no_grad():
        expected, expected_state = ckpt.model(torch.from_numpy(batch))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    expected_state = expected_state if cell == "lstm" else (expected_state,)
    for got, want in zip(state, expected_state, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_the_file_explains_itself(trained, tmp_path):
    ckpt = read_checkpoint(trained["lstm", 2])
    export_onnx(ckpt.model, ckpt.vocab, tmp_path / "model.onnx")
    proto = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["charnn.vocabulary"]) == list(ckpt.vocab.characters)
    assert json.loads(meta["charnn.model"]) == ckpt.config.to_dict()
    assert meta["charnn.version"]
    assert [i.name for i in proto.graph.input] == ["tokens", "state_h", "state_c"]
    assert [o.name for o in proto.graph.output] == ["logits", "new_state_h", "new_state_c"]
    assert OnnxModel(tmp_path / "model.onnx").vocab == ckpt.vocab


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_int8_is_smaller_and_close(trained, tmp_path, cell):
    ckpt = read_checkpoint(trained[cell, 2])
    text = of_checkpoint(ckpt).held_out_text()
    result = export_onnx(ckpt.model, ckpt.vocab, tmp_path / "int8.onnx", quantize="int8", text=text)
    assert result.size < 0.8 * result.fp32_size
    assert abs(result.loss_change) < 0.02
    # The fp32 graph's loss is the model's own: the figure compares like with like.
    assert result.fp32_loss == pytest.approx(onnx_loss(OnnxModel(tmp_path / "int8.onnx"), ckpt.vocab.encode(text)),
                                             rel=0.02)  # fmt: skip
    proto = onnx.load(tmp_path / "int8.onnx")
    assert {p.key: p.value for p in proto.metadata_props}["charnn.quantization"] == "int8"
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)


def test_mistakes(trained, tmp_path):
    ckpt = read_checkpoint(trained["gru", 1])
    with pytest.raises(ConfigError, match="`quantize` must be one of"):
        export_onnx(ckpt.model, ckpt.vocab, tmp_path / "m.onnx", quantize="int4")
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "taken.onnx").write_bytes(b"someone's file")
    with pytest.raises(ConfigError, match="taken.onnx already exists; choose another `out` or pass `overwrite`"):
        export_onnx(ckpt.model, ckpt.vocab, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"someone's file"
    export_onnx(ckpt.model, ckpt.vocab, tmp_path / "taken.onnx", overwrite=True)
    assert OnnxModel(tmp_path / "taken.onnx").vocab == ckpt.vocab
    (tmp_path / "not.onnx").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load"):
        OnnxModel(tmp_path / "not.onnx")


def test_cli_export_in_a_subprocess(trained, tmp_path):
    run = trained["gru", 2].parent
    done = run_cli("export", str(run), "--out", str(tmp_path / "model.onnx"), "--quantize", "int8")
    assert done.returncode == 0, done.stderr
    assert "held-out loss" in done.stdout and "nats/char" in done.stdout
    again = run_cli("export", str(run), "--out", str(tmp_path / "model.onnx"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "model.onnx already exists; choose another --out or pass --overwrite" in again.stderr
    web = run_cli("export", str(run), "--format", "web", "--quantize", "int8", "--out", str(tmp_path / "site"))
    assert web.returncode == 2 and "--format onnx only" in web.stderr

    fp32 = run_cli("export", str(run), "--out", str(tmp_path / "fp32.onnx"))
    assert fp32.returncode == 0, fp32.stderr
    greedy = run_cli("generate", str(run), "--prime", "Pip", "--length", "500", "--temperature", "0",
                     "--precision", "fp32", "--json")  # fmt: skip
    assert greedy.returncode == 0, greedy.stderr
    assert OnnxModel(tmp_path / "fp32.onnx").generate_greedy("Pip", 500) == json.loads(greedy.stdout)["samples"][0]


def test_web_folder_mistakes(trained, tmp_path, monkeypatch):
    ckpt = read_checkpoint(trained["gru", 1])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_web(ckpt.model, ckpt.vocab, tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    # Without onnxruntime-web's files, the error says how to get them, and nothing is written.
    monkeypatch.setattr(export, "ORT_WEB_FILES", ("no-such-file.wasm",))
    with pytest.raises(CharnnError, match="npm install onnxruntime-web"):
        export_web(ckpt.model, ckpt.vocab, tmp_path / "site")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
