"""How good is a model on a text: its loss beside baselines computed on the same text.

The baselines are an interpolated Kneser-Ney character 5-gram fitted on the training text
and gzip -9. For a generated sample, the share of its words that never occur in the training
text measures invented words. Losses are nats per character; bits = nats / ln 2.

Three ways to score a model, each another tool's yardstick:

- `model_loss`: the text read straight through, state carried (every character but the first
  of each stream has the whole text before it): char-rnn's and AWD-LSTM's figure.
- `window_loss`: random windows of N characters, each from a zero state, the mean over all
  positions: nanoGPT's figure for its character model (N = 256, 200 batches of 64 windows).
- `dynamic_loss`: Krause et al. (2018)'s dynamic evaluation: the text read straight through,
  each segment scored before the model takes a gradient step on it.

The slow ones take `progress(done, total)`, called as characters are scored. The first two read
the text with `charnn.scoring.loop`; dynamic evaluation is in `charnn.scoring.dynamic`.
"""

import gzip
import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from charnn.config import DYNAMIC_SEGMENT, DYNAMIC_UPDATE, DYNAMIC_UPDATES, NANOGPT_WINDOW, NANOGPT_WINDOWS
from charnn.errors import ConfigError
from charnn.hardware import autocast
from charnn.model import CharRNN, eval_mode
from charnn.scoring.dynamic import dynamic_loss, gradient_rms
from charnn.scoring.loop import Reader, cut_streams, summed_loss
from charnn.scoring.ngram import KneserNey
from charnn.vocab import Vocabulary

