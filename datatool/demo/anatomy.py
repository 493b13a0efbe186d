"""The anatomy of the anterior view, per side of a patient and per image (in cm)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from datatool.demo.patients import _Patient
from datatool.demo.probe import _Blob, _harmonics


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
