"""A model out of charnn as an ONNX file (`charnn.interop.web` builds a browser page on it).

The ONNX graph is PyTorch's own export of `CharRNN.forward`: characters and a recurrent state
in, logits and the new state out, for any batch and any number of steps, so one graph serves
both the prompt pass and one-character steps.

    inputs:  tokens int64 (batch, steps); state float32 (num_layers, batch, hidden)
             (an LSTM takes state_h and state_c instead of state)
    outputs: logits float32 (batch, steps, vocab); new_state (or new_state_h, new_state_c)

The vocabulary, the model configuration and the charnn version are in the file's metadata
(`charnn.vocabulary`, `charnn.model`, `charnn.version`), so the file explains itself.

    from charnn.run_folder import load_checkpoint

    ckpt = load_checkpoint("runs/ge")
    export_onnx(ckpt.model, ckpt.vocab, "model.onnx")
    session = OnnxModel("model.onnx")
    logits, state = session.run(session.vocab.encode("Pip")[None])  # (1, 3, V)

onnx, onnxscript and onnxruntime are the optional extra ``charnn[export]``.
"""

import contextlib
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import charnn
from charnn import atomic
from charnn.errors import CharnnError, CheckpointError, ConfigError, UnknownCharactersError
from charnn.model import CharRNN, eval_mode, state_from_tensors, state_tensors
from charnn.scoring.loop import Reader, cut_streams, summed_loss
from charnn.vocab import Vocabulary

FORMATS = ("onnx", "web")
QUANTIZATIONS = ("int8",)
OPSET = 17  # GRU, LSTM and RNN as single ops; read by onnxruntime and onnxruntime-web alike


def state_names(cell: str) -> tuple[str, ...]:
    return ("state_h", "state_c") if cell == "lstm" else ("state",)


class _Graph(nn.Module):
    """forward with the state as separate tensors, which is how an ONNX graph takes it."""

    def __init__(self, model: CharRNN):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        logits, new = self.model(tokens, state_from_tensors(state))
        return logits, *state_tensors(new)


def _need(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise CharnnError(f"exporting needs onnx and onnxruntime ({error}); pip install 'charnn[export]'") from None


def metadata(model: CharRNN, vocab: Vocabulary) -> dict[str, str]:
    """What the file says about itself: every value a JSON string."""
    names = state_names(model.config.cell)
    return {
        "charnn.version": charnn.__version__,
        "charnn.vocabulary": json.dumps(vocab.to_json(), ensure_ascii=False),
        "charnn.model": json.dumps(model.config.to_dict()),
        "charnn.inputs": json.dumps(["tokens", *names]),
        "charnn.outputs": json.dumps(["logits", *(f"new_{n}" for n in names)]),
    }


def onnx_bytes(model: CharRNN, vocab: Vocabulary) -> bytes:
    """The fp32 graph with its metadata, checked with onnx.checker."""
    onnx = _need("onnx")
    config = model.config
    names = state_names(config.cell)
    tokens = torch.zeros(1, 2, dtype=torch.long)
    state = tuple(torch.zeros(config.num_layers, 1, config.hidden_size) for _ in names)
    axes = {"tokens": {0: "batch", 1: "steps"}, "logits": {0: "batch", 1: "steps"}}
    axes |= {n: {1: "batch"} for n in names} | {f"new_{n}": {1: "batch"} for n in names}
    buffer = io.BytesIO()
    # The TorchScript-based exporter writes the cells as ONNX's own GRU, LSTM and RNN ops, with
    # the number of steps left free; torch.export (dynamo=True), when tried (PyTorch 2.13), fixed
    # the number of steps to the example's for stacked cells and for plain RNNs.
    with eval_mode(model), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # dropout off
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Graph(model),
            (tokens, *state),
            buffer,
            input_names=["tokens", *names],
            output_names=["logits", *(f"new_{n}" for n in names)],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata(model, vocab).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = "charnn character-level language model: tokens and state in, logits and new state out"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def quantize_int8(model_bytes: bytes) -> bytes:
    """int8 weights: onnxruntime's dynamic quantisation (the output layer, the embedding, LSTM
    cells), then the GRU and RNN cells' weights, which it leaves alone, as int8 with one scale
    per row, turned back into fp32 once when onnxruntime loads the file: a file a quarter of the
    size, computing in fp32."""
    onnx = _need("onnx")
    quantization = _need("onnxruntime.quantization")
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model_bytes)
        logging.disable(logging.WARNING)  # its advice to pre-process, printed through the root logger
        try:
            quantization.quantize_dynamic(source, target, weight_type=quantization.QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        proto = onnx.load(target)
    _int8_cell_weights(proto)
    kept = {p.key for p in proto.metadata_props}
    for p in onnx.load_from_string(model_bytes).metadata_props:
        if p.key not in kept:
            proto.metadata_props.add(key=p.key, value=p.value)
    proto.metadata_props.add(key="charnn.quantization", value="int8")
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _int8_cell_weights(proto) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type in ("GRU", "RNN"):
            for position in (1, 2):  # W (dirs, gates*H, in) and R (dirs, gates*H, H)
                name = node.input[position]
                if name not in initializers:
                    continue
                weight = numpy_helper.to_array(initializers[name])[0]  # (gates*H, in)
                scale = np.maximum(np.abs(weight).max(axis=1) / 127, 1e-12).astype(np.float32)
                q = np.clip(np.round(weight / scale[:, None]), -127, 127).astype(np.int8)
                graph.initializer.remove(initializers.pop(name))
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(q[None], f"{name}_int8"),  # (1, gates*H, in)
                        numpy_helper.from_array(scale[None, :, None], f"{name}_scale"),  # (1, gates*H, 1)
                    ]
                )
                # Cast and Mul rather than DequantizeLinear: onnxruntime's constant folding then
                # turns them into fp32 weights once, at load, instead of at every run.
                nodes.append(helper.make_node("Cast", [f"{name}_int8"], [f"{name}_float"], to=TensorProto.FLOAT))
                nodes.append(helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [name]))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote, and the held-out loss of the fp32 and int8 graphs where measured."""

    path: Path
    size: int  # bytes
    fp32_size: int
    quantize: str | None = None
    fp32_loss: float | None = None  # nats per character on `text`
    loss: float | None = None  # the same for the file written

    @property
    def loss_change(self) -> float | None:
        """Relative change of the held-out loss, int8 against fp32."""
        if self.loss is None or self.fp32_loss is None:
            return None
        return self.loss / self.fp32_loss - 1


def export_onnx(
    model: CharRNN,
    vocab: Vocabulary,
    out: str | Path,
    *,
    quantize: str | None = None,
    text: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> OnnxExport:
    """Write the model to `out` as ONNX, atomically; a file already there is replaced only with `overwrite`.

    `quantize` "int8" stores int8 weights; with a `text` (the held-out text) the loss of both
    graphs on it is measured with onnxruntime, so the change quantisation makes is known;
    `on_progress(done, total)` follows that measurement, in characters of both passes.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"`quantize` must be one of {', '.join(QUANTIZATIONS)} or None, got {quantize!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another `out` or pass `overwrite`")
    fp32 = onnx_bytes(model, vocab)
    data = fp32 if quantize is None else quantize_int8(fp32)
    fp32_loss = loss = None
    if quantize is not None and text:
        tokens = _encode_known(vocab, text)
        total = 2 * len(tokens)
        first = None if on_progress is None else (lambda done: on_progress(done, total))
        second = None if on_progress is None else (lambda done: on_progress(len(tokens) + done, total))
        fp32_loss = onnx_loss(OnnxModel(fp32), tokens, on_progress=first)
        loss = onnx_loss(OnnxModel(data), tokens, on_progress=second)
        if on_progress is not None:  # the last of each stream is never predicted: count it too
            on_progress(total, total)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, data)
    return OnnxExport(out, len(data), len(fp32), quantize, fp32_loss, loss)


