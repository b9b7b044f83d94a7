"""Constraints on the characters a sample may hold, as a logit bias that bans the rest.

A set of characters is written as a user would write it: characters, ranges (``a-m``), classes
(``[:alpha:]`` letters, ``[:digit:]``, ``[:upper:]``, ``[:lower:]``, ``[:space:]`` white space
and newlines, ``[:punct:]`` everything else that is printed) and escapes (``\\n``, ``\\t``, ``\\-``,
``\\\\``). A ban is exact at the character level: the mask takes every banned character's
probability away before the draw, so no sample ever holds one.

>>> "".join(sorted(character_set("a-e\\\\-")))
'-abcde'
>>> ban_bias(Vocabulary(tuple("abc ")), ban="b")
((1, -100.0),)
"""

from charnn.config import BAN
from charnn.errors import ConfigError
from charnn.vocab import Vocabulary

CLASSES = {
    "alpha": str.isalpha,
    "digit": str.isdigit,
    "upper": str.isupper,
    "lower": str.islower,
    "space": str.isspace,
    "punct": lambda c: c.isprintable() and not (c.isalnum() or c.isspace()),
}
_ESCAPES = {"n": "\n", "t": "\t"}


def character_set(spec: str, alphabet: str = "") -> set[str]:
    """The characters `spec` names; a class takes its members from `alphabet` (the vocabulary)."""
    found: set[str] = set()
    i = 0
    while i < len(spec):
        if spec.startswith("[:", i):
            end = spec.find(":]", i + 2)
            name = spec[i + 2 : end] if end > 0 else spec[i + 2 :]
            if end < 0 or name not in CLASSES:
                known = ", ".join(f"[:{n}:]" for n in CLASSES)
                raise ConfigError(f"unknown character class in {spec!r}; the classes are {known}")
            found |= {c for c in alphabet if CLASSES[name](c)}
            i = end + 2
            continue
        first, i = _character(spec, i)
        if i + 1 < len(spec) and spec[i] == "-":
            last, i = _character(spec, i + 1)
            if ord(last) < ord(first):
                raise ConfigError(f"the range {first}-{last} in {spec!r} runs backwards")
            found |= {chr(code) for code in range(ord(first), ord(last) + 1)}
        else:
            found.add(first)
    return found


def unescape(text: str) -> str:
    """`text` with the escapes of a character set (``\\n``, ``\\t``, a backslash before any other
    character) read as the characters they stand for, as a stop string is written on the command line."""
    characters, i = [], 0
    while i < len(text):
        character, i = _character(text, i)
        characters.append(character)
    return "".join(characters)


def _character(spec: str, i: int) -> tuple[str, int]:
    """The character at `i` (an escape is two), and where the next one starts."""
    if spec[i] == "\\" and i + 1 < len(spec):
        return _ESCAPES.get(spec[i + 1], spec[i + 1]), i + 2
    return spec[i], i + 1


def ban_bias(vocab: Vocabulary, *, ban: str | None = None, allow: str | None = None) -> tuple[tuple[int, float], ...]:
    """The logit bias (`SampleConfig.logit_bias`) that bans what `ban` names and, with `allow`, all
    that it does not name. Characters the vocabulary lacks are never drawn anyway."""
    alphabet = "".join(vocab.characters)
    banned = character_set(ban, alphabet) if ban else set()
    if allow is not None:
        allowed = character_set(allow, alphabet)
        banned |= set(alphabet) - allowed
    kept = [c for c in vocab.characters if c not in banned]
    if not kept:
        raise ConfigError("the constraints leave no character of the model's vocabulary to draw; allow some")
    return tuple((index, BAN) for index, c in enumerate(vocab.characters) if c in banned)


def required_phrases(
    vocab: Vocabulary, phrases: tuple[str, ...], *, length: int, within: int | None, logit_bias, rows: int
) -> "Required | None":
    """The `Required` automata of `rows` samples of `length` new characters, whose `phrases` must appear
    within their first `within` (default: all `length`); None without phrases. Raises ConfigError for
    phrases that cannot appear (a banned character of `logit_bias`, too long for `within`)."""
    if not phrases:
        return None
    within = length if within is None else within
    if not 0 < within <= length:
        raise ConfigError(f"`within` must be from 1 to `length` ({length}), got {within}")
    banned = {vocab.characters[i] for i, value in logit_bias if value <= BAN and i < len(vocab)}
    return Required(tuple(phrases), within, vocab, banned, rows)


