"""What datatool may replace when a command is told where to write (``--out``, ``--csv``):
nothing but its own earlier output of the same kind.

How datatool knows its own output: every file or folder a command writes at a path the user
gave is recorded in a ledger beside it, ``.datatool-outputs.json`` in the same folder, by name,
with the command that wrote it (its *kind*) and, for a file, the SHA-256 of what was written.
An existing path counts as datatool's own only when the ledger names it with the same kind
and, for a file, the same content (a report edited by hand since is the user's work now).
Anything else that exists (a clinical CSV, another command's output, a folder with files in
it) is refused, unless forced. An empty folder is free to use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path

from datatool.core.atomic import write_text_atomic
from datatool.core.errors import UsageError

LEDGER = ".datatool-outputs.json"
_force: ContextVar[bool] = ContextVar("datatool_force", default=False)


@contextmanager
def forcing(force: bool) -> Iterator[None]:
    """Within the block, :func:`check_output` replaces anything (a command's --force)."""
    token = _force.set(force)
    try:
        yield
    finally:
        _force.reset(token)


def _ledger_path(path: Path) -> Path:
    return path.parent / LEDGER


def _read_ledger(path: Path) -> dict:
    try:
        data = json.loads(_ledger_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _is_own(path: Path, kind: str) -> bool:
    entry = _read_ledger(path).get(path.name)
    if not isinstance(entry, dict) or entry.get("kind") != kind:
        return False
    if path.is_dir() and not path.is_symlink():
        return entry.get("sha256") is None
    recorded = entry.get("sha256")
    return isinstance(recorded, str) and recorded == _digest(path)


def _describe(path: Path) -> str | None:
    """What stands at ``path`` that writing there would replace; None when nothing."""
    if path.is_symlink():
        return "a symbolic link"
    if not path.exists():
        return None
    if path.is_dir():
        try:
            return "a folder with files in it" if any(os.scandir(path)) else None
        except OSError:
            return "a folder that cannot be read"
    return "a file"


def check_output(path: Path, kind: str, option: str, force: bool | None = None) -> None:
    """Refuse (UsageError, exit 2) to write ``kind`` at ``path`` over something datatool did
    not write there as ``kind``, unless ``force`` (default: inside :func:`forcing`)."""
    path = Path(path)
    what = _describe(path)
    if what is None or (_force.get() if force is None else force) or _is_own(path, kind):
        return
    raise UsageError(
        f"{option} {path}: {what} is there that datatool did not write as {kind} output: "
        "choose another path, or add --force to replace it"
    )


def record_output(path: Path, kind: str) -> None:
    """Note in the ledger beside ``path`` that datatool wrote it as ``kind`` (for a file,
    with its SHA-256 now). A folder where the ledger cannot be written only means the next
    run there is refused until --force."""
    path = Path(path)
    ledger = _read_ledger(path)
    ledger[path.name] = {
        "kind": kind,
        "sha256": None if path.is_dir() else _digest(path),
    }
    with suppress(OSError):
        write_text_atomic(_ledger_path(path), json.dumps(ledger, indent=1, sort_keys=True))


__all__ = ["LEDGER", "check_output", "forcing", "record_output"]
