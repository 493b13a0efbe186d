"""The B-mode image, simulated the way a scanner makes it: reflectivity, attenuation and
specular reflectors on the polar (beam) grid, speckle, compression, scan conversion."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from datatool.demo.anatomy import _Anatomy
from datatool.demo.probe import (
    _FAN_PX,
    _NR,
    _NT,
    COLUMNS,
    ROWS,
    _Blob,
    _geometry,
    _polar_box,
)

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
