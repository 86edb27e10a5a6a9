"""Untrusted text on an operator's terminal: shown as data, never obeyed.

File names, mail subjects, server errors, lease holders, cursors and `last_error` come from
sources and from Redis, not from us. Printed raw, a name can carry terminal escape sequences (ESC,
CSI colours, OSC 8 hyperlinks, BEL, a carriage return that overwrites the line, bidi overrides
such as U+202E that reverse what follows) and, through rich, markup (`a[/b].bin` crashed
`kmrl-sync status` with a MarkupError) or emoji codes. Everything human-readable that kmrl-sync
prints passes its data through `visible()`; rich output puts it in `Text` objects (`text()`), which
rich never parses for markup. JSON output needs neither: JSON escapes control characters itself
and must stay the exact data.

`visible()` writes each control, format (bidi, zero-width), surrogate (an undecodable byte of a
file name) and line/paragraph separator character as its Python escape (`\\x1b`, `\\u202e`,
`\\udcff`, `\\n`), so it is both harmless and recognisable. Backslashes are left alone: the result is for
eyes, not for parsing back.

`clipped()` bounds such text where it is kept (an exception message, a stored reason): a server
may answer with megabytes of it.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.text import Text

_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def clipped(text: str, limit: int) -> str:
    """`text`, or its first `limit - 1` characters and an ellipsis: never longer than `limit`."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(value: Any) -> str:
    """`value` as text that cannot steer a terminal: unsafe characters become escapes."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, in C: nothing is unsafe in a printable string
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def text(value: Any, style: str = "") -> Text:
    """`value` as a rich Text (no markup, no emoji codes), made `visible()`."""
    from rich.text import Text

    return Text(visible(value), style=style)
