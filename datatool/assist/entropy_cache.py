"""The scores ``next`` ranks by, kept per run so that a re-run drafts only the images it has
not scored yet.

An image's mean predictive entropy and draft score are a pure function of the network's
weights (the run's checkpoint, named by its SHA-256), the test-time flips and the image's
pixels (a store object, named by the SHA-256 of its pixels, never changed). The cache file of a
run (``.datatool/cache/next-run-N.json``) is headed by the checkpoint's digest and the flips,
and keyed by the image's pixel hash: another checkpoint of the run, or other flips, read as
an empty cache. Loading the network (importing torch: about 1 s) and drafting every
unlabelled image are then paid only for images not scored before: ``next`` asked again, or
after a rater labelled some images, reads a JSON file.

Scores computed on one device are reused on another (a GPU's differ from a CPU's in the last
digits); the ranking read from the cache is the one computed first. Digests and figures
only: no name, no path. A missing or unreadable cache is an empty one.
"""

from __future__ import annotations

from pathlib import Path

from datatool.core.jsoncache import EntryCache

FORMAT = 1  # a change to how the entropy or the score is computed bumps it
KEEP = 200_000  # images' scores (about 100 bytes each)


def cache_path(meta_dir: Path, run_id: int) -> Path:
    return Path(meta_dir) / "cache" / f"next-run-{run_id}.json"


class EntropyCache(EntryCache):
    """The (entropy, score) of each image the run drafted, by pixel hash."""

    def __init__(self, meta_dir: Path, run_id: int, checkpoint: str, flips: bool):
        super().__init__(
            cache_path(meta_dir, run_id),
            keep=KEEP,
            format=FORMAT,
            checkpoint=checkpoint,
            flips=bool(flips),
        )

    def get(self, pixel_hash: str) -> tuple[float, float] | None:
        entry = self.entries.get(pixel_hash)
        try:
            entropy, score = entry  # type: ignore[misc]
            return float(entropy), float(score)
        except (TypeError, ValueError):  # absent, or not what this version writes
            return None

    def put(self, pixel_hash: str, entropy: float, score: float) -> None:
        self.set_entry(pixel_hash, [float(entropy), float(score)])
