"""Store objects found intact before are not hashed again while unchanged on disk (size,
modification time, inode); anything rewritten, removed or unreadable is found; ``deep``
hashes all."""

from __future__ import annotations

import os

import numpy as np

from datatool.core.store import Store, encode_png
from datatool.core.verified import CACHE_NAME, verify_objects


def _objects(tmp_path):
    store = Store(tmp_path / "store")
    digests = [store.put_array(np.full((6, 8), v, np.uint8)) for v in (1, 2, 3)]
    return store, tmp_path / "meta", digests


def test_objects_are_hashed_once_then_only_when_their_file_changes(tmp_path):
    store, meta, digests = _objects(tmp_path)
    first = verify_objects(store, meta, digests)
    assert (first.hashed, first.missing, first.changed) == (3, [], [])
    assert (meta / "cache" / CACHE_NAME).exists()
    again = verify_objects(store, meta, [*digests, digests[0]])  # each object once
    assert (again.hashed, again.missing, again.changed) == (0, [], [])

    # rewritten in place with other pixels (another size): hashed again, found changed
    store.path_for(digests[1]).write_bytes(encode_png(np.full((4, 4), 9, np.uint8)))
    store.path_for(digests[2]).unlink()
    found = verify_objects(store, meta, digests)
    assert (found.hashed, found.missing, found.changed) == (1, [digests[2]], [digests[1]])
    # a changed object is never entered as intact: found changed at every check
    assert verify_objects(store, meta, digests).changed == [digests[1]]


def test_damage_that_keeps_size_time_and_inode_needs_deep(tmp_path):
    """The one thing the stat figures cannot see: bytes changed in place with the size and
    the modification time put back. ``deep`` hashes every object and finds it."""
    store, meta, digests = _objects(tmp_path)
    verify_objects(store, meta, digests)
    path = store.path_for(digests[0])
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the zlib stream of the only IDAT
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and os.stat(path).st_size == st.st_size
    assert verify_objects(store, meta, digests).hashed == 0  # taken as unchanged
    deep = verify_objects(store, meta, digests, deep=True)
    assert (deep.hashed, deep.changed) == (3, [digests[0]])  # not a traceback: damaged
    assert verify_objects(store, meta, digests).changed == [digests[0]]


def test_an_unreadable_cache_is_an_empty_one(tmp_path):
    store, meta, digests = _objects(tmp_path)
    (meta / "cache").mkdir(parents=True)
    (meta / "cache" / CACHE_NAME).write_text("{not json")
    assert verify_objects(store, meta, digests).hashed == 3
    (meta / "cache" / CACHE_NAME).write_text('{"format": 99, "entries": {}}')
    assert verify_objects(store, meta, digests).hashed == 3
    assert verify_objects(store, meta, digests).hashed == 0