NATS_TO_BITS = 1 / math.log(2)
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def model_loss(
    model: CharRNN,
    tokens: torch.Tensor,
    *,
    seq_len: int = 100,
    num_streams: int = 64,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean loss in nats per character over the whole of `tokens`.

    The text is cut into `num_streams` contiguous pieces run side by side, state carried
    from chunk to chunk, so every character but the first of each piece is predicted.
    """
    total, count = loss_sums(model, tokens, seq_len=seq_len, num_streams=num_streams, dtype=dtype)
    return total / count if count else math.nan


def loss_sums(
    model: CharRNN,
    tokens: torch.Tensor,
    *,
    seq_len: int = 100,
    num_streams: int = 64,
    dtype: torch.dtype = torch.float32,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, int]:
    """(Summed loss, characters predicted) of `model_loss`, for the streams r, r + world_size, ...
    of process `rank`: the processes of a distributed run score one text together."""
    device = next(model.parameters()).device
    streams = cut_streams(tokens, num_streams)
    if streams is None or len(streams[rank::world_size]) == 0:
        return 0.0, 0
    with eval_mode(model), torch.inference_mode(), autocast(device, dtype):
        return summed_loss(Reader(model, chunk_size=seq_len, device=device), streams[rank::world_size])  # (S, L)


def window_loss(
    model: CharRNN,
    tokens: torch.Tensor,
    window: int = NANOGPT_WINDOW,
    *,
    num_windows: int = NANOGPT_WINDOWS,
    seed: int = 0,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[float, torch.Tensor]:
    """(Mean loss, mean loss at each position (window,)) over `num_windows` random windows of `tokens`.

    Window i predicts tokens[s + 1 : s + window + 1] from tokens[s : s + window], from a zero
    state, with starts s drawn uniformly from [0, len - window) by a generator seeded with `seed`
    (nanoGPT's get_batch). The mean is over all positions of all windows.
    """
    if window < 1 or num_windows < 1:
        raise ConfigError(f"`window` and `num_windows` must be at least 1, got {window} and {num_windows}")
    if len(tokens) < window + 1:
        raise ConfigError(f"the text has {len(tokens):,} characters, too few for windows of {window} (window + 1)")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - window, (num_windows,), generator=generator)
    offsets = torch.arange(window + 1)
    per_position = torch.zeros(window, dtype=torch.float64)
    with eval_mode(model), torch.inference_mode(), autocast(device, dtype):
        for first in range(0, num_windows, batch_size):
            rows = tokens[(starts[first : first + batch_size, None] + offsets).flatten()].view(-1, window + 1)
            # Each batch of windows from a zero state, in one chunk.
            for _, logits, targets in Reader(model, chunk_size=window, device=device).predict(rows):
                losses = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, window)
                per_position += losses.double().sum(0).cpu()
            if progress is not None:
                progress(min(first + batch_size, num_windows) * window, num_windows * window)
    per_position /= num_windows
    return float(per_position.mean()), per_position.float()


def _known_only(text: str, unknown: list[str]) -> str:
    """`text` without the characters in `unknown` (the model's vocabulary lacks them)."""
    if not unknown:
        return text
    unknown_set = set(unknown)
    return "".join(c for c in text if c not in unknown_set)


def gzip_loss(text: str) -> float:
    """gzip -9's compressed size of the UTF-8 text, in nats per character."""
    return len(gzip.compress(text.encode("utf-8"), compresslevel=9)) * 8 / NATS_TO_BITS / max(1, len(text))


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def invented_words(sample: str, training_text: str) -> tuple[float, list[str]]:
    """The share of the sample's words that never occur in the training text, and those words."""
    known = set(words(training_text))
    found = words(sample)
    invented = [w for w in found if w not in known]
    return (len(invented) / len(found) if found else 0.0), invented


def check_options(
    *,
    window: int | None = None,
    num_windows: int = NANOGPT_WINDOWS,
    dynamic_segment: int = DYNAMIC_SEGMENT,
    dynamic_update: str = DYNAMIC_UPDATE,
    dynamic_lr: float | None = None,
    dynamic_decay: float | None = None,
) -> None:
    """Refuse options `evaluate_text` cannot use; cheap, so a caller may check before loading anything."""
    for name, value in (("window", window), ("num_windows", num_windows), ("dynamic_segment", dynamic_segment)):
        if value is not None and value < 1:
            raise ConfigError(f"`{name}` must be at least 1, got {value}")
    if dynamic_update not in DYNAMIC_UPDATES:
        raise ConfigError(f"`dynamic_update` must be one of {', '.join(DYNAMIC_UPDATES)}, got {dynamic_update!r}")
    if dynamic_lr is not None and dynamic_lr <= 0:
        raise ConfigError(f"`dynamic_lr` must be positive, got {dynamic_lr}")
    if dynamic_decay is not None and not 0.0 <= dynamic_decay < 1.0:
        raise ConfigError(f"`dynamic_decay` must be in [0, 1), got {dynamic_decay}")


def evaluate_text(
    model: CharRNN,
    vocab: Vocabulary,
    text: str,
    *,
    training_text: str | None,
    seq_len: int = 100,
    window: int | None = None,
    num_windows: int = NANOGPT_WINDOWS,
    window_seed: int = 0,
    dynamic: bool = False,
    dynamic_segment: int = DYNAMIC_SEGMENT,
    dynamic_update: str = DYNAMIC_UPDATE,
    dynamic_lr: float | None = None,
    dynamic_decay: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Model loss on `text` beside the n-gram and gzip baselines, in one report.

    Characters the model does not know are counted, then left out of every figure, so the
    model and the baselines score the same characters. `window` adds nanoGPT's figure
    (`window_loss`), `dynamic` the dynamically evaluated one (`dynamic_loss`), beside the
    carried-state `loss`. `dynamic_update` is `rms` (Krause et al.'s, whose statistics come from
    the training text) or `sgd`; a learning rate or decay left None is the update's default
    (DYNAMIC_UPDATES). `progress(what, done, total)` follows the slow figures.
    """
    check_options(window=window, num_windows=num_windows, dynamic_segment=dynamic_segment,
                  dynamic_update=dynamic_update, dynamic_lr=dynamic_lr, dynamic_decay=dynamic_decay)  # fmt: skip
    if dynamic and dynamic_update == "rms" and training_text is None:
        raise ConfigError("the RMS update of dynamic evaluation needs the training text; give it, or use sgd")
    default_lr, default_decay = DYNAMIC_UPDATES[dynamic_update]
    dynamic_lr = default_lr if dynamic_lr is None else dynamic_lr
    dynamic_decay = default_decay if dynamic_decay is None else dynamic_decay

    def follow(what: str) -> Callable[[int, int], None] | None:
        return None if progress is None else lambda done, total: progress(what, done, total)

    unknown = vocab.unknown(text)
    kept = _known_only(text, unknown)
    report = {
        "characters": len(text),
        "unknown_characters": len(text) - len(kept),
        "unknown": unknown,
    }
    tokens = torch.from_numpy(vocab.encode(kept))
    loss = model_loss(model, tokens, seq_len=seq_len, num_streams=max(1, min(64, len(kept) // 1000)))
    report["loss"] = loss
    report["bpc"] = loss * NATS_TO_BITS
    if window is not None:
        report |= _window_figures(model, tokens, window, num_windows, window_seed, follow("windows"))
    if dynamic:
        rms = None
        if dynamic_update == "rms":
            training = torch.from_numpy(vocab.encode(_known_only(training_text, vocab.unknown(training_text))))
            rms = gradient_rms(model, training, segment=dynamic_segment, progress=follow("gradient statistics"))
        figure = dynamic_loss(model, tokens, segment=dynamic_segment, lr=dynamic_lr, decay=dynamic_decay, rms=rms,
                              progress=follow("dynamic evaluation"))  # fmt: skip
        report.update(dynamic_loss=figure, dynamic_bpc=figure * NATS_TO_BITS, dynamic_segment=dynamic_segment,
                      dynamic_update=dynamic_update, dynamic_lr=dynamic_lr, dynamic_decay=dynamic_decay)  # fmt: skip
    return report | _baseline_figures(kept, training_text)


def _window_figures(model: CharRNN, tokens: torch.Tensor, window: int, num_windows: int, seed: int, progress) -> dict:
    """`window_loss` in the report, with its mean over the first 8 positions of a window and over the rest."""
    mean, per_position = window_loss(model, tokens, window, num_windows=num_windows, seed=seed, progress=progress)
    head = min(8, window)
    report = {"window": window, "num_windows": num_windows, "window_seed": seed, "window_loss": mean}
    report["window_bpc"] = mean * NATS_TO_BITS
    report["window_loss_first_8"] = float(per_position[:head].mean())
    if window > head:
        report["window_loss_after_8"] = float(per_position[head:].mean())
    return report


def _baseline_figures(kept: str, training_text: str | None) -> dict:
    """gzip's loss on the text; with the training text, the 5-gram's and the share of invented words."""
    report = {"gzip_loss": gzip_loss(kept)}
    report["gzip_bpc"] = report["gzip_loss"] * NATS_TO_BITS
    if training_text is not None:
        ngram = KneserNey(training_text, order=5, discount=0.75).loss(kept)
        report["ngram_loss"] = ngram
        report["ngram_bpc"] = ngram * NATS_TO_BITS
        share, invented = invented_words(kept, training_text)
        report["invented_word_share"] = share
        report["invented_words"] = sorted(set(invented))[:50]
    return report
