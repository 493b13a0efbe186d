"""Constructed labels of the anterior view for the QA tests (analysis.qa, the review project,
the review queue's CLI), on the demo images."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from datatool.analysis.qa import list_queue
from datatool.core.catalogue import FlagStatus, Image, Series
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation

P = load_protocol()
V = {s.name: s.value for s in P.structures}


def ellipse(mask: np.ndarray, cx: float, cy: float, a: float, b: float, value: int) -> None:
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    mask[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0] = value


def clean(side: str, k: int, shift: float = 0.0) -> np.ndarray:
    """A plausible label of the anterior view, drawn for a 640 x 480 demo image of this leg
    (lateral on the image's left for a left leg), sizes varying a little with ``k``."""
    s = 1.0 + 0.04 * (k % 5)

    def x(v: float) -> float:
        return (v if side == "L" else 640 - v) + shift

    mask = np.zeros((480, 640), np.uint8)
    ellipse(mask, x(400), 205, 70 * s, 25 * s, V["adductor magnus"])
    ellipse(mask, x(400), 325, 60 * s, 28 * s, V["semitendinosus"])
    ellipse(mask, x(240), 235, 40 * s, 30 * s, V["femur"])
    ellipse(mask, x(360), 262, 28 * s, 11 * s, V["sciatic nerve"])
    ellipse(mask, x(380), 150, 12 * s, 12 * s, V["femoral artery"])
    return mask


@pytest.fixture()
def qa_ws(ws, demo_dir):
    """The 12 demo images, with clean labels of raters A and B (B's slightly shifted)."""
    ingest(ws, [demo_dir / "dicom"], workers=0)
    for name in ("A", "B"):
        add_rater(ws, name)
    with ws.session() as s:
        images = list(s.execute(select(Image, Series.side).join(Series)).all())
        for k, (image, side) in enumerate(sorted(images, key=lambda r: r[0].id)):
            for name, shift in (("A", 0.0), ("B", 2.0)):
                store_annotation(
                    s, ws.store, image, get_rater(s, name), clean(side, k, shift), "itksnap",
                    None, P,
                )  # fmt: skip
    return ws


def images_of(ws) -> list[tuple[int, str]]:
    with ws.session() as s:
        return [(i, side) for i, side in s.execute(select(Image.id, Series.side).join(Series))]


def relabel(ws, rater: str, image_id: int, mask: np.ndarray) -> None:
    with ws.session() as s:
        store_annotation(
            s, ws.store, s.get(Image, image_id), get_rater(s, rater), mask, "itksnap", None, P
        )


def flags(ws, status=FlagStatus.open) -> set[tuple[int, str, str, str]]:
    """(image, rater, structure, reason) of the flags with this status."""
    q = list_queue(ws, status=status, limit=0)
    return {(it.image_id, it.rater, it.structure, it.reason.value) for it in q.items}


def clone(ws, dest):
    """A copy of a workspace (the catalogue through SQLite's backup, so nothing in its WAL is
    lost), for tests that must start from the shared trained workspace's state.

    Never copy a live catalogue's files with shutil: closing a file descriptor of the
    database drops every POSIX lock this process holds on it, including those of the
    session's open workspace; the next process to close the database then believes it is the
    last, checkpoints and deletes the WAL, and this process's later writes go to a deleted
    file that no other process sees (and then fail with 'disk I/O error')."""
    import shutil
    import sqlite3

    from datatool.core.workspace import open_workspace

    shutil.copytree(ws.root, dest, ignore=shutil.ignore_patterns("catalogue.sqlite*"))
    src = sqlite3.connect(ws.root / ".datatool" / "catalogue.sqlite")
    dst = sqlite3.connect(dest / ".datatool" / "catalogue.sqlite")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return open_workspace(dest)
