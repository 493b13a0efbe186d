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
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)
from scipy import ndimage

from datatool.core.atomic import write_bytes_atomic
from datatool.core.csvcells import csv_writer
from datatool.core.protocol import Protocol, load_protocol
from datatool.labels.itksnap.formats import write_segmentation

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

# --------------------------------------------------------------------------------------------
# Constants

#: Carried by every fake person name and identifier (names, accession number, station).
PHI_TOKEN = "PHIDEMO"
INSTITUTION = "Demo General Hospital"
MANUFACTURER = "datatool-demo"
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "DEMO_VENDOR"

ROWS, COLUMNS = 480, 640
BANNER_ROWS = 40  # rows 0..39 hold the burned-in patient banner

# Convex-probe geometry in pixels (fixed: one scanner preset). The apex lies above the image.
_CX = 320.0  # apex column (the fan's centre line)
_APEX_Y = -135.0  # apex row
_R0 = 200.0  # radius of the probe face (skin line) from the apex
_FAN_PX = 406  # imaging depth in pixels along the centre line: PhysicalDelta = depth / this
_R1 = _R0 + _FAN_PX
_THETA = 0.42  # half opening angle (rad), about 24 degrees
_Y_SKIN = _APEX_Y + _R0  # row of the skin line on the centre line (depth 0)
_NR = _FAN_PX + 1  # samples along a beam
_NT = 256  # beams (scan lines)
_DT = 2 * _THETA / (_NT - 1)

#: The transfer syntaxes written, in the order they are cycled through (from a seeded start).
ENCODINGS: tuple[tuple[str, str], ...] = (
    ("mono", str(ExplicitVRLittleEndian)),
    ("rgb", str(ExplicitVRLittleEndian)),
    ("rle_rgb", str(RLELossless)),
    ("jpeg", str(JPEGBaseline8Bit)),
    ("j2k", str(JPEG2000Lossless)),
)

# Drawing order of the labelled structures (later ones on top), keyed by protocol name.
_PAINT_ORDER = ("adductor magnus", "semitendinosus", "femur", "sciatic nerve", "femoral artery")


# --------------------------------------------------------------------------------------------
# Small helpers


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


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % (1 << 64), *[int(k) for k in keys]])


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the bitmap default font
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# Geometry caches


@dataclass(frozen=True)
class _Geometry:
    fan: np.ndarray  # bool (ROWS, COLUMNS)
    fan_idx: np.ndarray  # flat indices of fan pixels
    fan_coords: np.ndarray  # (2, n) polar (i, j) sample coordinates of the fan pixels
    xc: np.ndarray  # (COLUMNS,) pixel column - apex column
    zc: np.ndarray  # (ROWS,) pixel row - skin row
    px: np.ndarray  # (NR, NT) polar samples: lateral pixel offset from the centre line
    pz: np.ndarray  # (NR, NT) polar samples: pixel depth below the skin row
    region: tuple[int, int, int, int]  # min x0, min y0, max x1, max y1 of the fan


@lru_cache(maxsize=1)
def _geometry() -> _Geometry:
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float64)
    dx, dy = xx - _CX, yy - _APEX_Y
    r = np.hypot(dx, dy)
    th = np.arctan2(dx, dy)
    fan = (r >= _R0) & (r <= _R1) & (np.abs(th) <= _THETA)
    idx = np.flatnonzero(fan)
    coords = np.stack([(r.ravel()[idx] - _R0), (th.ravel()[idx] + _THETA) / _DT]).astype(np.float32)
    ys, xs = np.nonzero(fan)
    rr = _R0 + np.arange(_NR, dtype=np.float64)[:, None]
    tt = -_THETA + _DT * np.arange(_NT, dtype=np.float64)[None, :]
    px = (rr * np.sin(tt)).astype(np.float32)
    pz = (rr * np.cos(tt) + _APEX_Y - _Y_SKIN).astype(np.float32)
    region = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    assert region[1] >= BANNER_ROWS
    return _Geometry(
        fan,
        idx,
        coords,
        (np.arange(COLUMNS) - _CX).astype(np.float32),
        (np.arange(ROWS) - _Y_SKIN).astype(np.float32),
        px,
        pz,
        region,
    )


# --------------------------------------------------------------------------------------------
# Shapes


_LUT_N = 2048  # angular resolution of a blob's tabulated boundary


