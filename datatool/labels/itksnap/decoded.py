"""What ``sync itksnap`` decoded before: a re-sync of label files that have not changed does
not decode them again (issue 26).

An entry says that a NIfTI file whose bytes have this SHA-256, read for an image of this size
under this protocol (its name and values), decoded to this label map (its pixel hash in the
store) with these notes on its geometry. Decoding is a function of exactly those, so when a
file's bytes hash to an entry and the rater's latest label of its image is that map, the file
is unchanged: counted so without decoding it. The file's bytes are always read and hashed
(size and modification time alone are not trusted: a copy keeps the time, a rewrite can keep
both). Only NIfTI files (``.nii.gz``, ``.nii``) are entered: NRRD and MetaImage headers may
name a detached data file whose change the header's hash would not show.

The cache is a JSON file under the workspace's ``.datatool/cache`` holding only hashes and
geometry notes (no path, no name), written atomically at the end of a sync. A missing or
unreadable cache is an empty one: it only saves time, it never decides what is stored.
"""

from __future__ import annotations

from pathlib import Path

from datatool.core.jsoncache import EntryCache
from datatool.core.protocol import Protocol

CACHE_NAME = "itksnap-decoded.json"
FORMAT = 1
MAX_ENTRIES = 500_000  # about 100 MB of JSON; the oldest entries go first
CACHED_SUFFIXES = (".nii.gz", ".nii")


def cacheable(path: Path) -> bool:
    """A self-contained label file (NIfTI): its bytes are all that its decoding reads."""
    return path.name.lower().endswith(CACHED_SUFFIXES)


def entry_key(file_sha256: str, shape: tuple[int, int], protocol: Protocol) -> str:
    values = ",".join(str(s.value) for s in protocol.structures)
    return f"{file_sha256}:{shape[0]}x{shape[1]}:{protocol.name}:{values}"


class Decoded(EntryCache):
    """The entries: key (:func:`entry_key`) -> [mask hash, geometry notes]."""

    @classmethod
    def load(cls, meta_dir: Path) -> Decoded:
        return cls(Path(meta_dir) / "cache" / CACHE_NAME, keep=MAX_ENTRIES, format=FORMAT)

    def get(self, key: str) -> tuple[str, list[str]] | None:
        found = self.entries.get(key)
        if (
            not isinstance(found, list)
            or len(found) != 2
            or not isinstance(found[0], str)
            or not isinstance(found[1], list)
        ):
            return None
        return found[0], [str(n) for n in found[1]]

    def put(self, key: str, mask_hash: str, notes: list[str]) -> None:
        self.set_entry(key, [mask_hash, list(notes)])

    def save(self) -> None:
        """Write the cache atomically when something changed; a cache that cannot be
        written is left as it was (it only saves time)."""
        try:
            super().save()
        except OSError:
            return
