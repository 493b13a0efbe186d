"""Which store objects were last found intact, so that a check of thousands of them (``split
check``: every frozen reference mask) reads and hashes only those written or touched since.

The store is written by datatool alone, each object once (atomically, by rename) and never
changed: an object whose size, modification time (ns) and inode are what they were when its
pixels last hashed to its name has not been rewritten since. Such an object is taken as
intact without decoding it; any other is decoded and hashed again, and a missing one is
missing. What this does not see is damage that keeps all three (a disk flipping bits under
the file system): ``deep=True`` (``split check --deep``) hashes every object whatever the
cache says, and writes what it found.

The cache is a JSON file under the workspace's ``.datatool/cache`` holding only store
digests and stat figures (no path, no name), written atomically when it changed. A missing
or unreadable cache is an empty one: it only saves time, it never decides what is intact
that was not hashed intact before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datatool.core.jsoncache import read_entries, write_entries
from datatool.core.store import Store

CACHE_NAME = "store-verified.json"
FORMAT = 1


@dataclass
class Verified:
    """What :func:`verify_objects` found."""

    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # no longer hash to their name
    hashed: int = 0  # objects decoded and hashed now (the others: unchanged since)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify_objects(
    store: Store, meta_dir: Path, digests: Iterable[str], deep: bool = False
) -> Verified:
    """Each object in ``digests``: missing, changed (its pixels no longer hash to its name)
    or intact; hashed only when it is not known intact as it stands (see the module)."""
    path = Path(meta_dir) / "cache" / CACHE_NAME
    entries: dict[str, list[int]] = read_entries(path, format=FORMAT)
    known = {} if deep else dict(entries)
    found = Verified()
    for digest in dict.fromkeys(digests):
        try:
            stamp = _stamp(os.stat(store.path_for(digest)))
        except FileNotFoundError:
            found.missing.append(digest)
            entries.pop(digest, None)
            continue
        if known.get(digest) == stamp:
            continue
        found.hashed += 1
        try:
            intact = store.verify(digest)
        except FileNotFoundError:  # removed between the stat and the read
            found.missing.append(digest)
            entries.pop(digest, None)
            continue
        except Exception:  # not a PNG the store can decode any more: damaged
            intact = False
        if intact:
            entries[digest] = stamp
        else:
            found.changed.append(digest)
            entries.pop(digest, None)
    if deep or entries != known:
        write_entries(path, entries, format=FORMAT)
    return found
