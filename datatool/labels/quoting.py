"""Text from outside (file names, task fields, rater names) quoted safely in one-line
messages: never more than a short excerpt, never a byte a terminal or UTF-8 cannot take."""

from __future__ import annotations

import os
from pathlib import Path


def excerpt(value: object, limit: int = 40) -> str:
    """A short, escaped quotation of text from outside (a name, a field): printable ASCII only
    (``ascii``), at most about ``limit`` characters, and how long it really was when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return ascii(text)
    return f"{text[:limit]!a}... ({len(text)} characters)"


def utf8_name(path: Path | str) -> bool:
    """Whether a path is valid UTF-8 (Python keeps the bytes of one that is not as lone
    surrogates, which libraries such as SimpleITK cannot take)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: object) -> str:
    """``text`` with the bytes of a name that is not UTF-8 written as ``\\xNN`` (the name's
    own bytes, not Python's stand-ins), so it prints and goes into JSON and CSV."""
    value = os.fspath(text) if isinstance(text, Path) else str(text)
    if utf8_name(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
