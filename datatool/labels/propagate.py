"""Draft a cine loop's frames from one labelled frame of it, by registration.

A loop's frames (``N x H x W`` uint8 grey, in frame order) and the label maps of one or more of
its frames (``H x W`` uint8, the protocol's values) give a draft label map for every frame:

1. The fan (where the probe's pixels are informative) is found from the frames themselves: the
   largest bright connected region of their maximum, holes filled. Metrics, forces and drafts
   stay inside it.
2. Each registration maps a target frame (fixed) onto a source frame (moving), on frames
   smoothed against the speckle (Gaussian) and shrunk to about 120 pixels on the short side
   (a quarter of 480 x 640): first a translation (mean squares inside the eroded fan,
   regular-step gradient descent), then a smooth deformable stage (fast symmetric-forces
   Demons started from that translation, the displacement field smoothed at every
   iteration). The label map is warped at full resolution.
3. ``mode="direct"`` (the default) registers the target to the labelled frame at once, its
   translation started from the neighbouring frames' translations added up (so motion over
   the loop beyond one registration's reach is still followed); ``mode="chain"`` composes
   the neighbouring frames' full registrations instead. On the demo's cines
   (``bench/propagate.py``) direct measures as well at 1 frame and better at 4 (mean IoU
   0.851 against 0.834), at 0.5-0.65 s a drafted frame on the shared 2-core CPU.
4. The source's label map is warped with nearest-neighbour interpolation. Each structure then
   stays one connected region (its largest; background holes inside it filled, never taking
   another structure's pixels) of plausible size: a structure whose warped area is outside
   ``AREA_RANGE`` of its area in the labelled frame is drafted by the translation alone.

A frame takes the nearest labelled frame (by ``positions``, the DICOM frame numbers, when the
catalogue holds only some frames of the loop; ties go to the earlier one); a labelled frame's
draft is its own label map. No labelled frame: no drafts (``source`` all -1, drafts empty).
``blend=True`` gives a frame between two labelled frames both drafts blended by shape; on the
demo's cines it measured 1.006 times the nearer frame's IoU (0.852 against 0.847, two frames
4 apart), not worth its second registration, so it is not the default.

Pure: numpy, scipy and SimpleITK only, no catalogue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

Mode = Literal["chain", "direct"]

PROPAGATE_VERSION = "datatool-propagate"  # the model version of propagated drafts


def propagated_from(image: str, frame_index: int, rater: str, version: int) -> str:
    """A propagated draft's provenance (its handout's or marker's model version): the image
    (its name, e.g. img000123), the 1-based frame and the rater's label version it was
    drafted from."""
    text = f"propagated from {image} frame {frame_index + 1} ({rater}'s label v{version})"
    return text[:128]  # the catalogue's model version column


AREA_RANGE = (0.5, 2.0)  # a warped structure's area / its labelled area, to be plausible
SMOOTH_PX = 1.5  # Gaussian sigma against speckle, in full-resolution pixels
DEMONS_ITERATIONS = 40
TRANSLATION_ITERATIONS = 40
DEMONS_SIGMA = 2.0  # displacement-field smoothing, in (shrunk) pixels
MIN_FAN_FRACTION = 0.05  # a fan smaller than this part of the frame: use the whole frame


@dataclass
class Propagation:
    """Drafts of every frame of a loop and where each came from."""

    drafts: np.ndarray  # N x H x W uint8; zeros where ``source`` is -1
    source: list[int]  # per frame: the index of the labelled frame it was drafted from, or -1
    fallbacks: dict[int, list[int]] = field(default_factory=dict)  # frame -> values by shift
    seconds: float = 0.0  # registration and warping, all frames


def as_grey(array: np.ndarray) -> np.ndarray:
    """A stored frame as grey uint8 (a colour frame: the mean of its channels)."""
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2)
    return np.asarray(np.clip(array, 0, 255), np.uint8)


def fan_mask(frames: np.ndarray) -> np.ndarray:
    """The informative region of a loop (H x W bool): the largest connected region of the
    frames' maximum above a low threshold, closed and with holes filled; the whole frame when
    that is under MIN_FAN_FRACTION of it."""
    peak = frames.max(axis=0) if frames.ndim == 3 else frames
    bright = ndimage.binary_closing(peak > 4, iterations=3)
    regions, n = ndimage.label(bright)
    if n == 0:
        return np.ones(peak.shape, bool)
    sizes = ndimage.sum_labels(bright, regions, index=np.arange(1, n + 1))
    fan = ndimage.binary_fill_holes(regions == int(np.argmax(sizes)) + 1)
    if fan.sum() < MIN_FAN_FRACTION * fan.size:
        return np.ones(peak.shape, bool)
    return np.asarray(fan, bool)


def _shrink_factor(shape: tuple[int, ...]) -> int:
    """Registration works at about 120 pixels on the short side."""
    return max(1, min(shape) // 120)


def _prepared(frame: np.ndarray, fan: np.ndarray, shrink: int) -> sitk.Image:
    """The frame as float, fan only, smoothed and shrunk (physical coordinates = full-res
    pixel coordinates)."""
    image = sitk.GetImageFromArray(np.where(fan, frame, 0).astype(np.float32))
    image = sitk.SmoothingRecursiveGaussian(image, SMOOTH_PX)
    return sitk.Shrink(image, [shrink, shrink]) if shrink > 1 else image


@dataclass
class _Step:
    """One registration, target (fixed) -> source (moving): the full and the translation-only
    transforms, each mapping a target pixel to its place in the source."""

    full: sitk.Transform
    offset: tuple[float, float]  # the translation (x, y), full-resolution pixels

    @property
    def shift(self) -> sitk.Transform:
        return sitk.TranslationTransform(2, self.offset)


def _translation(
    fixed: sitk.Image,
    moving: sitk.Image,
    metric_mask: sitk.Image,
    start: tuple[float, float] = (0.0, 0.0),
) -> tuple[float, float]:
    """The translation (x, y) that maps the fixed image onto the moving one, from ``start``."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricFixedMask(metric_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0,
        minStep=0.05,
        numberOfIterations=TRANSLATION_ITERATIONS,
        relaxationFactor=0.6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    reg.SetInitialTransform(sitk.TranslationTransform(2, start), inPlace=False)
    x, y = reg.Execute(fixed, moving).GetParameters()
    return (x, y)


