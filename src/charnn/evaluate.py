"""How good is a model on a text: its loss beside baselines computed on the same text.

The baselines are an interpolated Kneser-Ney character 5-gram fitted on the training text
and gzip -9. For a generated sample, the share of its words that never occur in the training
text measures invented words. Losses are nats per character; bits = nats / ln 2.
"""

import gzip
import math
import re

import torch
import torch.nn.functional as F

from charnn.hardware import autocast
from charnn.model import CharRNN
from charnn.ngram import KneserNey
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
    num_streams = max(1, min(num_streams, (len(tokens) - 1) // 2))
    piece = len(tokens) // num_streams
    if piece < 2:
        return 0.0, 0
    # Converted to long chunk by chunk: a memory-mapped held-out text is never loaded whole.
    streams = tokens[: piece * num_streams].view(num_streams, piece)[rank::world_size]  # (S, L)
    if len(streams) == 0:
        return 0.0, 0
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, piece - 1, seq_len):
            chunk = streams[:, start : start + seq_len + 1].long().to(device)
            targets = chunk[:, 1:]
            inputs = chunk[:, : targets.shape[1]]
            logits, state = model(inputs, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    model.train(was_training)
    return total, count


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


def evaluate_text(
    model: CharRNN,
    vocab: Vocabulary,
    text: str,
    *,
    training_text: str | None,
    seq_len: int = 100,
) -> dict:
    """Model loss on `text` beside the n-gram and gzip baselines, in one report.

    Characters the model does not know are counted, then left out of every figure, so the
    model and the baselines score the same characters.
    """
    unknown = vocab.unknown(text)
    unknown_set = set(unknown)
    kept = "".join(c for c in text if c not in unknown_set) if unknown else text
    report = {
        "characters": len(text),
        "unknown_characters": len(text) - len(kept),
        "unknown": unknown,
    }
    tokens = torch.from_numpy(vocab.encode(kept))
    loss = model_loss(model, tokens, seq_len=seq_len, num_streams=max(1, min(64, len(kept) // 1000)))
    report["loss"] = loss
    report["bpc"] = loss * NATS_TO_BITS
    report["gzip_loss"] = gzip_loss(kept)
    report["gzip_bpc"] = report["gzip_loss"] * NATS_TO_BITS
    if training_text is not None:
        ngram = KneserNey(training_text, order=5, discount=0.75).loss(kept)
        report["ngram_loss"] = ngram
        report["ngram_bpc"] = ngram * NATS_TO_BITS
        share, invented = invented_words(kept, training_text)
        report["invented_word_share"] = share
        report["invented_words"] = sorted(set(invented))[:50]
    return report
