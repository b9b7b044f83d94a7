"""A faster training forward for GRU models on CPUs: the same numbers as ``model(tokens)``, less work.

Savings over ``nn.GRU`` under autocast:

- The embedding and the input projection are folded into one (V, 3H) table per batch, so the
  input side of every character is a row lookup, not a (256 x 3072) matrix product forward
  and two backward. With V = 82 the table costs about as much as one character's worth of
  the product did for a whole batch. A stacked layer's input (the states below) is projected
  in one large product for all time steps, outside the loop, and read as a table with a row
  per (step, sequence).
- The recurrence is written by hand as an autograd Function: one bf16 matrix product per time
  step forward and one backward (AMX runs these), the gates in fp32, and the recurrent
  weight's gradient as one large product after the loop instead of one small one per step.
- Where the compiled kernel builds (charnn.fast.build.load_training, csrc/gru_train.cpp) and the
  hidden size is a multiple of 16, each step's gates, forward and backward, are one compiled
  pass instead of 6 and about 14 PyTorch operations: about 14% more characters a second.
- Its buffers are kept from one batch to the next. Fresh memory of this size (hundreds of MB
  per batch) comes from the operating system page by page, and those page faults cost about a third of
  the recurrence's time.

Master weights and the state stay fp32; only the matrix products' inputs are rounded to bf16.

    logits, state = training_forward(model, tokens, torch.bfloat16)  # as model(tokens): (B, T, V), (L, B, H)
"""

import weakref

import torch
import torch.nn.functional as F

from charnn.fast import build
from charnn.hardware import autocast
from charnn.model import CharRNN


def supported(model: CharRNN, device: torch.device, dtype: torch.dtype) -> bool:
    """True where this forward pays: a GRU (any number of layers) trained on a CPU (cuDNN serves GPUs)."""
    return device.type == "cpu" and model.config.cell == "gru" and dtype in (torch.bfloat16, torch.float32)


def training_forward(
    model: CharRNN, tokens: torch.Tensor, dtype: torch.dtype, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Logits (B, T, V), final state (L, B, H)) for `tokens` (B, T), as ``model(tokens, state)``.

    Gradients reach all parameters; none reach `state` (a carried state is detached). The
    model's regularisation applies as in its own forward, its masks drawn in the same order.
    """
    config, rnn = model.config, model.rnn
    batch, steps = tokens.shape
    workspaces = _WORKSPACES.setdefault(model, {})
    finals, hs = [], None  # each layer's final state; the states of the layer below
    with torch.autocast("cpu", enabled=False):
        # The first layer's input: embedding and input projection folded into one (V, 3H) table, a row per character.
        table = F.linear(model.embedding_weight(), rnn.weight_ih_l0, rnn.bias_ih_l0)
        rows = tokens.t().contiguous()  # time-major, so each step's slice of every buffer is contiguous
        for layer in range(config.num_layers):
            if layer:
                # A higher layer's input is the states below, dropped out as the model does and projected
                # in one product for all steps: a (T * B, 3H) table whose row for step t, sequence b is t * B + b.
                below = model.output_dropout(hs, time_dim=0) if config.variational_dropout else model.dropout(hs)
                table = _project(below, getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"), dtype)
                table = table.float().view(steps * batch, -1)
                rows = torch.arange(steps * batch).view(steps, batch)
            workspace = workspaces.get(layer)
            if workspace is None or workspace.busy:  # a graph that still waits for its backward owns a busy one
                workspace = workspaces[layer] = _Workspace()
            h0 = None if state is None else state[layer].detach().float()  # (B, H)
            bias = getattr(rnn, f"bias_hh_l{layer}")
            hs = _GRUSequence.apply(rows, table, model.hidden_weight(layer), bias, dtype, workspace, h0)  # (T, B, H)
            finals.append(workspace.buffers["hs"][-1].clone())  # fp32; the buffer is reused by the next batch
        hs = model.output_dropout(hs, time_dim=0)
    logits = _project(hs, model.head.weight, model.head.bias, dtype)
    return logits.transpose(0, 1), torch.stack(finals)  # (B, T, V), (L, B, H)


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x W^T + b, its product in `dtype` (bf16 under autocast, as the model's own layers run)."""
    with autocast(x.device, dtype):
        return F.linear(x, weight, bias)


