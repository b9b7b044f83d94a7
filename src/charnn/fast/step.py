"""Fast generation: advance many streams one character per call, as one batch.

A `Stepper` is built from a loaded `CharRNN` and does what ``model(tokens, state)`` does for
one time step, with less work per character:

- the embedding and the first layer's input projection are folded into one table with a row
  per symbol, so a step looks that row up instead of running two matrix products;
- the recurrent weights can be kept as bf16 or as int8 (per output channel scales), which
  reads a half or a quarter of the bytes per step; int8 weights of the reference model fit
  in the cores' L2 caches, and that is where the time of one stream goes;
- the gates run in a few in-place operations on buffers allocated once per batch size (only
  the int8 kernel, which has no out= form, allocates its result and its uint8 input);
- with int8 weights, on a CPU with AVX-512 VNNI, AVX2 or ARM NEON, a whole step (every layer,
  the gates and the output layer) is one call of a compiled kernel (csrc/int8_core.h, built by
  `charnn.fast.build`) that keeps each core's half of the weights in its L2 cache: about 30 us
  a character for the reference model on 2 cores, against 210 us in PyTorch's operations;
  its compiled sampler picks the next characters (`Stepper.sample`).

State has the model's layout, ``(num_layers, B, hidden)``, so rows can be added with
``torch.cat(..., dim=1)`` and removed by indexing: a server can batch independent requests.
A Stepper owns scratch buffers, so it belongs to one generation loop; the prepared weights
behind it are shared and read-only.

    stepper = Stepper(model, precision="auto")
    logits, state = stepper.prefill(prime_tokens)  # (B, T) -> (B, V), state
    next_tokens = stepper.sample(logits, sampling, uniforms)  # (B, V) -> (B,)
    logits = stepper.step(next_tokens, state)  # (B,) -> (B, V); state is updated in place

GRU models get the fast step; LSTM and RNN models step through ``model.forward``.
"""

import itertools
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from charnn.config import GENERATE_PRECISIONS as PRECISIONS
from charnn.config import SampleConfig
from charnn.errors import ConfigError
from charnn.fast import build
from charnn.hardware import cpu_flags
from charnn.model import CharRNN, State, expand_rows, state_tensors
from charnn.sample import biased, sample_next

# h of a GRU is a convex mix of tanh outputs and the previous h, so it stays in [-1, 1]:
# one fixed activation scale quantizes it with no statistics to gather per step, and each
# row is quantized alone, so a sample's text does not depend on what else is in the batch.
_H_SCALE = 1.0 / 127
_H_ZERO = 128


def _onednn_int8() -> bool:
    """Whether PyTorch's own int8 product (oneDNN) is present and fast: a CPU with int8 dot products."""
    if cpu_flags().isdisjoint({"amx_int8", "avx512_vnni", "avx_vnni"}):
        return False
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack")


def int8_supported() -> bool:
    """True where int8 generation is fast here: the compiled step runs (AVX-512, AVX2 or ARM NEON;
    charnn.fast.build), or oneDNN's int8 product on a CPU with int8 dot products."""
    return (build.cpu_supports(build.GENERATION) and build.load_generation() is not None) or _onednn_int8()


def resolve_step_precision(name: str, device: torch.device) -> str:
    """The weight precision for generation: auto picks int8 where it is fast, else fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "int8" and (device.type != "cpu" or not int8_supported()):
        raise ConfigError("`precision` int8 needs charnn's compiled kernel (AVX-512, AVX2 or ARM NEON) or an x86 "
                          "CPU with VNNI or AMX; use fp32 or bf16")  # fmt: skip
    if name == "auto":
        return "int8" if device.type == "cpu" and int8_supported() else "fp32"
    return name


class _Fp32:
    """y = x W^T + b in fp32. Returns `out`, or a tensor of its own where the kernel allocates."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        # (in, out) as a transposed view of the (out, in) weight: for the output layer at one
        # stream, 8 us a product against 12 us with a contiguous (in, out) copy.
        self.weight_t = weight.detach().clone().t()
        self.bias = bias.detach().clone()

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t, out=out)