def _register(
    fixed: sitk.Image,
    moving: sitk.Image,
    metric_mask: sitk.Image,
    start: tuple[float, float] = (0.0, 0.0),
) -> _Step:
    """A translation from ``start``, then Demons from it."""
    offset = _translation(fixed, moving, metric_mask, start)
    field = sitk.TransformToDisplacementField(
        sitk.TranslationTransform(2, offset),
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(DEMONS_SIGMA)
    moved = demons.Execute(fixed, moving, field)
    return _Step(sitk.DisplacementFieldTransform(moved), offset)


def _then(first: _Step, then: _Step, grid: sitk.Image) -> _Step:
    """``first`` (target -> middle frame) followed by ``then`` (middle -> source) as one step:
    the composed displacement field sampled on the registration grid, translations added."""
    composite = sitk.CompositeTransform([then.full, first.full])  # the last is applied first
    field = sitk.TransformToDisplacementField(
        composite,
        sitk.sitkVectorFloat64,
        grid.GetSize(),
        grid.GetOrigin(),
        grid.GetSpacing(),
        grid.GetDirection(),
    )
    offset = (first.offset[0] + then.offset[0], first.offset[1] + then.offset[1])
    return _Step(sitk.DisplacementFieldTransform(field), offset)


def _warp(labels: np.ndarray, transform: sitk.Transform) -> np.ndarray:
    image = sitk.GetImageFromArray(labels)
    out = sitk.Resample(image, image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _largest(mask: np.ndarray) -> np.ndarray:
    regions, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, regions, index=np.arange(1, n + 1))
    return np.asarray(regions == int(np.argmax(sizes)) + 1)


def _tidy(warped: np.ndarray, shifted: np.ndarray, labelled: np.ndarray, fan: np.ndarray):
    """Each structure one connected region of plausible size (else its shifted region);
    returns the draft and the values drafted by the shift alone."""
    out = np.zeros_like(warped)
    fallback: list[int] = []
    low, high = AREA_RANGE
    areas = np.bincount(labelled.ravel(), minlength=256)
    warped = np.where(fan, warped, 0)
    boxes = ndimage.find_objects(warped)
    for value in (int(v) for v in np.flatnonzero(areas[1:]) + 1):
        box = boxes[value - 1] if value <= len(boxes) else None
        region = np.zeros(warped.shape, bool)
        if box is not None:
            region[box] = _largest(warped[box] == value)
        if not low * areas[value] <= region.sum() <= high * areas[value]:
            region = _largest((shifted == value) & fan)
            fallback.append(value)
        out[region & (out == 0)] = value
    for value, box in enumerate(ndimage.find_objects(out), start=1):
        if box is not None:
            crop = out[box]
            crop[ndimage.binary_fill_holes(crop == value) & (crop == 0)] = value
    return out, fallback


def nearest_labelled(positions: Sequence[int], labelled: Sequence[int]) -> list[int]:
    """Per frame, the index of the nearest labelled frame by position (ties: the earlier), or
    -1 when none is labelled."""
    if not labelled:
        return [-1] * len(positions)
    return [
        min(labelled, key=lambda j: (abs(positions[j] - positions[i]), positions[j]))
        for i in range(len(positions))
    ]


class Loop:
    """A loop's frames with the registrations made so far between them (each made once, so
    several label sets, e.g. each rater's, are drafted at the cost of one)."""

    def __init__(self, frames: np.ndarray):
        frames = np.asarray(frames)
        if frames.ndim != 3:
            raise ValueError(f"frames must be N x H x W, not {frames.shape}")
        self.frames = frames
        self.fan = fan_mask(frames)
        self._shrink = _shrink_factor(frames.shape[1:])
        self._prepared: dict[int, sitk.Image] = {}
        self._steps: dict[tuple[int, int], _Step] = {}  # (target, source) -> one registration
        self._reach: dict[tuple[int, int], _Step] = {}  # (target, source) -> chained steps
        self._shifts: dict[tuple[int, int], tuple[float, float]] = {}  # translations only
        eroded = (
            ndimage.binary_erosion(self.fan, iterations=4)
            if self.fan.sum() < self.fan.size
            else self.fan
        )
        grid = self._image(0)
        mask = sitk.GetImageFromArray(eroded.astype(np.uint8))
        self._metric_mask = sitk.Resample(
            mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )

    def _image(self, i: int) -> sitk.Image:
        if i not in self._prepared:
            self._prepared[i] = _prepared(self.frames[i], self.fan, self._shrink)
        return self._prepared[i]

    def _step(self, target: int, src: int) -> _Step:
        if (target, src) not in self._steps:
            self._steps[(target, src)] = _register(
                self._image(target), self._image(src), self._metric_mask
            )
        return self._steps[(target, src)]

    def _shift(self, target: int, src: int) -> tuple[float, float]:
        """The translation from target to source through every frame between."""
        if (target, src) not in self._shifts:
            way = 1 if target > src else -1
            x, y = (0.0, 0.0)
            for k in range(target, src, -way):
                if (k, k - way) in self._steps:
                    dx, dy = self._steps[(k, k - way)].offset
                else:
                    if (k, k - way) not in self._shifts:
                        self._shifts[(k, k - way)] = _translation(
                            self._image(k), self._image(k - way), self._metric_mask
                        )
                    dx, dy = self._shifts[(k, k - way)]
                x, y = x + dx, y + dy
            self._shifts[(target, src)] = (x, y)
        return self._shifts[(target, src)]

    def _direct(self, target: int, src: int) -> _Step:
        """One registration from target to source, its translation started from the
        neighbouring frames' translations added up (beyond one registration's reach)."""
        if (target, src) not in self._steps:
            self._steps[(target, src)] = _register(
                self._image(target), self._image(src), self._metric_mask, self._shift(target, src)
            )
        return self._steps[(target, src)]

    def _chained(self, target: int, src: int) -> _Step:
        """The step from target to source through every frame between."""
        if (target, src) not in self._reach:
            way = 1 if target > src else -1
            nearer = target - way
            self._reach[(target, src)] = (
                self._step(target, src)
                if nearer == src
                else _then(self._step(target, nearer), self._chained(nearer, src), self._image(src))
            )
        return self._reach[(target, src)]

    def propagate(
        self,
        labels: Mapping[int, np.ndarray],
        positions: Sequence[int] | None = None,
        mode: Mode = "direct",
        blend: bool = False,
    ) -> Propagation:
        """Draft every frame from its nearest labelled frame (see :func:`propagate`); with
        ``blend``, a frame between two labelled frames gets both drafts blended by shape,
        weighted by nearness (``_blend``; ``bench/propagate.py --pairs`` measures it)."""
        n, rows, cols = self.frames.shape
        positions = list(range(n)) if positions is None else list(positions)
        if len(positions) != n:
            raise ValueError(f"{len(positions)} positions for {n} frames")
        for index, lab in labels.items():
            if not 0 <= index < n:
                raise ValueError(f"labelled frame {index} is not a frame of this {n}-frame loop")
            if lab.shape != (rows, cols):
                raise ValueError(f"label map of frame {index} is {lab.shape}, not {(rows, cols)}")
        if mode not in ("chain", "direct"):
            raise ValueError(f"mode must be chain or direct, not {mode!r}")
        t0 = time.perf_counter()
        labelled = sorted(labels)
        source = nearest_labelled(positions, labelled)
        result = Propagation(np.zeros((n, rows, cols), np.uint8), source)
        for i, s in enumerate(source):
            if s < 0:
                continue
            if s == i:
                result.drafts[i] = labels[i]
                continue
            before = [j for j in labelled if positions[j] < positions[i]]
            after = [j for j in labelled if positions[j] > positions[i]]
            if blend and before and after:
                a, b = before[-1], after[0]
                wa = (positions[b] - positions[i]) / (positions[b] - positions[a])
                da, fa = self._draft(i, a, labels[a], mode)
                db, fb = self._draft(i, b, labels[b], mode)
                result.drafts[i] = _blend(da, db, wa, self.fan)
                fallback = sorted(set(fa) | set(fb))
            else:
                result.drafts[i], fallback = self._draft(i, s, labels[s], mode)
            if fallback:
                result.fallbacks[i] = fallback
        result.seconds = time.perf_counter() - t0
        return result

    def _draft(self, target: int, src: int, labels: np.ndarray, mode: Mode):
        """The source frame's label map moved onto the target frame, tidied."""
        found = self._direct(target, src) if mode == "direct" else self._chained(target, src)
        labelled = np.where(self.fan, labels, 0).astype(np.uint8)
        return _tidy(_warp(labelled, found.full), _warp(labelled, found.shift), labelled, self.fan)


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Negative inside, positive outside (pixels); +inf everywhere for an empty mask."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _blend(first: np.ndarray, second: np.ndarray, w_first: float, fan: np.ndarray) -> np.ndarray:
    """Two drafts of one frame blended by shape: per structure, the weighted mean of their
    signed distance maps (``w_first`` for the first, the rest for the second), inside where it
    is negative; a pixel claimed by several structures goes to the deepest. A structure in
    one draft only is kept as the nearer draft has it (or dropped, if that one lacks it)."""
    nearer = first if w_first >= 0.5 else second
    values = sorted(
        {int(v) for v in np.unique(first) if v} | {int(v) for v in np.unique(second) if v}
    )
    best = np.full(first.shape, np.inf)
    out = np.zeros_like(first)
    for value in values:
        a, b = first == value, second == value
        if a.any() and b.any():
            depth = w_first * _signed_distance(a) + (1 - w_first) * _signed_distance(b)
            inside = (depth < 0) & fan
        else:
            inside = nearer == value
            depth = np.where(inside, -1.0, np.inf)
        inside = _largest(inside) if inside.any() else inside
        take = inside & (depth < best)
        out[take] = value
        best[take] = depth[take]
    return out


def propagate(
    frames: np.ndarray,
    labels: Mapping[int, np.ndarray],
    positions: Sequence[int] | None = None,
    mode: Mode = "direct",
    blend: bool = False,
) -> Propagation:
    """Draft every frame of a loop from its labelled frames (see the module docstring).
    ``frames``: N x H x W uint8 in frame order; ``labels``: frame index (0..N-1) -> H x W
    uint8 label map; ``positions``: the frames' DICOM frame numbers (default 0..N-1). No
    labelled frame: nothing drafted (and nothing registered)."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be N x H x W, not {frames.shape}")
    if not labels:
        n = frames.shape[0]
        return Propagation(np.zeros(frames.shape, np.uint8), [-1] * n)
    return Loop(frames).propagate(labels, positions, mode, blend)
