"""Making untrusted text (catalog fields, file metadata, plugin messages) safe to print on a terminal."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["printable"]

_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def printable(text: object) -> str:
    """``text`` on one line with every control character escaped (``\\x1b``, ``\\u202e``, ...).

    Line breaks become a space; escape sequences (ESC, OSC, CSI), other C0/C1 controls and Unicode
    format characters (bidirectional overrides, zero-width marks) are shown as ``\\xNN``/``\\uNNNN``
    instead of reaching the terminal.
    """
    flat = _LINE_BREAKS.sub(" ", str(text))
    if flat.isprintable():
        return flat
    return "".join(_escape(char) if _is_control(char) else char for char in flat)


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn") and char != " "


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
