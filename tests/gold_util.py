"""A handmade study for gold-standard tasks: small images, a reference rater whose label of
every image is known, and helpers to store raters' labels, so each score can be worked out by
hand (femur 10 x 10 px, sciatic nerve 8 x 20 px)."""

from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy import select

from datatool.core.catalogue import Annotation, Image
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from tests.handmade import box, write_us

SHAPE = (30, 40)
FEMUR, NERVE = 1, 3


def reference_mask() -> np.ndarray:
    return box(SHAPE, {FEMUR: (5, 15, 5, 15), NERVE: (18, 26, 10, 30)})


def femur_shifted(dx: int) -> np.ndarray:
    """The reference with the femur moved ``dx`` px to the right (the nerve where it was)."""
    return box(SHAPE, {FEMUR: (5, 15, 5 + dx, 15 + dx), NERVE: (18, 26, 10, 30)})


def study(ws, tmp_path, n: int, raters=("EXP", "AN1")) -> list[int]:
    """``n`` handmade images ingested (one patient each) and raters registered; their ids."""
    for k in range(n):
        pixels = np.full(SHAPE, 60 + k, np.uint8)  # distinct pixels: distinct images
        write_us(tmp_path / "dicom" / f"{k}.dcm", pixels, patient_id=f"G{k}")
    report = ingest(ws, [tmp_path / "dicom"], workers=0)
    assert report.images_added == n
    for name in raters:
        add_rater(ws, name)
    with ws.session() as s:
        return list(s.scalars(select(Image.id).order_by(Image.id)))


def label(
    ws,
    rater: str,
    image_id: int,
    mask: np.ndarray,
    at: dt.datetime | None = None,
    source: str = "itksnap",
    ref: str | None = None,
) -> int:
    """Store ``mask`` as ``rater``'s next label of the image (at time ``at``, from ``source``
    with ``source_ref`` ``ref``); its id."""
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        stored = store_annotation(
            s, ws.store, s.get_one(Image, image_id), get_rater(s, rater), mask, source, ref,
            protocol,
        )  # fmt: skip
        ann = s.get_one(Annotation, stored.annotation_id)
        if at is not None:
            ann.created_at = at
        return ann.id