class _Bf16(_Fp32):
    """bf16 weights and product: half the bytes read per step. The gates stay fp32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__(weight.to(torch.bfloat16), bias.to(torch.bfloat16))

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(torch.addmm(self.bias, x.to(torch.bfloat16), self.weight_t))


def _quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights in [-127, 127] and one fp32 scale per output row."""
    weight = weight.detach().float().cpu()
    scale = (weight.abs().amax(dim=1) / 127).clamp_(min=1e-12)  # (out,)
    return torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


class _Int8:
    """int8 weights with one scale per output row; the input, in [-1, 1], as uint8.

    oneDNN accumulates the products in int32, exactly, so a row's result does not depend on
    the batch it is computed in.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        q, self.scale = _quantize_rows(weight)
        # A batch-shape hint, any: without one, a one-row product takes about twice as long (the
        # same results); at 64 rows every hint does alike.
        self.packed = torch.ops.onednn.qlinear_prepack(q, [1, weight.shape[1]])
        self.zero = torch.zeros(len(self.scale), dtype=torch.long)
        self.bias = bias.detach().float().clone()

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # x in [-1, 1] -> round(127 x) + 128 in [1, 255]: the float-to-uint8 conversion
        # truncates, and the added 0.5 makes that a rounding. `out` serves as scratch.
        scratch = out.view(-1)[: x.numel()].view(x.shape)  # contiguous, unlike out[:, :H]
        scaled = torch.mul(x, 127.0, out=scratch).add_(_H_ZERO + 0.5)
        xq = scaled.to(torch.uint8)
        # The kernel allocates its result (it has no out= form); the gates read it where it is.
        return torch.ops.onednn.qlinear_pointwise(
            xq, _H_SCALE, _H_ZERO, self.packed, self.scale, self.zero, self.bias, 1.0, 0, torch.float32, "none", [], ""
        )


_KINDS = {"fp32": _Fp32, "bf16": _Bf16, "int8": _Int8}


@dataclass(frozen=True)
class _Layer:
    input: object  # input projection: (B, in) -> (B, 3H); None for layer 0 (the table)
    recurrent: object  # (B, H) -> (B, 3H)


def _pack(q: torch.Tensor) -> torch.Tensor:
    """int8 (3H, K) in PyTorch's (r, z, n) row order -> the compiled kernel's blocks.

    Block i holds units [16 i, 16 i + 16): for each group of 4 inputs, the r rows, then the
    z rows, then the n rows of those units, 4 bytes each, so one 64-byte load feeds 16 units.
    """
    rows, inputs = q.shape
    hidden = rows // 3
    units = build.UNITS
    blocks = q.view(3, hidden // units, units, inputs // 4, 4)  # gate, block, unit, group, 4
    return blocks.permute(1, 3, 0, 2, 4).contiguous().view(hidden // units, inputs // 4, 3 * units * 4)


class Int8Product(NamedTuple):
    """One product y = W x + b of the compiled step, as csrc/gru_int8.cpp reads it (Int8Linear).

    The kernel takes each product as these four tensors, in this order.
    """

    packed: torch.Tensor  # int8 (H/16, K/4, 192): W (3H, K) in the kernel's blocks, see _pack
    correction: torch.Tensor  # int32 (3H,): 128 * the sum of each row of W, removes the +128 of the uint8 inputs
    scale: torch.Tensor  # fp32 (3H,): each row's scale times the input's 1/127
    bias: torch.Tensor  # fp32 (3H,)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor) -> "Int8Product":
        """W (3H, K) and b (3H,) of PyTorch's GRU, with one int8 scale per row."""
        q, scale = _quantize_rows(weight)
        correction = (q.sum(dim=1, dtype=torch.int32) * _H_ZERO).to(torch.int32)
        return cls(_pack(q), correction, (scale * _H_SCALE).contiguous(), bias.detach().float().contiguous())


def _compiled_step_runs(hidden_size: int, device: torch.device) -> bool:
    """Whether the compiled int8 step serves this model's steps here."""
    return device.type == "cpu" and hidden_size % build.UNITS == 0 and build.load_generation() is not None


