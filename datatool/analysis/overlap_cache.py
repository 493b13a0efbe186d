"""The per-image measures of ``agreement`` (overlap in pixels, surface distances), kept so that
agreement on a saved sample whose labels did not change reads no mask again.

A measure of one image is a pure function of what it is computed from: the two label maps
(store objects, named by the SHA-256 of their pixels, never changed), the structures' values
and bounding boxes, the pixel spacing and the NSD tolerance. The cache keys each image's
measures by the SHA-256 of exactly those inputs, so a changed label, spacing or tolerance is
simply another key. Surface distances cost about 2 ms of CPU an image and structure (3 s on a
300-image sample); a re-run with the labels unchanged costs a JSON read.

The cache is a JSON file under the workspace's ``.datatool/cache`` (digests and figures only:
no name, no path), written atomically when it changed, holding the entries of the last
``KEEP`` images measured. A missing or unreadable cache is an empty one.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from datatool.analysis.metrics import Surface
from datatool.core.jsoncache import EntryCache

CACHE_NAME = "agreement-measures.json"
FORMAT = 1  # a change to how a measure is computed (metrics.overlap, metrics.surface) bumps it
KEEP = 20_000  # images' measures (about 300 bytes each)

Measures = list[tuple[int, Surface]]  # per structure: overlap in pixels, surface distances


def job_key(hash_a: str, hash_b: str, boxes: list, spacing, tolerance: float | None) -> str:
    """The key of one image's measures: the SHA-256 of everything they are computed from."""
    text = json.dumps([hash_a, hash_b, boxes, list(spacing), tolerance], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


class OverlapCache(EntryCache):
    def __init__(self, meta_dir: Path):
        super().__init__(Path(meta_dir) / "cache" / CACHE_NAME, keep=KEEP, format=FORMAT)

    def get(self, key: str) -> Measures | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            return [
                (int(overlap), Surface(_float(h), _float(a), _float(n), _float(t), empty))
                for overlap, h, a, n, t, empty in entry
            ]
        except (TypeError, ValueError):  # not what this version writes: measured again
            return None

    def put(self, key: str, measures: Measures) -> None:
        entry = [
            [overlap, *(_number(v) for v in (s.hd95, s.assd, s.nsd, s.tolerance)), s.empty]
            for overlap, s in measures
        ]
        self.set_entry(key, entry)
