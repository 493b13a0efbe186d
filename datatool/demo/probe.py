"""The demo's convex probe: the image and fan geometry, and the star-shaped blobs drawn on
it (in the canonical frame: lateral offset from the centre line, depth below the skin)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

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


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % (1 << 64), *[int(k) for k in keys]])


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