def _compiled_step(model: CharRNN, table: torch.Tensor):
    """The compiled int8 step's weights of `model` (the kernel's Int8GRU), built once per model."""
    rnn = model.rnn
    layers = range(model.config.num_layers)
    recurrent = [Int8Product.quantize(getattr(rnn, f"weight_hh_l{i}"), getattr(rnn, f"bias_hh_l{i}")) for i in layers]
    inputs = [Int8Product.quantize(getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"bias_ih_l{i}")) for i in layers[1:]]
    head = model.head.weight.detach().float().contiguous(), model.head.bias.detach().float().contiguous()
    # The kernel takes each list as one run of tensors, four per product in Int8Product's order.
    flat = itertools.chain.from_iterable
    return build.load_generation().Int8GRU(table, list(flat(recurrent)), list(flat(inputs)), *head)


@dataclass(frozen=True)
class StepWeights:
    """Read-only weights of a GRU CharRNN, rearranged for one step at a time."""

    table: torch.Tensor  # (V, 3H): embedding -> layer 0 input projection, bias included
    layers: tuple[_Layer, ...]
    head: _Fp32  # the output layer stays fp32: it is small, and its rounding shows in every logit
    precision: str
    fused: object = None  # the kernel's Int8GRU: the int8 weights for the compiled step, where it runs here


def prepare_weights(model: CharRNN, precision: str) -> StepWeights:
    rnn = model.rnn
    with torch.no_grad():
        embedded = model.embedding.weight.float()  # (V, E)
        table = F.linear(embedded, rnn.weight_ih_l0.float(), rnn.bias_ih_l0.float()).contiguous()
        kind = _KINDS[precision]
        layers = []
        for i in range(model.config.num_layers):
            w_ih, b_ih = getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"bias_ih_l{i}")
            w_hh, b_hh = getattr(rnn, f"weight_hh_l{i}"), getattr(rnn, f"bias_hh_l{i}")
            if kind is _Int8 and not _onednn_int8():
                continue  # the compiled step serves int8 here; PyTorch has no fast int8 product to compare with
            projection = None if i == 0 else kind(w_ih.float(), b_ih.float())
            layers.append(_Layer(projection, kind(w_hh.float(), b_hh.float())))
        head = _Fp32(model.head.weight.float(), model.head.bias.float())
        fused = None
        if precision == "int8" and _compiled_step_runs(model.config.hidden_size, table.device):
            fused = _compiled_step(model, table)
    return StepWeights(table, tuple(layers), head, precision, fused)


# Prepared weights per model and precision, rebuilt when a parameter changes in place
# (an optimizer step, load_state_dict), which bumps its version counter.
_CACHE: "weakref.WeakKeyDictionary[CharRNN, dict]" = weakref.WeakKeyDictionary()


def _cached_weights(model: CharRNN, precision: str) -> StepWeights:
    versions = tuple((p.data_ptr(), p._version) for p in model.parameters())
    entries = _CACHE.setdefault(model, {})
    cached = entries.get(precision)
    if cached is None or cached[0] != versions:
        cached = (versions, prepare_weights(model, precision))
        entries[precision] = cached
    return cached[1]


