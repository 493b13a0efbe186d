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


def build_rated(root: Path, patients: int, per_side: str) -> None:
    """Demo data in ``root/data`` ingested into the workspace ``root/ws`` with both raters'
    ITK-SNAP labels synced (timed as a whole, printed)."""
    from datatool.core.workspace import init_workspace, open_workspace

    data = root / "data"
    start = time.perf_counter()
    make_demo(data, patients, per_side, seed=2)
    init_workspace(root / "ws")
    ws = open_workspace(root / "ws")
    ingest_rated(ws, data)
    ws.close()
    print(f"set-up (demo data, ingest, sync of two raters): {time.perf_counter() - start:.0f} s")


def ingest_rated(ws, data: Path) -> None:
    """Ingest the demo DICOM exams in ``data/dicom`` into ``ws`` and sync both demo raters'
    ITK-SNAP labels from ``data/labels``."""
    from datatool.ingest.pipeline import ingest
    from datatool.labels.annotations import add_rater
    from datatool.labels.itksnap.sync import sync_itksnap

    ingest(ws, [data / "dicom"])
    for rater in ("rater1", "rater2"):
        add_rater(ws, rater)
        sync_itksnap(ws, data / "labels" / rater, rater, dicom_root=data / "dicom")