def _encode_known(vocab: Vocabulary, text: str) -> np.ndarray:
    unknown = set(vocab.unknown(text))
    return vocab.encode("".join(c for c in text if c not in unknown) if unknown else text)


class OnnxModel:
    """An exported model run by onnxruntime; its vocabulary and configuration read from the file."""

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None):
        ort = _need("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own kinds for a missing or broken file
            raise CheckpointError(f"cannot load the ONNX model ({str(error).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.vocab = Vocabulary.from_json(json.loads(meta["charnn.vocabulary"]))
            self.config = json.loads(meta["charnn.model"])
            self.state_names = tuple(json.loads(meta["charnn.inputs"])[1:])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"the ONNX model was not exported by charnn (no {error} in its metadata)") from None

    def init_state(self, batch_size: int) -> tuple[np.ndarray, ...]:
        shape = (self.config["num_layers"], batch_size, self.config["hidden_size"])
        return tuple(np.zeros(shape, dtype=np.float32) for _ in self.state_names)

    def run(self, tokens: np.ndarray, state: tuple[np.ndarray, ...] | None = None):
        """tokens (B, T) -> logits (B, T, V), new state."""
        tokens = np.asarray(tokens, dtype=np.int64)
        state = self.init_state(tokens.shape[0]) if state is None else state
        logits, *new = self.session.run(None, {"tokens": tokens, **dict(zip(self.state_names, state, strict=True))})
        return logits, tuple(new)

    def generate_greedy(self, prime: str, length: int) -> str:
        """`length` characters after `prime`, each the most likely one (temperature 0)."""
        if not prime:
            raise ConfigError("`prime` must hold at least one character")
        if self.vocab.unknown(prime):
            raise UnknownCharactersError(self.vocab.unknown(prime))
        logits, state = self.run(self.vocab.encode(prime)[None])
        chosen = []
        for step in range(length):
            token = int(np.argmax(logits[0, -1]))
            chosen.append(token)
            if step + 1 < length:
                logits, state = self.run(np.array([[token]]), state)
        return self.vocab.decode(chosen)


def onnx_loss(
    model: OnnxModel,
    tokens: np.ndarray,
    *,
    seq_len: int = 100,
    num_streams: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> float:
    """Mean loss in nats per character over `tokens`, as `charnn.scoring.evaluate.model_loss` computes it:
    the text cut into `num_streams` contiguous pieces run side by side, state carried along."""
    streams = cut_streams(torch.from_numpy(np.asarray(tokens, dtype=np.int64)), num_streams)  # (S, L)
    if streams is None:
        return math.nan

    def run(inputs: torch.Tensor, state: tuple[np.ndarray, ...] | None):
        logits, state = model.run(inputs.numpy(), state)  # (S, T, V)
        return torch.from_numpy(logits).double(), state  # the loss summed in fp64

    total, count = summed_loss(Reader(run, chunk_size=seq_len), streams, on_progress)
    return total / count