class Stepper:
    """Advance a batch of streams of `model` one character per `step` call."""

    def __init__(self, model: CharRNN, precision: str = "auto", compiled: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.precision = resolve_step_precision(precision, self.device)
        self.fast = model.config.cell == "gru"
        if self.fast and precision == "auto" and self.device.type == "cpu":
            build.note_unavailable(build.GENERATION)  # a CPU the kernel cannot serve hears so once, and the cost
        self.weights = _cached_weights(model, self.precision) if self.fast else None
        # int8 steps run in the compiled kernel where it is built here; compiled=False keeps
        # them in PyTorch's operations (to compare the two).
        self.fused = self.weights.fused if self.fast and compiled else None
        if self.fast and self.fused is None and not self.weights.layers:
            raise ConfigError("`precision` int8 without the compiled step needs an x86 CPU with VNNI or AMX")
        self._batch = -1

    def init_state(self, batch_size: int) -> State:
        return self.model.init_state(batch_size, self.device, torch.float32)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed (B, T) tokens; the logits after the last, and the state.

        With the compiled step, a token at a time through it (and rows that are all the same
        prompt, as `generate` and the server give them, computed once: a row's numbers never
        depend on its batch); else in one pass of the model.
        """
        if self.fused is not None and state is None:
            return self._fused_prefill(tokens)
        logits, state = self.model(tokens.to(self.device), state)
        return logits[:, -1].float(), state

    def _fused_prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # PyTorch's fp32 pass over a prompt is a large share of a busy server's engine time, and every
        # new request waits for it; this one is about ten times faster (docs/results.md). Scratch
        # buffers of its own: the step's logits buffer may still be in use by the caller's batch.
        rows = tokens[:1] if bool((tokens == tokens[:1]).all()) else tokens  # (n, T)
        n, c = rows.shape[0], self.model.config
        state = self.init_state(n).contiguous()  # (L, n, H)
        gi, logits = torch.empty(n, 3 * c.hidden_size), torch.empty(n, c.vocab_size)
        xq = torch.empty(n, c.hidden_size, dtype=torch.uint8)
        for t in range(rows.shape[1]):
            self.fused.step(rows[:, t].contiguous(), state, gi, xq, logits)
        batch = tokens.shape[0]
        return logits.expand(batch, -1).clone(), expand_rows(state, batch)

    def step(self, tokens: torch.Tensor, state: State) -> torch.Tensor:
        """Feed one token per row, (B,); update `state` in place; return the logits (B, V).

        The logits live in a buffer that the next call overwrites.
        """
        if self.fused is not None:  # one compiled call: no autograd to switch off, no Python per layer
            return self._fused_step(tokens, state)
        with torch.inference_mode():
            return self._torch_step(tokens, state)

    def sample(self, logits: torch.Tensor, sampling: SampleConfig, uniforms: torch.Tensor) -> torch.Tensor:
        """One index per row of `logits` (B, V): `sample_next`, or its compiled twin with the compiled step.

        The twin follows the same steps with its sums in double, so it can differ from
        `sample_next` only where a uniform falls within rounding of a step of the CDF; it saves a
        dozen small PyTorch calls per character. fp32 and bf16 keep `sample_next`, which is what
        makes fp32 text equal the plain model's.
        """
        if self.fused is None:
            with torch.inference_mode():
                return sample_next(logits, sampling, uniforms)
        top_p = 1.0 if sampling.top_p is None else sampling.top_p
        logits = biased(logits, sampling)
        # A top-k beyond the vocabulary keeps every character, and must fit the kernel's 64-bit integer.
        top_k = min(sampling.top_k or 0, logits.shape[-1])
        return build.load_generation().sample(logits, sampling.temperature, top_k, top_p, uniforms)

    def _fused_step(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        if state.shape[1] != self._batch:
            self._allocate(state.shape[1])
        self.fused.step(tokens, state, self._gi, self._xq, self._logits)
        return self._logits

    def _torch_step(self, tokens: torch.Tensor, state: State) -> torch.Tensor:
        if not self.fast:
            logits, new_state = self.model(tokens.to(self.device).unsqueeze(1), state)
            for old, new in zip(state_tensors(state), state_tensors(new_state), strict=True):
                old.copy_(new)
            return logits[:, -1]
        h = state  # (L, B, H)
        batch = h.shape[1]
        if batch != self._batch:
            self._allocate(batch)
        w = self.weights
        hidden = h.shape[2]
        x = None
        for i, layer in enumerate(w.layers):
            gi, gh, rz = self._gi, self._gh, self._rz
            if i == 0:
                torch.index_select(w.table, 0, tokens.to(self.device), out=gi)  # (B, 3H)
            else:
                gi = layer.input(x, gi)
            hi = h[i]  # (B, H), a view: written in place below
            gh = layer.recurrent(hi, gh)
            # PyTorch's GRU: r, z = sigmoid(gi + gh); n = tanh(gi_n + r gh_n); h = n + z (h - n)
            torch.add(gi[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz).sigmoid_()
            n = torch.addcmul(gi[:, 2 * hidden :], rz[:, :hidden], gh[:, 2 * hidden :], out=self._n).tanh_()
            torch.lerp(n, hi, rz[:, hidden:], out=hi)
            x = hi
        return w.head(x, self._logits)

    def _allocate(self, batch: int) -> None:
        c = self.model.config
        new = lambda *shape: torch.empty(shape, device=self.device)  # noqa: E731
        self._gi, self._gh = new(batch, 3 * c.hidden_size), new(batch, 3 * c.hidden_size)
        self._rz, self._n = new(batch, 2 * c.hidden_size), new(batch, c.hidden_size)
        self._logits = new(batch, c.vocab_size)
        self._xq = torch.empty(batch, c.hidden_size, dtype=torch.uint8, device=self.device)
        self._batch = batch
