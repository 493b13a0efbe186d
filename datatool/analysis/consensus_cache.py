"""What ``consensus`` worked out for each image from a given set of rater labels, kept so that a
re-run reads no mask of an image whose labels did not change.

A rater's label version is never changed once stored, so everything consensus computes for an
image follows from the versions it fused (their annotation ids, named in the consensus
label's ``source_ref``) and the protocol's structures: the structures in conflict, STAPLE's
estimate of each rater's sensitivity and specificity, and the fused mask's pixel hash. A
re-run whose image has the same versions as an entry takes them from here instead of reading
and fusing the masks again, which made the cost of a re-run follow the whole catalogue
(36 ms of CPU an image) rather than the images that changed.

The cache is a JSON file under the workspace's ``.datatool/cache``, one a method, keyed by
the fused labels' reference (annotation ids and versions; rater and structure names, never
a patient's identity or a path), written
atomically when it changed. A cache written by another format, for other structures or
under other settings of the swap rule and STAPLE, is an empty one. It only saves time: an
image not in it is computed as always.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datatool.core.jsoncache import EntryCache

FORMAT = 1


@dataclass(frozen=True)
class Worked:
    """What consensus found for one image from one set of label versions."""

    conflicts: list[list]  # StructureConflict fields, in order
    performance: dict[str, list[list[float]]] | None  # structure value -> [sens..], [spec..]
    fused: str | None  # the fused mask's pixel hash (None: in conflict, nothing fused)


class ConsensusCache(EntryCache):
    """The entries of one method's cache file (see the module)."""

    def __init__(
        self,
        meta_dir: Path,
        method: str,
        structures: dict[int, str],
        settings: list[float] | None = None,
    ):
        """``settings``: the constants the figures depend on (the swap rule's share and
        ratio, STAPLE's margin): entries made under other ones are not used."""
        key = [[value, name] for value, name in sorted(structures.items())]
        key.append(["settings", list(settings or [])])
        path = Path(meta_dir) / "cache" / f"consensus-{method.replace(':', '-')}.json"
        super().__init__(path, format=FORMAT, structures=key)

    def get(self, ref: str, quality: bool) -> Worked | None:
        """The entry for labels ``ref``; None when there is none, or when ``quality`` is
        wanted and the entry was made without it."""
        entry = self.entries.get(ref)
        if not isinstance(entry, dict):
            return None
        try:
            worked = Worked(entry["conflicts"], entry["performance"], entry["fused"])
        except KeyError:
            return None
        if quality and worked.performance is None:
            return None
        return worked

    def put(self, ref: str, worked: Worked) -> None:
        entry = {
            "conflicts": worked.conflicts,
            "performance": worked.performance,
            "fused": worked.fused,
        }
        self.set_entry(ref, entry)

    def keep_only(self, refs: set[str]) -> None:
        """Forget the entries of labels no longer anybody's latest."""
        stale = [ref for ref in self.entries if ref not in refs]
        for ref in stale:
            del self.entries[ref]
        self.changed = self.changed or bool(stale)
