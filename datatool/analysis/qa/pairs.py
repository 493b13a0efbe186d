"""Two raters' outlines of a structure that overlap well enough for Dice, but lie further apart
or differ more in size than the workspace's rater pairs usually do: a label shifted by a few
millimetres, or a boundary drawn wide, on a large structure. Each pair of human labels of an
image gives, per structure both hold, the distance of the centroids (mm where calibrated, px
elsewhere) and the difference of their equivalent radii (the radius of a disc of the same
area, in the same unit: a boundary drawn 2 mm wide differs by about 2 mm whatever the
structure's size); a pair beyond the robust z-score of the workspace's pairs
(``pair_z_above``) is a disagreement."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datatool.analysis import shape
from datatool.analysis.qa.inputs import _ImageInfo, _Inputs, _Label
from datatool.core.catalogue import RaterKind
from datatool.core.protocol import Protocol

# the least spread a pair measure is judged by: two careful raters' centroids still differ by
# about this much, and their areas by about this share
OFFSET_FLOOR = {"mm": 0.5, "px": 2.0}
RADIUS_FLOOR = {"mm": 0.25, "px": 1.0}


def spread_of(values: list[float], floor: float) -> shape.Spread | None:
    """Median and MAD of the values (the MAD at least ``floor``); None below
    ``shape.MIN_SIZE_SAMPLE`` values."""
    if len(values) < shape.MIN_SIZE_SAMPLE:
        return None
    arr = np.asarray(values, float)
    median = float(np.median(arr))
    mad = float(np.median(np.abs(arr - median)))
    return shape.Spread(int(arr.size), median, max(mad, floor))


@dataclass(frozen=True)
class PairMeasure:
    offset: float
    unit: str  # "mm" or "px"
    radius_diff: float  # |difference of the equivalent radii| (in ``unit``)
    ratio: float  # area / other area


def pair_measure(
    info: _ImageInfo,
    centre: tuple[float, float],
    other: tuple[float, float],
    areas: tuple[int, int],
) -> PairMeasure:
    mx, my = info.mm
    dx, dy = centre[0] - other[0], centre[1] - other[1]
    radii = shape.equivalent_radius(areas[0]), shape.equivalent_radius(areas[1])
    if mx and my:
        offset, unit = math.hypot(dx * mx, dy * my), "mm"
        radius_diff = abs(radii[0] - radii[1]) * math.sqrt(mx * my)
    else:
        offset, unit = math.hypot(dx, dy), "px"
        radius_diff = abs(radii[0] - radii[1])
    return PairMeasure(offset, unit, radius_diff, areas[0] / areas[1])


@dataclass
class PairSpreads:
    offset: dict[tuple[str, str], shape.Spread | None]  # (structure, unit)
    radius: dict[tuple[str, str], shape.Spread | None]  # (structure, unit)


def measure_of(
    inputs: _Inputs, measures: dict[int, dict], lab: _Label, other: _Label, value: int
) -> PairMeasure | None:
    a, b = (
        measures.get(lab.annotation_id, {}).get(value),
        measures.get(other.annotation_id, {}).get(value),
    )
    if a is None or b is None:
        return None
    areas = (inputs.stats[lab.annotation_id][value][0], inputs.stats[other.annotation_id][value][0])
    if not areas[0] or not areas[1]:
        return None
    return pair_measure(inputs.images[lab.image_id], a["centroid"], b["centroid"], areas)


def pair_spreads(protocol: Protocol, inputs: _Inputs, measures: dict[int, dict]) -> PairSpreads:
    """The usual distances and radius differences of the workspace's human rater pairs."""
    offsets: dict[tuple[str, str], list[float]] = defaultdict(list)
    radii: dict[tuple[str, str], list[float]] = defaultdict(list)
    humans = [lab for lab in inputs.checked if lab.kind == RaterKind.human]
    by_image: dict[int, list[_Label]] = defaultdict(list)
    for lab in humans:
        by_image[lab.image_id].append(lab)
    for labels in by_image.values():
        for i, lab in enumerate(labels):
            for other in labels[i + 1 :]:
                for s in protocol.structures:
                    m = measure_of(inputs, measures, lab, other, s.value)
                    if m is not None:
                        offsets[(s.name, m.unit)].append(m.offset)
                        radii[(s.name, m.unit)].append(m.radius_diff)
    return PairSpreads(
        {k: spread_of(v, OFFSET_FLOOR[k[1]]) for k, v in offsets.items()},
        {k: spread_of(v, RADIUS_FLOOR[k[1]]) for k, v in radii.items()},
    )


def displaced(
    protocol: Protocol,
    inputs: _Inputs,
    measures: dict[int, dict],
    pairs: PairSpreads,
    z_above: float,
    lab: _Label,
    other: _Label,
    leave_out: Sequence[int] = (),
) -> tuple[int, int]:
    """(structures whose centroids lie further apart than the workspace's pairs, structures
    both labels hold), over the structures not in ``leave_out``."""
    moved = held = 0
    for s in protocol.structures:
        if s.value in leave_out:
            continue
        m = measure_of(inputs, measures, lab, other, s.value)
        if m is None:
            continue
        held += 1
        spread = pairs.offset.get((s.name, m.unit))
        if spread is not None and spread.z(m.offset) > z_above:
            moved += 1
    return moved, held