@dataclass(frozen=True)
class _Blob:
    """A star-shaped blob: an ellipse with a harmonic boundary perturbation.

    Coordinates are in pixels in the canonical frame: ``m`` lateral offset from the centre line
    (positive = medial), ``z`` depth below the skin row. ``rot`` in radians.
    """

    m: float
    z: float
    a: float
    b: float
    rot: float = 0.0
    harm: tuple[tuple[int, float, float], ...] = ()

    def reach(self) -> float:
        return max(self.a, self.b) * (1.0 + sum(abs(h[1]) for h in self.harm)) + 1.0

    def q(self, X: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Normalised radius: <= 1 inside the blob."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        dx, dz = X - np.float32(self.m), Z - np.float32(self.z)
        u = dx * np.float32(c / self.a) + dz * np.float32(s / self.a)
        v = dz * np.float32(c / self.b) - dx * np.float32(s / self.b)
        rr = np.hypot(u, v)
        if self.harm:
            # The boundary factor is a function of the angle only: tabulate it.
            idx = (np.arctan2(v, u) + np.float32(math.pi)) * np.float32(_LUT_N / (2 * math.pi))
            rr /= self._lut()[np.minimum(idx.astype(np.intp), _LUT_N)]
        return rr

    def _lut(self) -> np.ndarray:
        phi = np.linspace(-math.pi, math.pi, _LUT_N + 1)
        f = np.ones_like(phi)
        for k, amp, ph in self.harm:
            f += amp * np.cos(k * phi + ph)
        return np.maximum(f, 0.2).astype(np.float32)

    def scaled(self, k: float) -> _Blob:
        return replace(self, m=self.m * k, z=self.z * k, a=self.a * k, b=self.b * k)


def _cart_box(blob: _Blob, sign: int):
    """Slices of the pixel grid covering ``blob`` and its canonical coordinates there."""
    g = _geometry()
    rch = blob.reach()
    xc = _CX + sign * blob.m
    yc = _Y_SKIN + blob.z
    x0, x1 = max(0, int(xc - rch)), min(COLUMNS, int(xc + rch) + 2)
    y0, y1 = max(0, int(yc - rch)), min(ROWS, int(yc + rch) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    X = (sign * g.xc[x0:x1])[None, :]
    Z = g.zc[y0:y1][:, None]
    return (slice(y0, y1), slice(x0, x1)), X, Z


def _polar_box(blob: _Blob, sign: int):
    """Slices of the polar (beam) grid covering ``blob`` and canonical coordinates there."""
    g = _geometry()
    rch = blob.reach()
    dx, dy = sign * blob.m, blob.z + _R0
    d = math.hypot(dx, dy)
    al = math.atan2(dx, dy)
    i0 = max(0, int(d - rch - _R0))
    i1 = min(_NR, int(d + rch - _R0) + 2)
    half = math.asin(min(1.0, rch / max(d, 1e-6)))
    j0 = max(0, int((al - half + _THETA) / _DT))
    j1 = min(_NT, int((al + half + _THETA) / _DT) + 2)
    if i0 >= i1 or j0 >= j1:
        return None
    sl = (slice(i0, i1), slice(j0, j1))
    return sl, sign * g.px[sl], g.pz[sl]


def _harmonics(rng: np.random.Generator, kmax: int, amp: float, kmin: int = 2):
    out = []
    for k in range(kmin, kmax + 1):
        out.append((k, float(rng.normal(0.0, amp / k**0.8)), float(rng.uniform(0, 2 * math.pi))))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Patients, sides, anatomy


@dataclass(frozen=True)
class _Patient:
    index: int
    mrn: str
    name: str
    sex: str
    age: int
    birth_date: date
    bmi: float
    height_m: float
    weight_kg: float
    asa: int
    study_dt: datetime
    accession: str
    referrer: str
    operator: str
    station: str
    depth_cm: float
    fat_cm: float
    gain: float


_GIVEN_F = ("Alice", "Berit", "Clara", "Dana", "Eva", "Frida", "Greta", "Hanna", "Ines", "Jana")
_GIVEN_M = ("Anton", "Bruno", "Carl", "David", "Emil", "Felix", "Gustav", "Hugo", "Ivan", "Jonas")


def _make_patient(seed: int, index: int, used_mrns: set[str]) -> _Patient:
    rng = _rng(seed, 1, index)
    mrn = f"MRN{int(rng.integers(100000, 1000000)):06d}"
    bump = 0
    while mrn in used_mrns:  # deterministic, prefix-stable collision resolution
        bump += 1
        mrn = f"MRN{int(_rng(seed, 2, index, bump).integers(100000, 1000000)):06d}"
    used_mrns.add(mrn)
    # The reference study's cohort: 56 % female, age 18-69 (47.2 +- 16.8), BMI 18.5-25.9
    # (BMI >= 26 was an exclusion criterion), ASA I-III.
    sex = "F" if rng.random() < 0.56 else "M"
    age = int(np.clip(round(rng.normal(47.2, 16.8)), 18, 69))
    bmi = round(float(np.clip(rng.normal(22.5, 1.9), 18.5, 25.9)), 1)
    height = float(np.clip(rng.normal(1.64 if sex == "F" else 1.78, 0.07), 1.45, 2.05))
    weight = bmi * height * height
    score = (age - 45) / 20 + (bmi - 22) / 3 + rng.normal(0, 0.8)
    asa = 1 if score < -0.6 else (2 if score < 1.0 else 3)
    day = date(2025, 1, 2) + timedelta(days=int(rng.integers(0, 360)))
    minute = int(rng.integers(7 * 60 + 30, 17 * 60 + 30))
    study_dt = datetime(
        day.year, day.month, day.day, minute // 60, minute % 60, int(rng.integers(0, 60))
    )
    # Birth date consistent with the age on the study date.
    birth = date(day.year - age, day.month, day.day) - timedelta(days=int(rng.integers(0, 365)))
    fat = float(
        np.clip(
            0.7 + 0.1 * (bmi - 20) + (0.3 if sex == "F" else 0.0) + rng.normal(0, 0.3), 0.5, 4.0
        )
    )
    nerve_depth = fat + 4.3  # the sides' anatomy varies around this
    depth = float(np.clip(round(nerve_depth + rng.uniform(2.0, 5.0), 1), 7.2, 13.0))
    given = (_GIVEN_F if sex == "F" else _GIVEN_M)[int(rng.integers(0, 10))]
    return _Patient(
        index=index,
        mrn=mrn,
        name=f"{PHI_TOKEN}^Patient{index + 1:04d}^{given}",
        sex=sex,
        age=age,
        birth_date=birth,
        bmi=bmi,
        height_m=height,
        weight_kg=weight,
        asa=asa,
        study_dt=study_dt,
        accession=f"{PHI_TOKEN}{int(rng.integers(0, 10**8)):08d}",
        referrer=f"{PHI_TOKEN}REF^Doctor{int(rng.integers(1, 40)):02d}",
        operator=f"{PHI_TOKEN}OP^Sono{int(rng.integers(1, 25)):02d}",
        station=f"{PHI_TOKEN}US{int(rng.integers(1, 9)):02d}",
        depth_cm=depth,
        fat_cm=fat,
        gain=float(rng.uniform(-2.0, 2.0)),
    )


@dataclass(frozen=True)
class _Anatomy:
    """One image's anatomy in centimetres (canonical frame, positive m = medial)."""

    fat: float
    blobs: dict  # name -> _Blob (cm); labelled structures and unlabelled helpers
    fascicles: tuple  # blobs (cm) inside the nerve
    artery_visible: bool


def _side_anatomy(rng: np.random.Generator, pt: _Patient) -> dict:
    """Base anatomy of one side of one patient (cm)."""
    fat = pt.fat_cm * rng.uniform(0.93, 1.07)
    nz = fat + 4.3 + rng.normal(0, 0.35)
    nerve = _Blob(
        m=rng.uniform(0.2, 0.9),
        z=nz,
        a=rng.uniform(0.6, 0.95),
        b=rng.uniform(0.26, 0.42),
        rot=rng.normal(0, 0.25),
        harm=_harmonics(rng, 5, 0.06),
    )
    fem_a, fem_b = rng.uniform(1.0, 1.3), rng.uniform(0.8, 1.0)
    fem_top = nz - rng.uniform(1.3, 1.9)
    fem_m = min(-rng.uniform(1.4, 2.1), nerve.m - nerve.a - fem_a - 0.15)
    femur = _Blob(
        m=fem_m,
        z=fem_top + fem_b,
        a=fem_a,
        b=fem_b,
        rot=rng.normal(0, 0.12),
        harm=_harmonics(rng, 4, 0.04),
    )
    art_r = rng.uniform(0.3, 0.42)
    art = _Blob(
        m=rng.uniform(1.2, 2.2),
        z=fat + rng.uniform(1.2, 1.9),
        a=art_r,
        b=art_r * rng.uniform(0.9, 1.0),
        rot=rng.uniform(0, math.pi),
        harm=_harmonics(rng, 3, 0.015),
    )
    vein = _Blob(
        m=art.m + rng.uniform(0.65, 0.9),
        z=art.z + rng.uniform(0.1, 0.35),
        a=rng.uniform(0.4, 0.6),
        b=rng.uniform(0.18, 0.3),
        rot=rng.normal(0, 0.2),
        harm=_harmonics(rng, 4, 0.05),
    )
    am_top = art.z + art_r + rng.uniform(0.25, 0.5)
    am_bot = nz - rng.uniform(0.1, 0.25)
    am_b = max(0.5, (am_bot - am_top) / 2)
    am = _Blob(
        m=rng.uniform(1.0, 1.8),
        z=am_bot - am_b,
        a=rng.uniform(2.2, 2.8),
        b=am_b,
        rot=rng.normal(0.08, 0.08),
        harm=_harmonics(rng, 6, 0.08),
    )
    st_b = rng.uniform(0.9, 1.2)
    st = _Blob(
        m=rng.uniform(1.2, 2.2),
        z=nz + rng.uniform(0.15, 0.3) + st_b,
        a=rng.uniform(1.6, 2.2),
        b=st_b,
        rot=rng.normal(-0.1, 0.1),
        harm=_harmonics(rng, 6, 0.08),
    )
    bf = _Blob(
        m=rng.uniform(-1.2, -0.4),
        z=nz + rng.uniform(1.0, 1.5),
        a=rng.uniform(1.4, 1.9),
        b=rng.uniform(0.9, 1.2),
        rot=rng.normal(0.1, 0.1),
        harm=_harmonics(rng, 5, 0.08),
    )
    sart = _Blob(
        m=art.m - rng.uniform(0.3, 0.8),
        z=fat + rng.uniform(0.7, 1.0),
        a=rng.uniform(1.5, 2.0),
        b=rng.uniform(0.5, 0.7),
        rot=rng.normal(0.15, 0.1),
        harm=_harmonics(rng, 5, 0.06),
    )
    return {
        "fat": fat,
        "adductor magnus": am,
        "semitendinosus": st,
        "femur": femur,
        "sciatic nerve": nerve,
        "femoral artery": art,
        "_vein": vein,
        "_biceps": bf,
        "_sartorius": sart,
    }


def _image_anatomy(rng: np.random.Generator, base: dict) -> _Anatomy:
    """Per-image variation of a side's anatomy: the probe slides, tilts and presses."""
    shift_m = rng.normal(0, 0.25)
    shift_z = rng.normal(0, 0.12)
    tilt = rng.normal(0, 0.05)  # rad, about the skin point on the centre line
    press = rng.uniform(0.96, 1.03)  # compression: depth scale
    ct, st = math.cos(tilt), math.sin(tilt)
    blobs = {}
    for name, b in base.items():
        if name == "fat":
            continue
        m, z = b.m + shift_m, b.z * press + shift_z
        m, z = m * ct - z * st, m * st + z * ct
        m += rng.normal(0, 0.08)
        z += rng.normal(0, 0.06)
        size = rng.uniform(0.94, 1.06)
        harm = tuple((k, a * rng.uniform(0.7, 1.3), p + rng.normal(0, 0.3)) for k, a, p in b.harm)
        blobs[name] = replace(
            b,
            m=m,
            z=z,
            a=b.a * size * rng.uniform(0.96, 1.04),
            b=b.b * size * press * rng.uniform(0.96, 1.04),
            rot=b.rot + tilt + rng.normal(0, 0.06),
            harm=harm,
        )
    nerve = blobs["sciatic nerve"]
    fasc = []
    for _ in range(int(rng.integers(5, 10))):
        for _try in range(8):
            u, v = rng.uniform(-0.72, 0.72), rng.uniform(-0.6, 0.6)
            if u * u + v * v < 0.5:
                break
        c, s = math.cos(nerve.rot), math.sin(nerve.rot)
        du, dv = u * nerve.a, v * nerve.b
        r = nerve.b * rng.uniform(0.2, 0.36)
        fasc.append(
            _Blob(
                m=nerve.m + du * c - dv * s,
                z=nerve.z + du * s + dv * c,
                a=r,
                b=r * rng.uniform(0.6, 1.0),
                rot=rng.uniform(0, math.pi),
            )
        )
    return _Anatomy(
        fat=base["fat"] * press,
        blobs=blobs,
        fascicles=tuple(fasc),
        artery_visible=bool(rng.random() >= 0.05),
    )


# --------------------------------------------------------------------------------------------
# B-mode simulation (on the polar grid, then scan-converted)


_PSF = (1.4, 2.0)  # point-spread function (axial samples, lateral beams)
_WHITE, _COMPRESS = 1.6, 0.6  # envelope shown white; power-law compression


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return n / (n.std() + 1e-6)


def _render_bmode(
    rng: np.random.Generator, anat: _Anatomy, sign: int, depth_cm: float, gain_db: float
) -> np.ndarray:
    """The grey-level B-mode image (uint8, ROWS x COLUMNS), black outside the fan."""
    g = _geometry()
    cm = _FAN_PX / depth_cm  # pixels per cm
    shape = (_NR, _NT)
    depth_i = np.arange(_NR, dtype=np.float32)[:, None]
    # Tissue reflectivity (power), excess attenuation (nepers/sample), specular amplitude.
    att = np.zeros(shape, np.float32)
    spec = np.zeros(shape, np.float32)
    patch = np.clip(0.55 + 0.45 * _smooth_noise(rng, shape, (5, 9)), 0.0, 1.3)

    # Muscle in short axis: a mottled hypoechoic base with short bright streaks
    # (fibro-adipose septa), elongated across the beam.
    fine = _smooth_noise(rng, shape, (0.9, 3.2))
    coarse = _smooth_noise(rng, shape, (14, 10))
    refl = 0.3 * np.exp(0.3 * coarse) + 1.4 * np.clip(fine - 1.1, 0, None) ** 1.5
    refl = refl.astype(np.float32)

    # Subcutaneous fat: hypoechoic lobules with bright septa, a bright dermis band on top.
    und = ndimage.gaussian_filter1d(rng.standard_normal(_NT), 14)
    und = und / (np.abs(und).max() + 1e-6) * 0.12 * cm
    fat_i = anat.fat * cm + und[None, :].astype(np.float32)
    lob = _smooth_noise(rng, shape, (3.5, 4.5))
    in_fat = depth_i < fat_i
    refl = np.where(in_fat, 0.07 + 0.8 * np.exp(-((lob / 0.2) ** 2)), refl).astype(np.float32)
    att -= np.where(in_fat, 0.0006, 0.0).astype(np.float32)
    skin = max(3, int(0.2 * cm))
    refl[:skin] = 1.2
    spec[:2] += 1.2
    spec += (1.5 * np.exp(-(((depth_i - fat_i) / 1.3) ** 2)) * (0.4 + 0.6 * patch)).astype(
        np.float32
    )

    b = {k: v.scaled(cm) for k, v in anat.blobs.items()}

    def region(blob: _Blob, fn):
        box = _polar_box(blob, sign)
        if box is not None:
            sl, X, Z = box
            fn(sl, blob.q(X, Z), Z, blob)

    def interface(sl, q, Z, blob, amp, width_px=1.3, top_only=False):
        """Specular interface along a blob's outline, strongest where it faces the beam."""
        r_mean = 0.5 * (blob.a + blob.b)
        band = np.exp(-((((q - 1.0) * r_mean) / width_px) ** 2))
        t = np.clip((Z - blob.z) / (blob.b * np.maximum(q, 0.3)), -1.0, 1.0)
        orient = 0.2 + 0.8 * t * t
        if top_only:
            orient = orient * (t < 0.15)
        spec[sl] += amp * band * orient * patch[sl]

    def muscle(level, fascia):
        def fn(sl, q, Z, blob):
            refl[sl] = np.where(q <= 1.0, refl[sl] * level, refl[sl])
            interface(sl, q, Z, blob, fascia)

        return fn

    region(b["_sartorius"], muscle(1.05, 2.0))
    region(b["_biceps"], muscle(0.95, 1.8))
    region(b["adductor magnus"], muscle(1.0, 2.4))
    region(b["semitendinosus"], muscle(0.85, 2.2))

    def femur_fn(sl, q, Z, blob):
        inside = q <= 1.0
        t = np.clip((Z - blob.z) / (blob.b * np.maximum(q, 0.3)), -1.0, 1.0)
        up = np.clip(1.6 * (-t - 0.05), 0.0, 1.0) ** 0.6
        r_mean = 0.5 * (blob.a + blob.b)
        band = np.exp(-((((q - 0.985) * r_mean) / 1.6) ** 2)) * up
        spec[sl] += 7.0 * band * (0.7 + 0.3 * patch[sl])
        refl[sl] = np.where(inside, 0.2, refl[sl]) + 3.0 * band
        att[sl] += np.where(inside, 0.3 * np.clip(1.2 - q, 0.0, 1.0) + 0.05, 0.0).astype(np.float32)

    region(b["femur"], femur_fn)

    def vessel(lumen_att, wall):
        def fn(sl, q, Z, blob):
            inside = q <= 0.95
            refl[sl] = np.where(inside, 0.0015, refl[sl])
            att[sl] += np.where(inside, lumen_att, 0.0).astype(np.float32)
            interface(sl, q, Z, blob, wall, 1.2)

        return fn

    region(b["_vein"], vessel(-0.014, 0.5))
    if anat.artery_visible:
        region(b["femoral artery"], vessel(-0.025, 2.4))

    def nerve_fn(sl, q, Z, blob):
        refl[sl] = np.where(q <= 1.0, 3.2 * (0.8 + 0.2 * patch[sl]), refl[sl])
        interface(sl, q, Z, blob, 1.6, 1.6)

    region(b["sciatic nerve"], nerve_fn)

    def fasc_fn(sl, q, Z, blob):
        refl[sl] = np.where(q <= 1.0, refl[sl] * 0.2, refl[sl])

    for f in anat.fascicles:
        region(f.scaled(cm), fasc_fn)

    # Transmission along each beam (shadowing / enhancement), depth gain (TGC look).
    trans = np.exp(-np.cumsum(att, axis=0))
    d_cm = depth_i / cm
    focus = depth_cm * 0.6
    gain = 10 ** (
        (
            gain_db
            - 1.2 * d_cm
            + 2.0 * np.exp(-(((d_cm - focus) / 1.5) ** 2))
            + 3.0 * np.exp(-d_cm / 0.5)
        )
        / 20
    )
    amp = (trans * gain).astype(np.float32)
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n2 = rng.standard_normal(shape, dtype=np.float32)
    sr = np.sqrt(np.maximum(refl, 0.0)) * amp
    psf = _PSF
    re_ = ndimage.gaussian_filter(n1 * sr + spec * amp, psf)
    im_ = ndimage.gaussian_filter(n2 * sr, psf)
    env = np.hypot(re_, im_) + 0.006 * np.abs(rng.standard_normal(shape, dtype=np.float32))
    # Amplitude compression to grey levels.
    disp = np.clip((env / _WHITE) ** _COMPRESS, 0.0, 1.0) * 255.0
    # Scan conversion into the fan, slight blur.
    out = np.zeros(ROWS * COLUMNS, np.float32)
    out[g.fan_idx] = ndimage.map_coordinates(
        disp.astype(np.float32), g.fan_coords, order=1, mode="nearest", prefilter=False
    )
    out = ndimage.gaussian_filter(out.reshape(ROWS, COLUMNS), 0.6)
    out[~g.fan] = 0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Label maps


def _rater_blob(
    rng: np.random.Generator, blob: _Blob, dilate_px: float, shift_px: float, noise_px: float
) -> _Blob:
    ang = rng.uniform(0, 2 * math.pi)
    sh = rng.uniform(0, shift_px)
    r_mean = max(2.0, (blob.a + blob.b) / 2)
    harm = list(blob.harm)
    for k in range(2, 9):
        harm.append(
            (
                k,
                float(rng.normal(0, noise_px / r_mean / k**0.5)),
                float(rng.uniform(0, 2 * math.pi)),
            )
        )
    return replace(
        blob,
        m=blob.m + sh * math.cos(ang),
        z=blob.z + sh * math.sin(ang),
        a=max(2.0, blob.a + dilate_px),
        b=max(1.5, blob.b + dilate_px),
        harm=tuple(harm),
    )


def _label_maps(
    rng: np.random.Generator, anat: _Anatomy, sign: int, depth_cm: float, protocol: Protocol
) -> tuple[np.ndarray, np.ndarray]:
    """Rater 1's and rater 2's label maps (uint8 ROWS x COLUMNS)."""
    g = _geometry()
    cm = _FAN_PX / depth_cm
    maps = []
    miss_artery = rng.random() < 0.03
    odd_nerve = rng.random() < 0.03
    for rater in (1, 2):
        lab = np.zeros((ROWS, COLUMNS), np.uint8)
        for name in _PAINT_ORDER:
            if name == "femoral artery" and (
                not anat.artery_visible or (rater == 2 and miss_artery)
            ):
                continue
            value = protocol.by_label(name).value
            blob = anat.blobs[name].scaled(cm)
            if rater == 1:
                rb = _rater_blob(rng, blob, rng.uniform(-0.4, 0.4), 0.6, 0.35)
            elif name == "sciatic nerve" and odd_nerve:
                rb = _rater_blob(
                    rng,
                    replace(blob, rot=blob.rot + rng.normal(0, 0.2)),
                    rng.uniform(3.0, 6.0),
                    3.0,
                    2.5,
                )
            else:
                d = rng.uniform(1.0, 4.0) * (1 if rng.random() < 0.6 else -1)
                small = name in ("sciatic nerve", "femoral artery")
                rb = _rater_blob(rng, blob, d * (0.7 if small else 1.0), 3.0, 1.2 if small else 2.4)
            box = _cart_box(rb, sign)
            if box is None:
                continue
            sl, X, Z = box
            inside = (rb.q(X, Z) <= 1.0) & g.fan[sl]
            lab[sl][inside] = value
        maps.append(lab)
    # Rater 2 now and then swaps the adductor magnus and the semitendinosus (seen in practice).
    # Drawn last, so the maps of every other image stay as they were.
    if rng.random() < 0.02:
        am, st = (
            protocol.by_label("adductor magnus").value,
            protocol.by_label("semitendinosus").value,
        )
        was_am = maps[1] == am
        maps[1][maps[1] == st] = am
        maps[1][was_am] = st
    return maps[0], maps[1]


# --------------------------------------------------------------------------------------------
# Overlays (banner, vendor text, scale) and DICOM


def _draw_overlays(
    grey: np.ndarray,
    colour: bool,
    pt: _Patient,
    side: str,
    when: datetime,
    depth_cm: float,
    gain_db: float,
) -> np.ndarray:
    g = _geometry()
    if colour:
        img = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")

        def c(rgb, _lvl):
            return rgb
    else:
        img = Image.fromarray(grey, "L")

        def c(_rgb, lvl):
            return lvl

    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, COLUMNS - 1, BANNER_ROWS - 1), fill=c((18, 22, 40), 20))
    big, small = _font(14), _font(11)
    d.text(
        (6, 3), f"{pt.name.replace('^', ' ')}   ID: {pt.mrn}", font=big, fill=c((255, 230, 80), 235)
    )
    d.text((440, 3), when.strftime("%d.%m.%Y %H:%M:%S"), font=big, fill=c((255, 230, 80), 235))
    d.text(
        (6, 21),
        f"{INSTITUTION}   Sciatic ant {side}   Acc {pt.accession}",
        font=small,
        fill=c((120, 220, 255), 200),
    )
    d.text((500, 21), "MI 1.1  TIs 0.4", font=small, fill=c((120, 220, 255), 200))
    # Left vendor column (outside the fan's bounding box).
    _x0, _y0, x1, _y1 = g.region
    lines = [
        "C5-2",
        "MSK",
        "Nerve",
        f"{3.5:.1f}MHz",
        f"Gn {52 + round(gain_db * 2)}",
        "DR 52",
        "FR 24",
        f"D{depth_cm:.1f}cm",
    ]
    for k, t in enumerate(lines):
        d.text((4, 62 + 16 * k), t, font=small, fill=c((230, 230, 230), 210))
    # Orientation marker.
    d.ellipse((54, 50, 62, 58), fill=c((90, 200, 255), 220))
    # Grey bar.
    for k in range(120):
        v = int(255 * k / 119)
        d.line((14, 460 - k, 26, 460 - k), fill=(v, v, v) if colour else v)
    # Depth scale on the right (1 cm ticks) and focus marker.
    cm = _FAN_PX / depth_cm
    xs = x1 + 6
    for k in range(int(depth_cm) + 1):
        y = _Y_SKIN + k * cm
        d.line((xs, y, xs + (8 if k % 5 == 0 else 4), y), fill=c((220, 220, 220), 200))
        if k % 2 == 0 and k > 0:
            d.text((xs + 12, y - 6), str(k), font=small, fill=c((220, 220, 220), 200))
    fy = _Y_SKIN + depth_cm * 0.6 * cm
    d.polygon([(xs + 20, fy), (xs + 28, fy - 5), (xs + 28, fy + 5)], fill=c((255, 200, 0), 220))
    return np.asarray(img)


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(
        prefix=PYDICOM_ROOT_UID, entropy_srcs=[f"demo-{seed}", *[str(p) for p in parts]]
    )


