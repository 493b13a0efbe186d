"""Temporal consistency of a cine loop's labels: a frame whose structure jumps against its
neighbouring frames in the same loop (a structure missed, swapped or drawn in the wrong place
in one frame of a clip), a check no labelling tool makes.

A *loop* is one rater's latest labels of the frames of one cine file (at least
``TEMPORAL_MIN_FRAMES`` labelled frames), in frame order; the neighbours of a frame are the
loop's labelled frames just before and after it. Per structure:

* *missing*: absent in a frame while present in both its neighbours (severity 1);
* *jump*: the structure's centroid, or its equivalent radius (its size), lies further from what
  the neighbours predict (their linear interpolation at the frame, or the one neighbour at the
  loop's ends) than ``ratio`` times the loop's usual frame-to-frame change of it (the median
  over the steps between the loop's other frames, so the frame judged does not set its own
  yardstick) and than a floor (``floor`` mm, for the centroid and the radius alike; in
  pixels where a frame has no mm calibration), so a still loop does not flag drawing noise.
  The worst frame is taken first and left out of the loop before the next is judged, so one
  bad frame does not make its neighbours look bad too (an end frame, with one neighbour, only
  when it lies clearly further off than that neighbour: ``END_MARGIN``). A loop whose
  structures move smoothly, however fast, flags nothing: an interpolated frame lies where its
  neighbours say. At most a third of a loop's frames are flagged for one structure: the rest
  of the loop says what is usual.

One flag per (label, structure), with the centroid's and the size's evidence; its severity is
how far the change lies past its threshold ((change - threshold) / threshold), 1 for a
missing structure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from datatool.analysis import shape
from datatool.analysis.qa.inputs import _ImageInfo, _Inputs, _Label
from datatool.analysis.qa.rules import _Found
from datatool.core.catalogue import FlagReason
from datatool.core.protocol import Protocol
from datatool.labels.frames import frame_place
from datatool.labels.matching import image_name


def frame_name(image_id: int, info: _ImageInfo) -> str:
    """A cine frame as people name it: the image and its 1-based frame of the file's frames
    (never the file's path, whose folders may name the patient)."""
    return f"{image_name(image_id)} ({frame_place(info.source_file, info.frame, info.n_frames)})"


def loops(inputs: _Inputs, min_frames: int = shape.TEMPORAL_MIN_FRAMES) -> list[list[_Label]]:
    """Each rater's checked labels of each cine file, in frame order: the loops with at least
    ``min_frames`` labelled frames."""
    by_loop: dict[tuple[str, int], list[_Label]] = defaultdict(list)
    for lab in inputs.checked:
        info = inputs.images[lab.image_id]
        if info.n_frames > 1:
            by_loop[(lab.rater, info.source_file)].append(lab)
    return [
        sorted(labels, key=lambda lab: inputs.images[lab.image_id].frame)
        for _, labels in sorted(by_loop.items())
        if len(labels) >= min_frames
    ]


@dataclass
class Jump:
    """One frame of a sequence that lies off its neighbours' course."""

    index: int  # in the sequence
    change: float  # its distance from what the neighbours predict
    usual: float  # the median frame-to-frame change over the other frames (per frame)
    threshold: float  # max(ratio * usual * frames to the neighbour, floor)

    @property
    def severity(self) -> float:
        return (self.change - self.threshold) / self.threshold


# An end frame has one neighbour: when that neighbour is off course by d, the end frame lies d
# from it too, and the neighbour d from the course through the end; when the end frame is off
# by d, its neighbour lies only d / 2 from the course. So an end frame is judged only when it
# lies further off than this many times its neighbour.
END_MARGIN = 1.5


def jumps(
    frames: list[int], values: list[tuple[float, ...]], ratio: float, floor: float
) -> list[Jump]:
    """The frames of a sequence (``values`` at the increasing frame numbers ``frames``) that
    lie off their neighbours' course: see the module's doc. At most a third of the frames
    (one at least): the rest of the loop says what is usual. Pure numbers."""
    if len(values) < shape.TEMPORAL_MIN_FRAMES:  # a structure in fewer frames: no course
        return []
    vals = np.asarray(values, dtype=float).reshape(len(values), -1)
    at = np.asarray(frames, dtype=float)
    alive = np.arange(len(values))
    found: list[Jump] = []
    while alive.size >= shape.TEMPORAL_MIN_FRAMES and len(found) < max(1, len(values) // 3):
        v, f = vals[alive], at[alive]
        steps = np.linalg.norm(np.diff(v, axis=0), axis=1) / np.diff(f)
        predicted = np.empty_like(v)
        gap = np.empty(alive.size)
        predicted[0], predicted[-1] = v[1], v[-2]
        gap[0], gap[-1] = f[1] - f[0], f[-1] - f[-2]
        w = (f[1:-1] - f[:-2]) / (f[2:] - f[:-2])
        predicted[1:-1] = v[:-2] + w[:, None] * (v[2:] - v[:-2])
        gap[1:-1] = np.maximum(f[1:-1] - f[:-2], f[2:] - f[1:-1])
        change = np.linalg.norm(v - predicted, axis=1)
        worst: Jump | None = None
        for pos in range(alive.size):
            inner = 1 if pos == 0 else alive.size - 2 if pos == alive.size - 1 else None
            if inner is not None and change[pos] <= END_MARGIN * change[inner]:
                continue  # an end frame whose one neighbour is as far off: that one is
            # the steps between the other frames: those touching this one left out
            others = np.delete(steps, [i for i in (pos - 1, pos) if 0 <= i < steps.size])
            usual = float(np.median(others)) if others.size else 0.0
            jump = Jump(
                int(alive[pos]),
                float(change[pos]),
                usual,
                max(ratio * usual * float(gap[pos]), floor),
            )
            if jump.change > jump.threshold and (worst is None or jump.severity > worst.severity):
                worst = jump
        if worst is None:
            break
        found.append(worst)
        alive = alive[alive != worst.index]
    return found


def _r(x: float) -> float:
    return round(float(x), 2)


def temporal(
    protocol: Protocol,
    inputs: _Inputs,
    measures: dict[int, dict],
    ratio: float,
    floor_mm: float,
    checked: set[tuple[int, FlagReason, str | None]],
) -> tuple[list[_Found], int]:
    """The temporal flags of the checked labels' loops, and how many labels the check saw
    (the labels of the loops: what the flood limit counts this rule's flags against).
    Every label of a loop is marked checked, so a re-run clears a flag no longer found."""
    found: list[_Found] = []
    seen = 0
    for loop in loops(inputs):
        seen += len(loop)
        infos = [inputs.images[lab.image_id] for lab in loop]
        calibrated = all(x is not None for info in infos for x in info.mm)
        unit, floor = ("mm", floor_mm) if calibrated else ("px", shape.TEMPORAL_FLOOR_PX)
        frames = [info.frame for info in infos]
        for lab in loop:
            checked.add((lab.annotation_id, FlagReason.temporal, None))
        names = [frame_name(lab.image_id, info) for lab, info in zip(loop, infos)]
        for s in protocol.structures:
            present = [inputs.stats[lab.annotation_id][s.value][0] > 0 for lab in loop]
            evidence: dict[int, tuple[float, dict[str, Any]]] = {}
            for k in range(1, len(loop) - 1):
                if present[k - 1] and present[k + 1] and not present[k]:
                    evidence[k] = (
                        1.0,
                        {
                            "missing": True,
                            "previous_area_px": inputs.stats[loop[k - 1].annotation_id][s.value][0],
                            "next_area_px": inputs.stats[loop[k + 1].annotation_id][s.value][0],
                        },
                    )
            where = [k for k, on in enumerate(present) if on and s.value in _per(measures, loop[k])]
            centroids: list[tuple[float, ...]] = []
            radii: list[tuple[float, ...]] = []
            for k in where:
                x, y = _per(measures, loop[k])[s.value]["centroid"]
                area = inputs.stats[loop[k].annotation_id][s.value][0]
                sx, sy = infos[k].mm if calibrated else (1.0, 1.0)
                centroids.append((x * float(sx or 1.0), y * float(sy or 1.0)))
                # the equivalent radius of the area (in mm: the pixel's area in mm²)
                radii.append((shape.equivalent_radius(area * float(sx or 1.0) * float(sy or 1.0)),))
            sub = [frames[k] for k in where]
            for what, values in (("moved", centroids), ("radius", radii)):
                for j in jumps(sub, values, ratio, floor):
                    k = where[j.index]
                    sev, ev = evidence.get(k, (0.0, {}))
                    ev = {
                        **ev,
                        what: _r(j.change),
                        f"{what}_usual": _r(j.usual),
                        f"{what}_threshold": _r(j.threshold),
                    }
                    evidence[k] = (max(sev, j.severity), ev)
            for k, (sev, ev) in sorted(evidence.items()):
                lab = loop[k]
                found.append(
                    _Found(
                        lab.annotation_id,
                        lab.image_id,
                        s.name,
                        FlagReason.temporal,
                        sev,
                        {
                            **ev,
                            "unit": unit,
                            "frame": names[k],
                            "previous": names[k - 1] if k > 0 else None,
                            "next": names[k + 1] if k + 1 < len(loop) else None,
                            "previous_annotation": loop[k - 1].annotation_id if k > 0 else None,
                            "next_annotation": (
                                loop[k + 1].annotation_id if k + 1 < len(loop) else None
                            ),
                            "loop_frames": len(loop),
                            "ratio": ratio,
                        },
                    )
                )
    return found, seen


def _per(measures: dict[int, dict], lab: _Label) -> dict:
    return measures.get(lab.annotation_id, {})
