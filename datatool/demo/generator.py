"""A synthetic but plausible demo dataset: anterior-approach sciatic nerve ultrasound exams.

``write_demo_dataset`` writes, deterministically from a seed:

* real DICOM files (Ultrasound Image Storage, single frame, 480 x 640) with fake PHI in the
  header, in a private tag block and burned into the pixels (a banner at the top), a
  ``SequenceOfUltrasoundRegions`` that calibrates the fan, and a mix of transfer syntaxes
  (uncompressed MONOCHROME2, uncompressed RGB, RLE Lossless RGB, JPEG baseline, JPEG 2000
  lossless);
* two raters' ITK-SNAP label maps (2D NIfTI) for every image, in the values of the label
  protocol, with realistic inter-rater disagreement (rater 2 misses the femoral artery in about
  3 % of the images, draws a loose nerve in about 3 % and swaps the adductor magnus and the
  semitendinosus in about 2 %: cases for the review queue of ``datatool qa``);
* a clinical table (``clinical.csv``), the ITK-SNAP label description file and a README.

The images are simulated the way a scanner makes them: tissue reflectivity, attenuation and
specular reflectors are laid out on the polar (beam) grid of a convex probe, complex speckle is
blurred by a point-spread function, the envelope is compressed to grey levels and then
scan-converted into the fan. Acoustic shadowing below the femur and posterior enhancement below
the artery fall out of the attenuation along each beam. The label maps are drawn from the same
shapes on the pixel grid, so they sit on what the image shows.

All PHI is fake; every fake person name and identifier carries :data:`PHI_TOKEN` (the record
numbers are ``MRN`` + 6 digits), so a de-identification test can search for leaks.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from datatool.core.atomic import write_bytes_atomic
from datatool.core.csvcells import csv_writer
from datatool.core.protocol import load_protocol
from datatool.demo.anatomy import _image_anatomy, _side_anatomy
from datatool.demo.bmode import _render_bmode
from datatool.demo.cine import CINE_FRAMES, cine_file, render_cine
from datatool.demo.dicomfile import (
    ENCODINGS,
    INSTITUTION,
    MANUFACTURER,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    _build_dataset,
    _draw_overlays,
    _encode,
)
from datatool.demo.labelmaps import _label_maps
from datatool.demo.patients import MIRRORING_OPERATOR, PHI_TOKEN, _make_patient
from datatool.demo.probe import _FAN_PX, BANNER_ROWS, COLUMNS, ROWS, _rng
from datatool.labels.itksnap.formats import write_segmentation, write_segmentation_volume

__all__ = [
    "BANNER_ROWS",
    "COLUMNS",
    "ENCODINGS",
    "INSTITUTION",
    "MANUFACTURER",
    "PHI_TOKEN",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
    "ROWS",
    "parse_images_per_side",
    "write_demo_dataset",
]


def parse_images_per_side(text: str) -> tuple[int, int]:
    """Parse ``"4"`` or ``"7-8"`` into an inclusive ``(lo, hi)`` range of images per side."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", s)
    if not m:
        raise ValueError(
            f"images per side must be a count like '4' or a range like '7-8', got {text!r}"
        )
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo < 1 or hi < lo:
        raise ValueError(
            f"images per side must satisfy 1 <= lo <= hi, got {text!r} (lo={lo}, hi={hi})"
        )
    return lo, hi


_README = """\
datatool demo dataset (synthetic)
=================================

Synthetic anterior-approach sciatic nerve ultrasound exams (short axis at the lesser
trochanter, convex probe), made by datatool.demo_data from seed {seed}.
ALL patient data here is FAKE: names, record numbers (MRN), birth dates, accession numbers,
physicians, operators and the hospital are invented. Fake identifiers carry the token
"{token}" so that de-identification can be checked for leaks; the same fake PHI is burned
into the top {banner} pixel rows of every image and stored in a private tag block
({group:04X},xx10, creator "{creator}").

dicom/<MRN>/<L|R>_<nn>.dcm            {patients} patients, {images} images (mixed transfer syntaxes)
labels/rater1/<MRN>/<L|R>_<nn>.nii.gz  rater 1's ITK-SNAP label map for that image
labels/rater2/<MRN>/<L|R>_<nn>.nii.gz  rater 2's (independent, with realistic disagreement)
{cine_lines}labels/itksnap_labels.txt              ITK-SNAP label description ({protocol})
clinical.csv                           patient_id,sex,age,bmi,asa
"""


