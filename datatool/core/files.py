"""Walking input folders safely: regular files only, every other entry said once.

A FIFO, socket or device file in an input tree would make a reader hang (or read forever), so
it is never opened: it is listed with what it is. A folder that cannot be listed is listed
with the reason, never skipped in silence. Hidden entries (``.name``) are left out, and
symbolic links to folders are not followed (as ``os.walk`` does by default). Pure: no
database.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


def special_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file or a folder."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return "not a regular file"


def not_regular(path: Path) -> str | None:
    """Why ``path`` must not be opened as a file (a FIFO, socket, device or folder), or None
    for a regular file (or a path that does not exist: opening it says so). Never opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    return special_kind(mode)


def skip_reason(kind: str) -> str:
    return f"{kind}, not a regular file: skipped, never opened"


@dataclass
class Walk:
    """The regular files under some folders, sorted (each folder's files, then its
    subfolders), and what was left out with the reason."""

    files: list[Path] = field(default_factory=list)
    special: list[tuple[str, str]] = field(default_factory=list)  # (path, what it is)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)


def walk(folders: Iterable[Path], walk_result: Walk | None = None) -> Walk:
    """Every regular, non-hidden file under ``folders`` (see the module docstring)."""
    found = walk_result or Walk()
    for top in folders:
        stack = [Path(top)]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                found.unreadable.append(
                    (
                        str(folder),
                        f"cannot read this folder ({exc.strerror or type(exc).__name__}): its "
                        "files were not read; fix its permissions and run again",
                    )
                )
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(Path(entry.path))
                        continue
                    if entry.is_file():  # follows a link to a file, like os.walk
                        found.files.append(Path(entry.path))
                        continue
                    if entry.is_symlink() and not os.path.exists(entry.path):
                        found.special.append((entry.path, "a broken symbolic link"))
                        continue
                    if entry.is_dir():
                        continue  # a link to a folder: not followed
                    kind = special_kind(entry.stat().st_mode)
                except OSError as exc:
                    found.unreadable.append(
                        (entry.path, f"cannot read it ({exc.strerror or type(exc).__name__})")
                    )
                    continue
                if kind is not None:
                    found.special.append((entry.path, kind))
            stack.extend(reversed(subfolders))
    return found
