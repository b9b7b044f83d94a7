"""Standard output that any console can take, set up once where the CLI starts (`prepare`).

A model's text may hold any character (curly quotes, 你好), and a console may not be able to show
it: an ASCII one (PYTHONIOENCODING=ascii, some containers and Windows set-ups) or Latin-1. There,
each character its encoding lacks is written as a JSON-style escape (`\\u4f60`; one outside the
Basic Multilingual Plane as its UTF-16 pair, `\\ud83d\\ude00`), and one note on standard error says
so the first time. The escapes are JSON's own, so --json output stays valid JSON that reads back
as the same text: on an ASCII console it is exactly what `json.dumps(..., ensure_ascii=True)` writes.
"""

import codecs
import sys

ERRORS = "charnn.escape"  # the name of the error handler `prepare` gives standard output

_noted = False  # whether this process has said once that characters were escaped


def prepare() -> None:
    """Make standard output escape the characters its encoding lacks, instead of raising."""
    global _noted
    _noted = False
    codecs.register_error(ERRORS, _escape)
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent where a caller swapped in a StringIO
    if reconfigure is not None:
        reconfigure(errors=ERRORS)


def _escape(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    global _noted
    if not _noted:
        _noted = True
        encoding = getattr(sys.stdout, "encoding", None) or error.encoding
        print(f"charnn: note: the console's encoding ({encoding}) cannot show some characters; they are written "
              "as \\uXXXX escapes (set PYTHONIOENCODING=utf-8 to see them)", file=sys.stderr)  # fmt: skip
    return "".join(escape(c) for c in error.object[error.start : error.end]), error.end


def escape(character: str) -> str:
    """`character` as JSON escapes it: \\uXXXX, or a UTF-16 surrogate pair beyond U+FFFF."""
    code = ord(character)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
