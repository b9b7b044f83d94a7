"""How much generated text may be held in memory at once.

Texts printed as they are drawn need no limit; texts held whole until the end (several samples,
best-of, JSON, beam search) are refused before any work when they would not fit.
"""

from charnn.errors import ConfigError
from charnn.hardware import memory_bytes

# Texts held whole before they are printed (several samples, best-of, JSON): while drawn, each
# character is a list slot (8 bytes); joined, up to 4 more; printed or put in JSON, a copy and its
# encoded bytes (up to 4 + 8). 32 bytes a character is a ceiling, not a measurement.
BYTES_PER_HELD_CHARACTER = 32
# Beam search keeps two small tensors a step per search (beam and greedy) until it follows the
# texts back at the end: 1.6 to 2.8 KB a step measured at width 4 on a small model.
BEAM_BYTES_PER_STEP = 4096
HELD_SHARE = 0.5  # of the machine's physical memory, the most that held texts may take


def check_held(length: int, texts: int, bytes_per_character: int = BYTES_PER_HELD_CHARACTER) -> None:
    """Refuse `texts` texts of `length` characters, held whole until the end, that would not fit in
    memory (more than HELD_SHARE of it); `generate`, which yields as it draws, has no such limit."""
    memory = memory_bytes()
    need = length * texts * bytes_per_character
    if memory is not None and need > memory * HELD_SHARE:
        count = f"{texts} texts" if texts > 1 else "the text"
        raise ConfigError(
            f"`length` {length:,} is too long to hold {count} whole until the end: about {_size(need)} at "
            f"{bytes_per_character} bytes a character, more than half of this machine's memory ({_size(memory)}); "
            "ask for fewer characters, or `stream` the samples: each is written as it is drawn, however long "
            "(not with `json`, `best_of` or `beam`; a single sample is written so anyway)"
        )


def _size(count: int) -> str:
    return f"{count / 1e12:,.1f} TB" if count >= 1e12 else f"{count / 1e9:,.1f} GB"
