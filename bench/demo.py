"""What the benchmarks share: demo data made at a given scale, timed."""

from __future__ import annotations

import time
from pathlib import Path

from datatool.demo.generator import parse_images_per_side, write_demo_dataset


def make_demo(out: Path, patients: int, images_per_side: str, seed: int = 1) -> Path:
    """Write the demo dataset into ``out`` and say how long it took; returns ``out``."""
    start = time.perf_counter()
    write_demo_dataset(
        out, patients=patients, seed=seed, images_per_side=parse_images_per_side(images_per_side)
    )
    print(f"demo data: {time.perf_counter() - start:.1f} s to generate")
    return out