class _Workspace:
    """Buffers by name, kept while their shape and dtype stay the same; one graph uses it at a time."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}
        self.busy = False

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.empty(shape, dtype=dtype)
        return buffer


# Each model's workspaces, one per layer.
_WORKSPACES: "weakref.WeakKeyDictionary[CharRNN, dict[int, _Workspace]]" = weakref.WeakKeyDictionary()


def prepare(model: CharRNN) -> None:
    """Load the compiled gates where this model can use them (building them once), so that a build, or
    the note that they cannot run here and what that costs, comes before training starts."""
    _kernel(model.config.hidden_size)


def kernel_isa(model: CharRNN) -> str | None:
    """The instruction set of the compiled gates that train `model` here, or None where PyTorch's operations do."""
    kernel = _kernel(model.config.hidden_size) if model.config.cell == "gru" else None
    return None if kernel is None else kernel.isa()


def _kernel(hidden: int):
    """The compiled gates (charnn.fast.build.load_training), where they run for this hidden size."""
    return build.load_training() if hidden % build.UNITS == 0 else None


def _has_packed_linear() -> bool:
    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class _Product:
    """x -> x W^T (+ b) for many calls with the same weight: bf16 through oneDNN, or fp32.

    oneDNN's pre-packed weight layout saves much of each step's product time over ``torch.mm``;
    plain ``torch.mm`` where it is missing.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch: int):
        self.weight = weight
        self.bias = bias
        packable = weight.dtype == torch.bfloat16 and _has_packed_linear()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch) if packable else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.bias is None:
            return torch.mm(x, self.weight.t())
        return torch.addmm(self.bias, x, self.weight.t())


def _backward_gates(dh, grad, g, n, h_prev, gh, d_gi, d_gh, tmp) -> None:
    """One step's gradients but the products', in PyTorch's operations: d_gi, d_gh from dh.

    On entry dh is what reaches h_t from the step after; `grad` (the output's gradient) is
    added to it in place.
    """
    hidden = dh.shape[1]
    r, z = g[:, :hidden], g[:, hidden:]
    d_rz, d_n = d_gh[:, : 2 * hidden], d_gi[:, 2 * hidden :]
    d_r, d_z, dn = d_rz[:, :hidden], d_rz[:, hidden:], tmp[:, :hidden]
    dh += grad
    torch.sub(h_prev, n, out=d_z).mul_(dh)  # h = n + z (h_prev - n), so dz = dh (h_prev - n)
    torch.addcmul(dh, dh, z, value=-1, out=dn)  # dn = dh (1 - z)
    torch.mul(n, n, out=d_n)
    torch.addcmul(dn, dn, d_n, value=-1, out=d_n)  # through tanh: (1 - n^2)
    torch.mul(d_n, gh[:, 2 * hidden :], out=d_r)  # n = tanh(gi_n + r gh_n)
    torch.addcmul(g, g, g, value=-1, out=tmp)  # through both sigmoids: s (1 - s)
    d_rz.mul_(tmp)
    torch.mul(d_n, r, out=d_gh[:, 2 * hidden :])
    d_gi[:, : 2 * hidden].copy_(d_rz)


class _GRUSequence(torch.autograd.Function):
    """h_t = GRU(table[token_t], h_{t-1}) for t = 1..T from h_0 (zero when None), PyTorch's (reset-after) GRU.

    Every elementwise operation in the loops has inputs and output of one dtype: mixing fp32
    and bf16 in one operation makes PyTorch copy the inputs first, which costs more than the
    arithmetic. So each product's bf16 result is converted once, explicitly.
    """

    @staticmethod
    def forward(ctx, tokens, table, w_hh, b_hh, dtype, workspace, h0):
        steps, batch = tokens.shape  # (T, B)
        hidden = w_hh.shape[1]
        ws = workspace
        ws.busy = torch.is_grad_enabled() and any(ctx.needs_input_grad)
        w = w_hh.detach().to(dtype)  # (3H, H), rounded once per batch, not once per step
        product = _Product(w, b_hh.detach().to(dtype), batch)
        table = table.detach()
        hs = ws.get("hs", (steps + 1, batch, hidden))  # hs[0] is h_0
        hs_low = ws.get("hs_low", (steps + 1, batch, hidden), dtype)  # the same, rounded for the products
        gates = ws.get("gates", (steps, batch, 2 * hidden))  # r, z after the sigmoid
        ns = ws.get("ns", (steps, batch, hidden))  # n after the tanh
        ghs = ws.get("ghs", (steps, batch, 3 * hidden))  # W_hh h + b_hh
        gi = ws.get("gi", (batch, 3 * hidden))
        hs[0].zero_() if h0 is None else hs[0].copy_(h0)
        kernel = _kernel(hidden)
        if kernel is not None:  # the gates in one compiled pass a step (charnn/fast/csrc/gru_train.cpp)
            hs_low[0].copy_(hs[0])
            for t, token in enumerate(tokens.unbind(0)):
                gh_low = product(hs_low[t])
                kernel.forward_step(table, token, gh_low, ghs[t], hs[t], gates[t], ns[t], hs[t + 1], hs_low[t + 1])
        else:
            for t, token in enumerate(tokens.unbind(0)):
                h, g, gh = hs[t], gates[t], ghs[t]
                torch.index_select(table, 0, token, out=gi)
                hs_low[t].copy_(h)
                gh.copy_(product(hs_low[t]))
                torch.add(gi[:, : 2 * hidden], gh[:, : 2 * hidden], out=g).sigmoid_()
                torch.addcmul(gi[:, 2 * hidden :], g[:, :hidden], gh[:, 2 * hidden :], out=ns[t]).tanh_()
                torch.lerp(ns[t], h, g[:, hidden:], out=hs[t + 1])  # n + z (h - n)
            hs_low[steps].copy_(hs[steps])
        ctx.save_for_backward(tokens, w)
        ctx.buffers = (hs, hs_low, gates, ns, ghs)
        ctx.workspace, ctx.vocab_size = ws, len(table)
        # The output layer's product rounds its input to bf16 anyway: hand it the rounded copy.
        return hs_low[1:] if dtype != torch.float32 else hs[1:]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        tokens, w = ctx.saved_tensors
        hs, hs_low, gates, ns, ghs = ctx.buffers
        ws = ctx.workspace
        steps, batch, hidden = grad_out.shape
        dtype = w.dtype
        # dh_prev = d_gh W_hh: as a linear layer, the weight is W_hh^T.
        product = _Product(w.t().contiguous(), None, batch)
        d_table = torch.zeros(ctx.vocab_size, 3 * hidden)
        d_b = torch.zeros(batch, 3 * hidden)  # summed over the batch at the end
        d_gh_all = ws.get("d_gh_all", (steps, batch, 3 * hidden), dtype)  # for the weight gradient
        d_gi, d_gh = ws.get("d_gi", (batch, 3 * hidden)), ws.get("d_gh", (batch, 3 * hidden))
        tmp = ws.get("tmp", (batch, 2 * hidden))
        dh = ws.get("dh", (batch, hidden)).zero_()
        kernel = _kernel(hidden)
        grad_low = grad_out.to(dtype).contiguous() if kernel is not None else grad_out
        for t in reversed(range(steps)):
            # From the step after: the direct path through z h_prev, and d_gh W_hh.
            back = product(d_gh_all[t + 1]) if t + 1 < steps else None
            if kernel is not None:  # all of the step's gradients but the products' in one compiled pass
                kernel.backward_step(dh, back, grad_low[t], gates[t], ns[t], hs[t], ghs[t], d_gi, d_gh, d_gh_all[t])
            else:
                if back is not None:
                    dh.mul_(gates[t + 1, :, hidden:]).add_(back)
                _backward_gates(dh, grad_out[t], gates[t], ns[t], hs[t], ghs[t], d_gi, d_gh, tmp)
                d_gh_all[t].copy_(d_gh)
            d_table.index_add_(0, tokens[t], d_gi)
            d_b += d_gh
        # h^T d_gh with both operands row-major: oneDNN is two to three times slower on
        # transposed views, more than converting and transposing costs.
        flat_h = hs_low[:-1].view(steps * batch, hidden)
        h_t = ws.get("h_t", (hidden, steps * batch), dtype).copy_(flat_h.t())
        d_w_t = torch.mm(h_t, d_gh_all.view(steps * batch, 3 * hidden))  # (H, 3H): one product for all steps
        d_w = torch.empty(3 * hidden, hidden).copy_(d_w_t.t())
        ws.busy = False
        return None, d_table, d_w, d_b.sum(0), None, None, None
