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
