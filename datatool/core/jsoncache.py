"""The JSON files under a workspace's ``.datatool/cache``: ``{header..., "entries": {...}}``.

A cache only saves time: a file that is missing, unreadable, not JSON, or written under
another header (its format, or what its entries were computed for) reads as no entries. A
file is written atomically, compact, in a private folder. Used by ``core.verified``;
:class:`EntryCache` by ``labels.itksnap.decoded``, ``analysis.consensus_cache``,
``analysis.overlap_cache`` and ``assist.entropy_cache``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datatool.core.atomic import PRIVATE_FILE, make_private_dirs, write_bytes_atomic


def read_entries(path: Path, **header: Any) -> dict:
    """The entries of the cache file ``path`` when its header fields equal ``header``, else {}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if any(data.get(name) != value for name, value in header.items()):
            return {}
        entries = data["entries"]
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}


def write_entries(path: Path, entries: dict, **header: Any) -> None:
    """Write ``entries`` under ``header`` to ``path`` atomically (OSError as the write's)."""
    path = Path(path)
    make_private_dirs(path.parent)
    text = json.dumps({**header, "entries": entries}, separators=(",", ":"))
    write_bytes_atomic(path, text.encode("utf-8"), mode=PRIVATE_FILE, make_parents=False)


def drop_oldest(entries: dict, keep: int) -> None:
    """Keep the ``keep`` newest entries (the last inserted), in place."""
    keys = list(entries)
    for old in keys[: max(0, len(keys) - keep)]:
        del entries[old]


class EntryCache:
    """One cache file's entries in memory: read under ``header``, changed by
    :meth:`set_entry` (the newest last), written by :meth:`save` when something changed,
    keeping the ``keep`` newest (None: all)."""

    def __init__(self, path: Path, keep: int | None = None, **header: Any):
        self.path, self.keep, self.header = Path(path), keep, header
        self.entries: dict = read_entries(self.path, **header)
        self.changed = False

    def set_entry(self, key: str, entry: Any) -> None:
        if self.entries.get(key) != entry:
            self.entries.pop(key, None)  # re-entered last: the newest, dropped last
            self.entries[key] = entry
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        if self.keep is not None:
            drop_oldest(self.entries, self.keep)
        write_entries(self.path, self.entries, **self.header)
        self.changed = False