class Required:
    """Phrases each sample must hold within its first `within` new characters.

    Each row keeps, per phrase, how much of it the text drawn so far ends with (a Knuth-Morris-Pratt
    automaton over the characters). Sampling stays free while the phrases still fit in the
    characters left; once they only just fit, the row takes the next character of the phrase it
    is furthest into, then of the next, so every phrase appears, however the draws went.
    """

    def __init__(self, phrases: tuple[str, ...], within: int, vocab: Vocabulary, banned: set[str], rows: int):
        for phrase in phrases:
            if not phrase:
                raise ConfigError("a required phrase is empty")
            unknown = vocab.unknown(phrase)
            if unknown:
                shown = ", ".join(repr(c) for c in unknown)
                raise ConfigError(f"the required phrase {phrase!r} has characters the model does not know: {shown}")
            if set(phrase) & banned:
                shown = ", ".join(repr(c) for c in sorted(set(phrase) & banned))
                raise ConfigError(f"the required phrase {phrase!r} uses banned characters: {shown}")
        if sum(map(len, phrases)) > within:
            raise ConfigError(
                f"the required phrases need {sum(map(len, phrases))} characters, more than the {within} "
                "they must appear within; give a larger `within` or `length`"
            )
        self.phrases = [vocab.encode(phrase).tolist() for phrase in phrases]
        self.fallbacks = [_failure(phrase) for phrase in self.phrases]
        self.within = within
        self.matched = [[0] * len(phrases) for _ in range(rows)]  # per row, per phrase; len(phrase) when found
        self.current: list[int | None] = [None] * rows  # the phrase a row is being made to finish
        self.step = 0  # characters drawn so far

    def force(self, logits, rows=None):
        """`logits` (rows, V) with each row whose phrases only just fit made to take its phrase's next
        character (a new tensor where any is); `rows`: each sample's row of `logits`, if not the same."""
        forced = self.forced(self.step)
        if forced:
            logits = logits.clone()
            for sample, character in forced.items():
                row = sample if rows is None else rows[sample]
                logits[row] = float("-inf")
                logits[row, character] = 0.0
        return logits

    def forced(self, step: int) -> dict[int, int]:
        """{row: the character it must take at this step}, for the rows whose phrases only just fit.

        The test counts each phrase still missing at its full length, whatever part of it the text
        ends with (a free draw can lose that part): so a row is free only while every phrase fits
        from scratch, and once forcing begins it finishes one phrase before it looks again.
        """
        left = self.within - step
        forced = {}
        for row, matched in enumerate(self.matched):
            pending = [j for j, phrase in enumerate(self.phrases) if matched[j] < len(phrase)]
            current = self.current[row]
            if current is None or matched[current] == len(self.phrases[current]):
                current = None
                if pending and sum(len(self.phrases[j]) for j in pending) >= left:
                    current = max(pending, key=lambda j: (matched[j], -j))  # the one it is furthest into
                self.current[row] = current
            if current is not None:
                forced[row] = self.phrases[current][matched[current]]
        return forced

    def advance(self, chosen: list[int]) -> None:
        """Move each row's automata on by the character it drew."""
        self.step += 1
        for matched, character in zip(self.matched, chosen, strict=True):
            for j, phrase in enumerate(self.phrases):
                k = matched[j]
                if k == len(phrase):
                    continue
                while k and phrase[k] != character:
                    k = self.fallbacks[j][k - 1]
                matched[j] = k + 1 if phrase[k] == character else 0


def _failure(phrase: list[int]) -> list[int]:
    """Knuth-Morris-Pratt: for each prefix, the length of its longest proper prefix that is also its suffix."""
    table, k = [0] * len(phrase), 0
    for i in range(1, len(phrase)):
        while k and phrase[i] != phrase[k]:
            k = table[k - 1]
        if phrase[i] == phrase[k]:
            k += 1
        table[i] = k
    return table
