"""The demo's cine loops: the probe sweeps slowly along one side of the thigh while the scanner
records frames, so the anatomy slides and the tissue breathes under the probe from frame to frame.

A loop is one multi-frame DICOM file (Ultrasound Multi-frame Image Storage, uncompressed
MONOCHROME2) with the burned-in banner on every frame, and each rater's label maps for every
frame, saved as ITK-SNAP saves a cine's segmentation: one W x H x N volume.

The motion is smooth and known: :func:`render_cine` returns the frames and both raters' label
maps in memory, for tests and benchmarks that need a loop with its truth.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UltrasoundMultiFrameImageStorage

from datatool.core.protocol import Protocol
from datatool.demo.anatomy import _Anatomy, _image_anatomy
from datatool.demo.bmode import _render_bmode
from datatool.demo.dicomfile import _draw_overlays, _set_pixel_module
from datatool.demo.labelmaps import _label_maps
from datatool.demo.patients import _Patient
from datatool.demo.probe import _rng

CINE_FRAMES = 8  # frames per demo loop
FRAME_TIME_MS = 40.0  # 25 frames per second
_SWEEP_CM = 0.6  # lateral slide of the anatomy over the whole loop
_SINK_CM = 0.12  # depth drift over the loop
_BREATH = 0.015  # relative depth compression, one slow cycle over the loop


@dataclass(frozen=True)
class CineRender:
    """One loop in memory: grey frames (N x H x W, no overlays) and both raters' label maps
    (N x H x W, the protocol's values), frame k at index k."""

    frames: np.ndarray
    rater1: np.ndarray
    rater2: np.ndarray


def _frame_anatomy(still: _Anatomy, t: float) -> _Anatomy:
    """The loop's anatomy at time ``t`` in [0, 1]: the still moved by a smooth sweep."""
    dm = _SWEEP_CM * (t - 0.5)
    dz = _SINK_CM * (t - 0.5)
    press = 1.0 + _BREATH * math.sin(2 * math.pi * t)

    def moved(blob):
        return replace(blob, m=blob.m + dm, z=blob.z * press + dz, b=blob.b * press)

    return _Anatomy(
        fat=still.fat * press,
        blobs={name: moved(b) for name, b in still.blobs.items()},
        fascicles=tuple(moved(b) for b in still.fascicles),
        artery_visible=still.artery_visible,
    )


def render_cine(
    seed: int,
    patient_index: int,
    side_index: int,
    base: dict,
    sign: int,
    depth_cm: float,
    gain_db: float,
    protocol: Protocol,
    frames: int = CINE_FRAMES,
    errors: bool = True,
) -> CineRender:
    """Render one loop of ``frames`` frames of a side whose base anatomy is ``base``.

    The speckle of each frame is drawn afresh (frames 40 ms apart decorrelate in the demo as
    they would under a moving probe), and each rater draws each frame anew (their outlines
    wobble from frame to frame as real raters' do); rater 2's planted errors (``errors``) may
    fall on any frame, as they may on any still."""
    if frames < 1:
        raise ValueError(f"a cine needs at least 1 frame, got {frames}")
    still = _image_anatomy(_rng(seed, 20, patient_index, side_index), base)
    greys, r1s, r2s = [], [], []
    for k in range(frames):
        t = k / (frames - 1) if frames > 1 else 0.5
        anat = _frame_anatomy(still, t)
        greys.append(
            _render_bmode(
                _rng(seed, 21, patient_index, side_index, k), anat, sign, depth_cm, gain_db
            )
        )
        r1, r2 = _label_maps(
            _rng(seed, 22, patient_index, side_index, k),
            anat,
            sign,
            depth_cm,
            protocol,
            errors=errors,
        )
        r1s.append(r1)
        r2s.append(r2)
    return CineRender(frames=np.stack(greys), rater1=np.stack(r1s), rater2=np.stack(r2s))


def cine_file(
    ds: Dataset,
    render: CineRender,
    pt: _Patient,
    side: str,
    when: datetime,
    depth_cm: float,
    gain_db: float,
) -> bytes:
    """The DICOM file of a loop: ``ds`` (a still's dataset from the demo's builder, with the
    patient, study, series and calibration) made multi-frame, every frame with its banner."""
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    n = int(render.frames.shape[0])
    pixels = np.stack(
        [
            _draw_overlays(
                render.frames[k],
                False,
                pt,
                side,
                when + timedelta(milliseconds=FRAME_TIME_MS * k),
                depth_cm,
                gain_db,
            )
            for k in range(n)
        ]
    )
    _set_pixel_module(ds, 1)
    ds.NumberOfFrames = n
    ds.FrameTime = f"{FRAME_TIME_MS:.1f}"
    ds.CineRate = round(1000.0 / FRAME_TIME_MS)
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