@dataclass
class DemoDataset:
    """What ``write_demo_dataset`` wrote."""

    patients: int
    images: int
    dicom_dir: Path
    labels_dir: Path
    clinical_csv: Path
    encodings: dict[str, int]  # transfer syntax name -> files
    cines: int = 0  # multi-frame loops among the files (their frames count in ``images``)


def write_demo_dataset(
    out_dir: Path,
    patients: int = 10,
    seed: int = 0,
    images_per_side: tuple[int, int] = (4, 4),
    progress: Callable[[int, int], None] | None = None,
    rater_errors: bool = True,
    cines: int = 0,
    cine_frames: int = CINE_FRAMES,
) -> DemoDataset:
    """Write the synthetic demo dataset into ``out_dir`` and return a summary.

    Deterministic: the same arguments give byte-identical files (no clock anywhere). Patient
    ``k``'s identifiers, anatomy, pixels and label maps depend only on ``seed`` and ``k`` (and
    the image counts on ``images_per_side``); the transfer syntax cycles over the whole run.
    Files are written atomically and overwrite an earlier run's; stale files of a larger
    earlier run into the same folder are not removed.

    ``cines`` sides (spread over the patients) also get a cine loop of ``cine_frames`` frames,
    ``<side>_cine.dcm``, with both raters' label maps for every frame as one W x H x N volume
    (as ITK-SNAP saves a cine's segmentation). The stills do not depend on ``cines``.
    """
    out_dir = Path(out_dir)
    if int(patients) < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    lo, hi = (int(images_per_side[0]), int(images_per_side[1]))
    if lo < 1 or hi < lo:
        raise ValueError(f"images_per_side must satisfy 1 <= lo <= hi, got {images_per_side}")
    protocol = load_protocol()
    dicom_dir = out_dir / "dicom"
    labels_dir = out_dir / "labels"

    used: set[str] = set()
    plan = []
    for p in range(int(patients)):
        pt = _make_patient(seed, p, used)
        sides = []
        for s_i, side in enumerate(("L", "R")):
            n = int(_rng(seed, 3, p, s_i).integers(lo, hi + 1))
            sides.append((s_i, side, n))
        plan.append((pt, sides))
    if int(cines) < 0 or int(cines) > 2 * len(plan):
        raise ValueError(f"cines must be between 0 and 2 per patient, got {cines}")
    if int(cines) and int(cine_frames) < 2:
        raise ValueError(f"a cine needs at least 2 frames, got {cine_frames}")
    # the sides with a loop: spread over the patients, alternating left and right
    looped = {((c * len(plan)) // int(cines), c % 2) for c in range(int(cines))} if cines else set()
    total = sum(n for _, sides in plan for _, _, n in sides) + len(looped) * int(cine_frames)
    order = [int(i) for i in _rng(seed, 4).permutation(len(ENCODINGS))]

    encodings: dict[str, int] = {}
    done = stills = 0  # images written; stills among them (the encodings cycle over stills)
    for pt, sides in plan:
        for s_i, side, n in sides:
            srng = _rng(seed, 5, pt.index, s_i)
            base = _side_anatomy(srng, pt)
            sign = 1 if side == "L" else -1
            if pt.operator == MIRRORING_OPERATOR:
                sign = -sign  # this operator's marker points the other way
            series_dt = pt.study_dt + timedelta(
                minutes=1 + 6 * s_i, seconds=int(srng.integers(0, 60))
            )
            when = series_dt
            for k in range(1, n + 1):
                irng = _rng(seed, 6, pt.index, s_i, k)
                when = when + timedelta(seconds=int(irng.integers(4, 25)))
                anat = _image_anatomy(irng, base)
                gain_db = pt.gain + float(irng.normal(0, 0.4))
                grey = _render_bmode(irng, anat, sign, pt.depth_cm, gain_db)
                r1, r2 = _label_maps(
                    _rng(seed, 7, pt.index, s_i, k),
                    anat,
                    sign,
                    pt.depth_cm,
                    protocol,
                    errors=rater_errors,
                )
                kind = ENCODINGS[order[stills % len(ENCODINGS)]][0]
                colour = kind in ("rgb", "rle_rgb")
                pix = _draw_overlays(grey, colour, pt, side, when, pt.depth_cm, gain_db)
                ds = _build_dataset(
                    seed, pt, side, 1 + s_i, k, when, series_dt, pt.depth_cm, gain_db
                )
                _encode(ds, kind, np.ascontiguousarray(pix))
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                rel = Path(pt.mrn) / f"{side}_{k:02d}"
                write_bytes_atomic(dicom_dir / rel.with_suffix(".dcm"), buf.getvalue())
                spacing = (pt.depth_cm / _FAN_PX * 10.0, pt.depth_cm / _FAN_PX * 10.0)
                for rater, lab in (("rater1", r1), ("rater2", r2)):
                    write_segmentation(labels_dir / rater / f"{rel}.nii.gz", lab, spacing)
                ts_name = ds.file_meta.TransferSyntaxUID.name
                encodings[ts_name] = encodings.get(ts_name, 0) + 1
                done += 1
                stills += 1
                if progress is not None:
                    progress(done, total)
            if (pt.index, s_i) in looped:
                loop = render_cine(
                    seed,
                    pt.index,
                    s_i,
                    base,
                    sign,
                    pt.depth_cm,
                    pt.gain,
                    protocol,
                    frames=int(cine_frames),
                    errors=rater_errors,
                )
                when = when + timedelta(seconds=10)
                ds = _build_dataset(
                    seed, pt, side, 1 + s_i, 90, when, series_dt, pt.depth_cm, pt.gain
                )
                rel = Path(pt.mrn) / f"{side}_cine"
                write_bytes_atomic(
                    dicom_dir / rel.with_suffix(".dcm"),
                    cine_file(ds, loop, pt, side, when, pt.depth_cm, pt.gain),
                )
                spacing = (pt.depth_cm / _FAN_PX * 10.0, pt.depth_cm / _FAN_PX * 10.0)
                for rater, labs in (("rater1", loop.rater1), ("rater2", loop.rater2)):
                    write_segmentation_volume(labels_dir / rater / f"{rel}.nii.gz", labs, spacing)
                ts_name = ds.file_meta.TransferSyntaxUID.name
                encodings[ts_name] = encodings.get(ts_name, 0) + 1
                done += int(cine_frames)
                if progress is not None:
                    progress(done, total)

    write_bytes_atomic(
        labels_dir / "itksnap_labels.txt", protocol.itksnap_label_description().encode()
    )
    rows = io.StringIO()
    w = csv_writer(rows, lineterminator="\n")
    w.writerow(["patient_id", "sex", "age", "bmi", "asa"])
    for pt, _ in plan:
        w.writerow([pt.mrn, pt.sex, pt.age, f"{pt.bmi:.1f}", pt.asa])
    clinical = out_dir / "clinical.csv"
    write_bytes_atomic(clinical, rows.getvalue().encode())
    write_bytes_atomic(
        out_dir / "README.txt",
        _README.format(
            seed=seed,
            token=PHI_TOKEN,
            banner=BANNER_ROWS,
            group=PRIVATE_GROUP,
            creator=PRIVATE_CREATOR,
            patients=len(plan),
            images=total,
            protocol=protocol.name,
            cine_lines=(
                f"dicom/<MRN>/<L|R>_cine.dcm             {len(looped)} cine loops of "
                f"{int(cine_frames)} frames (their frames count among the images)\n"
                "labels/raterK/<MRN>/<L|R>_cine.nii.gz  that rater's labels for every frame "
                "(W x H x N)\n"
                if looped
                else ""
            ),
        ).encode(),
    )
    return DemoDataset(
        patients=len(plan),
        images=total,
        dicom_dir=dicom_dir,
        labels_dir=labels_dir,
        clinical_csv=clinical,
        encodings=dict(sorted(encodings.items())),
        cines=len(looped),
    )
