"""Text from outside (file names, task fields, rater names) quoted safely in one-line
messages: never more than a short excerpt, never a byte a terminal or UTF-8 cannot take."""

from __future__ import annotations

import os
from pathlib import Path


def excerpt(value: object, limit: int = 40) -> str:
    """A short quotation of text from outside (a name, a field), escaped as Python's ``repr``
    escapes (a newline, ESC, a byte of a name that is not UTF-8), at most about ``limit``
    characters, and how long it really was when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def utf8_name(path: Path | str) -> bool:
    """Whether a path is valid UTF-8 (Python keeps the bytes of one that is not as lone
    surrogates, which libraries such as SimpleITK cannot take)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: object) -> str:
    """``text`` on one line that prints and goes into JSON and CSV: the bytes of a name that
    is not UTF-8 written as ``\\xNN`` (the name's own bytes, not Python's stand-ins), and any
    other character that does not print (a newline, ESC) escaped as Python writes it."""
    value = os.fspath(text) if isinstance(text, Path) else str(text)
    if not utf8_name(value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)


def clipped(text: object, limit: int = 240) -> str:
    """:func:`printable`, cut to about ``limit`` characters (and how long it really was), for
    a path or reference from outside that a message names."""
    value = printable(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"