def _build_dataset(
    seed: int,
    pt: _Patient,
    side: str,
    series_no: int,
    inst: int,
    when: datetime,
    series_dt: datetime,
    depth_cm: float,
    gain_db: float,
) -> Dataset:
    g = _geometry()
    sop_uid = _uid(seed, "image", pt.index, side, inst)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DATATOOL_DEMO"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop_uid
    day = pt.study_dt.strftime("%Y%m%d")
    ds.StudyDate = day
    ds.SeriesDate = day
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = pt.study_dt.strftime("%H%M%S")
    ds.SeriesTime = series_dt.strftime("%H%M%S")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = pt.accession
    ds.Modality = "US"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = pt.referrer
    ds.StationName = pt.station
    ds.StudyDescription = "US regional anaesthesia"
    ds.SeriesDescription = f"Sciatic ant {side}"
    ds.OperatorsName = pt.operator
    ds.ManufacturerModelName = "Demo Sono 1"
    ds.PatientName = pt.name
    ds.PatientID = pt.mrn
    ds.PatientBirthDate = pt.birth_date.strftime("%Y%m%d")
    ds.PatientSex = pt.sex
    ds.PatientAge = f"{pt.age:03d}Y"
    ds.PatientSize = f"{pt.height_m:.2f}"
    ds.PatientWeight = f"{pt.weight_kg:.1f}"
    ds.BodyPartExamined = "LEG"
    ds.TransducerData = ["C5-2", "", ""]
    ds.StudyInstanceUID = _uid(seed, "study", pt.index)
    ds.SeriesInstanceUID = _uid(seed, "series", pt.index, side)
    ds.StudyID = f"{pt.index + 1}"
    ds.SeriesNumber = series_no
    ds.InstanceNumber = inst
    ds.Laterality = side
    ds.ImageLaterality = side
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    x0, y0, x1, y1 = g.region
    delta = depth_cm / _FAN_PX
    reg = Dataset()
    reg.RegionSpatialFormat = 1
    reg.RegionDataType = 1
    reg.RegionFlags = 0
    reg.RegionLocationMinX0 = x0
    reg.RegionLocationMinY0 = y0
    reg.RegionLocationMaxX1 = x1
    reg.RegionLocationMaxY1 = y1
    reg.PhysicalUnitsXDirection = 3
    reg.PhysicalUnitsYDirection = 3
    reg.ReferencePixelX0 = round(_CX) - x0  # skin line on the centre line: (0 cm, 0 cm)
    reg.ReferencePixelY0 = round(_Y_SKIN) - y0
    reg.ReferencePixelPhysicalValueX = 0.0
    reg.ReferencePixelPhysicalValueY = 0.0
    reg.PhysicalDeltaX = delta
    reg.PhysicalDeltaY = delta
    reg.TransducerFrequency = 3500
    ds.SequenceOfUltrasoundRegions = Sequence([reg])
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", f"{pt.name} {pt.mrn}")
    block.add_new(0x11, "LO", f"gain {gain_db:+.1f} dB")
    return ds


