"""The character-level recurrent network: Embedding -> GRU/LSTM/RNN layers -> Linear.

State is explicit: ``forward(tokens, state) -> (logits, state)``; the module keeps no
per-caller state, so one loaded model can serve many callers at once. A state is a tensor (GRU,
RNN) or a tuple (LSTM); the helpers below (`select_rows`, `concat_rows`, `detach_state`, ...)
treat both alike, and `eval_mode` switches the regularisation off for a block.

Regularisation, all of it in training mode only (evaluation and generation see the plain
network): `dropout` between layers and before the output (with `variational_dropout`, one
mask per sequence reused at every time step instead of a fresh one per character);
`weight_drop`, DropConnect on each layer's hidden-to-hidden weights, one mask per batch;
`embedding_dropout`, whole characters' embedding rows dropped for a batch.

>>> model = CharRNN(ModelConfig(vocab_size=10, embedding_dim=8, hidden_size=16))
>>> logits, state = model(torch.zeros(2, 5, dtype=torch.long))
>>> tuple(logits.shape)
(2, 5, 10)
"""

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from charnn.config import ModelConfig

# For an LSTM the state is (h, c); for GRU and RNN it is h. Each is (num_layers, B, hidden).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
# The functions nn.GRU, nn.LSTM and nn.RNN call themselves: run one layer at a time with chosen weights.
_LAYER_FUNCTIONS = {"gru": torch._VF.gru, "lstm": torch._VF.lstm, "rnn": torch._VF.rnn_tanh}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = _CELLS[config.cell](
            input_size=config.embedding_dim,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = F.embedding(tokens, self.embedding_weight())  # (B, T, E)
        if self.training and (self.config.weight_drop or self.config.variational_dropout):
            x, state = self._layer_by_layer(x, state)  # (B, T, H)
        else:
            x, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self.output_dropout(x, time_dim=1)), state  # (B, T, V)

    # --- regularisation: each a no-op outside training ----------------------------------

    def embedding_weight(self) -> torch.Tensor:
        """The embedding table, with whole rows (characters) dropped for this batch in training."""
        weight = self.embedding.weight  # (V, E)
        p = self.config.embedding_dropout
        if not (self.training and p):
            return weight
        keep = torch.empty(len(weight), 1, device=weight.device).bernoulli_(1 - p)  # (V, 1)
        return weight * keep / (1 - p)

    def hidden_weight(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s hidden-to-hidden weight, DropConnect-masked for this batch in training."""
        weight = getattr(self.rnn, f"weight_hh_l{layer}")  # (gates * H, H)
        p = self.config.weight_drop
        if not (self.training and p):
            return weight
        keep = torch.empty_like(weight, dtype=torch.float32).bernoulli_(1 - p)
        return weight * keep / (1 - p)

    def output_dropout(self, x: torch.Tensor, time_dim: int) -> torch.Tensor:
        """Dropout before the output layer; variational: one mask per sequence, all time steps."""
        if not self.config.variational_dropout:
            return self.dropout(x)
        return _locked_dropout(x, self.config.dropout if self.training else 0.0, time_dim)

    def _layer_by_layer(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """The recurrent layers one at a time, so each can take a masked weight and a mask between them."""
        c = self.config
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        run = _LAYER_FUNCTIONS[c.cell]
        finals = []
        for layer in range(c.num_layers):
            if layer:
                x = self.output_dropout(x, time_dim=1) if c.variational_dropout else self.dropout(x)
            weights = [getattr(self.rnn, f"weight_ih_l{layer}"), self.hidden_weight(layer),
                       getattr(self.rnn, f"bias_ih_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}")]  # fmt: skip
            h = map_state(lambda t, i=layer: t[i : i + 1], state)  # this layer's (1, B, hidden)
            x, *final = run(x, h, weights, True, 1, 0.0, True, False, True)
            finals.append(state_from_tensors(final))
        return x, map_state(lambda *layers: torch.cat(layers), *finals)

    # --- state and description ------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        p = self.head.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        h = torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def summary(self) -> list[tuple[str, str, int]]:
        """(layer, output shape, parameter count) rows, with B = batch and T = time."""
        c = self.config
        rnn = f"{c.cell.upper()} x{c.num_layers}" if c.num_layers > 1 else c.cell.upper()
        return [
            ("Embedding", f"(B, T, {c.embedding_dim})", _count(self.embedding)),
            (rnn, f"(B, T, {c.hidden_size})", _count(self.rnn)),
            ("Linear", f"(B, T, {c.vocab_size})", _count(self.head)),
        ]

    def num_parameters(self) -> int:
        return _count(self)


# A character the model never saw gets an output bias this many times (in odds) below the lowest
# old one: absent from its text, it is rarer than anything it counted. The old characters' logits
# also move with the context, so this sets a scale, not a rank.
NEW_CHARACTER_ODDS = 10.0


def grow_vocabulary(model: CharRNN, vocab_size: int, *, generator: torch.Generator | None = None) -> CharRNN:
    """A copy of `model` whose vocabulary has `vocab_size` entries: the first are the model's own.

    Every old row is copied, so for any text of old characters the old characters' logits are
    exactly what they were. The new rows are chosen so that the new characters start unlikely
    but learnable (see the comments below); the rest of the network is copied unchanged.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"vocab_size must be at least the model's {old}, got {vocab_size}")
    grown = CharRNN(dataclasses.replace(model.config, vocab_size=vocab_size))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("embedding.", "head."))}
    grown.load_state_dict(state, strict=False)
    added = vocab_size - old
    with torch.no_grad():
        embedding, weight, bias = model.embedding.weight, model.head.weight, model.head.bias
        grown.embedding.weight[:old] = embedding
        grown.head.weight[:old] = weight
        grown.head.bias[:old] = bias
        if added:
            # Inputs: the mean of the old embeddings, so reading a new character keeps the hidden
            # state where the network is used to it; a little noise so the new rows can part ways.
            noise = torch.randn(added, embedding.shape[1], generator=generator)
            grown.embedding.weight[old:] = embedding.mean(0) + 0.1 * embedding.std() * noise
            # Outputs: small weights, so the new logits hardly depend on the context yet, and a bias
            # below the old ones' lowest, so the new characters take almost no probability from the
            # old. Not so far below that Adam (whose steps are about lr whatever the gradient) needs
            # thousands of steps to bring one up: the first occurrence already pushes it hard.
            noise = torch.randn(added, weight.shape[1], generator=generator)
            grown.head.weight[old:] = 0.1 * weight.std() * noise
            grown.head.bias[old:] = bias.min() - math.log(NEW_CHARACTER_ODDS)
    return grown.to(weight.device)


