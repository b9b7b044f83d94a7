"""An interpolated Kneser-Ney character n-gram model: the baseline a neural model must beat.

Counts come from the training text; the highest order uses raw counts, lower orders use
continuation counts (how many different characters precede a context), and every order
interpolates with the one below using a fixed discount. The lowest order falls back to a
uniform distribution over the characters known to the model and the text scored.

>>> model = KneserNey("abracadabra" * 10, order=3)
>>> round(model.loss("abracadabra"), 2) < 0.5
True
"""

import math
from collections import Counter


class KneserNey:
    def __init__(self, text: str, order: int = 5, discount: float = 0.75):
        if order < 1:
            raise ValueError("order must be at least 1")
        self.order, self.discount = order, discount
        self.alphabet = set(text)
        top = Counter(text[i : i + order] for i in range(len(text) - order + 1))
        # counts[k] maps k-grams to raw counts (k = order) or continuation counts (k < order).
        self.counts: list[Counter] = [Counter() for _ in range(order + 1)]
        self.counts[order] = top
        for k in range(order - 1, 0, -1):
            for gram in self.counts[k + 1]:
                self.counts[k][gram[1:]] += 1
        self.totals: list[Counter] = [Counter() for _ in range(order + 1)]
        self.types: list[Counter] = [Counter() for _ in range(order + 1)]
        for k in range(1, order + 1):
            for gram, count in self.counts[k].items():
                self.totals[k][gram[:-1]] += count
                self.types[k][gram[:-1]] += 1

    def probability(self, context: str, character: str, vocabulary_size: int) -> float:
        p = 1.0 / vocabulary_size
        context = context[len(context) - self.order + 1 :] if self.order > 1 else ""
        for k in range(1, len(context) + 2):
            history = context[len(context) - k + 1 :] if k > 1 else ""
            total = self.totals[k].get(history, 0)
            if total == 0:
                continue  # an unseen context: keep the lower order's estimate
            count = self.counts[k].get(history + character, 0)
            p = (max(count - self.discount, 0.0) + self.discount * self.types[k][history] * p) / total
        return p

    def loss(self, text: str) -> float:
        """Mean negative log-probability, nats per character, of text[1:] given what precedes."""
        vocabulary_size = len(self.alphabet | set(text))
        total = 0.0
        for i in range(1, len(text)):
            total -= math.log(self.probability(text[max(0, i - self.order + 1) : i], text[i], vocabulary_size))
        return total / max(1, len(text) - 1)
