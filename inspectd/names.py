"""Names that come from cameras (file names, serials, device strings) made safe to publish.

A file name is bytes on Linux; ``os.listdir`` hands bytes that are not UTF-8 over as lone
surrogates (PEP 383, ``surrogateescape``), which no UTF-8 encoder takes: one such part id used to
cost a whole batch of verdicts. ``escape_name`` turns every name into printable, valid text, in
a way ``unescape_name`` reverses exactly (docs/cameras.md, "Part ids"):

- a byte that is not UTF-8 (a surrogate U+DC80..U+DCFF from ``surrogateescape``): ``\\xNN``
- a control character (U+0000..U+001F, U+007F): ``\\xNN``; one of U+0080..U+009F: ``\\u00NN``
- any other lone surrogate (U+D800..U+DFFF, e.g. from a driver): ``\\uNNNN``
- a Unicode noncharacter (U+FDD0..U+FDEF, U+nFFFE, U+nFFFF): ``\\uNNNN`` or ``\\UNNNNNNNN``;
  MQTT 5 forbids them in strings and mosquitto disconnects a client that sends one (the
  overlay's user properties carry the part id)
- a backslash: ``\\\\`` (so that the escapes above cannot be mistaken for a name's own text)

Everything else, valid non-ASCII letters included, passes unchanged, so names that were fine
before are unchanged unless they hold a backslash.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ESCAPED = re.compile(r"\\(?:\\|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def _nonchar(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _escape_char(c: str) -> str:
    code = ord(c)
    if c == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte surrogateescape stood for
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0x80 <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or (_nonchar(code) and code <= 0xFFFF):
        return f"\\u{code:04x}"
    if _nonchar(code):
        return f"\\U{code:08x}"
    return c


def _plain(c: str) -> bool:
    code = ord(c)
    return not (
        c == "\\"
        or code < 0x20
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or _nonchar(code)
    )


def escape_name(name: str) -> str:
    """``name`` as printable, valid UTF-8 text; reversible with ``unescape_name``."""
    if name.isascii() and name.isprintable() and "\\" not in name:
        return name  # the usual case, without a loop
    return "".join(c if _plain(c) else _escape_char(c) for c in name)


def unescape_name(text: str) -> str:
    """The name ``escape_name`` was given (bytes that were not UTF-8 come back as the same
    surrogates, so ``os.fsencode(unescape_name(part_id))`` is the file name's bytes)."""

    def back(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            code = int(m.group(1), 16)
            return chr(code) if code < 0x80 else chr(0xDC00 + code)
        if m.group(2) is not None or m.group(3) is not None:
            return chr(int(m.group(2) or m.group(3), 16))
        return "\\"

    return _ESCAPED.sub(back, text)


def file_part_id(path: os.PathLike[str] | str) -> str:
    """A part id from a file name: the name without its extension, escaped."""
    return escape_name(Path(path).stem)