def _set_pixel_module(ds: Dataset, samples: int) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def _encode(ds: Dataset, kind: str, pixels: np.ndarray) -> None:
    """Pixel data in the encoding ``kind`` (gray for mono kinds, RGB for the colour ones)."""
    if kind == "mono":
        _set_pixel_module(ds, 1)
        ds.PixelData = pixels.tobytes()
    elif kind == "rgb":
        _set_pixel_module(ds, 3)
        ds.PixelData = pixels.tobytes()
    elif kind == "rle_rgb":
        _set_pixel_module(ds, 3)
        ds.compress(RLELossless, pixels, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    elif kind == "j2k":
        _set_pixel_module(ds, 1)
        ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
    elif kind == "jpeg":
        _set_pixel_module(ds, 1)
        buf = io.BytesIO()
        Image.fromarray(pixels, "L").save(buf, format="JPEG", quality=92, optimize=False)
        frame = buf.getvalue()
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{pixels.size / len(frame):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:  # pragma: no cover
        raise ValueError(kind)


@lru_cache(maxsize=1)
def _rle_plugin() -> str:
    from pydicom.pixels.encoders import RLELosslessEncoder

    plugins = RLELosslessEncoder.available_plugins
    return "pylibjpeg" if "pylibjpeg" in plugins else "pydicom"


# --------------------------------------------------------------------------------------------
# Public entry point


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
labels/itksnap_labels.txt              ITK-SNAP label description ({protocol})
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


def write_demo_dataset(
    out_dir: Path,
    patients: int = 10,
    seed: int = 0,
    images_per_side: tuple[int, int] = (4, 4),
    progress: Callable[[int, int], None] | None = None,
) -> DemoDataset:
    """Write the synthetic demo dataset into ``out_dir`` and return a summary.

    Deterministic: the same arguments give byte-identical files (no clock anywhere). Patient
    ``k``'s identifiers, anatomy, pixels and label maps depend only on ``seed`` and ``k`` (and
    the image counts on ``images_per_side``); the transfer syntax cycles over the whole run.
    Files are written atomically and overwrite an earlier run's; stale files of a larger
    earlier run into the same folder are not removed.
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
    total = sum(n for _, sides in plan for _, _, n in sides)
    order = [int(i) for i in _rng(seed, 4).permutation(len(ENCODINGS))]

    encodings: dict[str, int] = {}
    done = 0
    for pt, sides in plan:
        for s_i, side, n in sides:
            srng = _rng(seed, 5, pt.index, s_i)
            base = _side_anatomy(srng, pt)
            sign = 1 if side == "L" else -1
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
                    _rng(seed, 7, pt.index, s_i, k), anat, sign, pt.depth_cm, protocol
                )
                kind = ENCODINGS[order[done % len(ENCODINGS)]][0]
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
        ).encode(),
    )
    return DemoDataset(
        patients=len(plan),
        images=total,
        dicom_dir=dicom_dir,
        labels_dir=labels_dir,
        clinical_csv=clinical,
        encodings=dict(sorted(encodings.items())),
    )