# --- a recurrent state, a tensor (GRU, RNN) or a tuple (LSTM): one helper set for both --------------


def state_tensors(state: State) -> tuple[torch.Tensor, ...]:
    """The state's tensors as a tuple: (h, c) for an LSTM, (h,) otherwise."""
    return state if isinstance(state, tuple) else (state,)


def state_from_tensors(tensors: Sequence[torch.Tensor]) -> State:
    """The state whose `state_tensors` are `tensors`: (h, c) an LSTM's tuple, (h,) the tensor h."""
    return tuple(tensors) if len(tensors) == 2 else tensors[0]


def map_state(function: Callable[..., torch.Tensor], *states: State) -> State:
    """`function` applied to each tensor of the states (h with h, c with c), as a state of the same form."""
    results = [function(*parts) for parts in zip(*map(state_tensors, states), strict=True)]
    return state_from_tensors(results)


def detach_state(state: State) -> State:
    """The state cut from the graph that computed it (between chunks of truncated backpropagation)."""
    return map_state(torch.Tensor.detach, state)


def select_rows(state: State, index: torch.Tensor) -> State:
    """The batch rows `index` of the state, as new tensors (num_layers, len(index), hidden)."""
    return map_state(lambda t: t.index_select(1, index.to(t.device)), state)


def concat_rows(states: Sequence[State]) -> State:
    """The states' batch rows one after another, in order."""
    return map_state(lambda *parts: torch.cat(parts, dim=1), *states)


def expand_rows(state: State, rows: int) -> State:
    """A one-row state repeated to `rows` rows, as new tensors."""
    return map_state(lambda t: t.expand(-1, rows, -1).contiguous(), state)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (no dropout) for the block; the model's mode as it was after, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _locked_dropout(x: torch.Tensor, p: float, time_dim: int) -> torch.Tensor:
    """Dropout whose mask is shared along `time_dim`: each sequence loses the same units at every step."""
    if not p:
        return x
    shape = list(x.shape)
    shape[time_dim] = 1
    keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
