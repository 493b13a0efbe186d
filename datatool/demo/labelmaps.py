"""The two raters' label maps of an image, drawn from the same shapes as the image, with
realistic disagreement and the errors the review queue should find."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from datatool.core.protocol import Protocol
from datatool.demo.anatomy import _Anatomy
from datatool.demo.probe import _FAN_PX, COLUMNS, ROWS, _Blob, _cart_box, _geometry

# Drawing order of the labelled structures (later ones on top), keyed by protocol name.
_PAINT_ORDER = ("adductor magnus", "semitendinosus", "femur", "sciatic nerve", "femoral artery")


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
    rng: np.random.Generator,
    anat: _Anatomy,
    sign: int,
    depth_cm: float,
    protocol: Protocol,
    errors: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Rater 1's and rater 2's label maps (uint8 ROWS x COLUMNS); ``errors`` False leaves out
    rater 2's planted errors (the random draws stay the same)."""
    g = _geometry()
    cm = _FAN_PX / depth_cm
    maps = []
    miss_artery = rng.random() < 0.03 and errors
    odd_nerve = rng.random() < 0.03 and errors
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
    if rng.random() < 0.02 and errors:
        am, st = (
            protocol.by_label("adductor magnus").value,
            protocol.by_label("semitendinosus").value,
        )
        was_am = maps[1] == am
        maps[1][maps[1] == st] = am
        maps[1][was_am] = st
    return maps[0], maps[1]
