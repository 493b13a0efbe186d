"""The interactive ``/predict`` of ``datatool serve``: a rater's points in, the clicked
structure redrawn by an interactive run (``train --interactive``) out.

Label Studio sends interactive pre-annotation requests with the rater's regions in
``params.context.result`` (``api_connector._prep_prediction_req``; a top-level ``context`` is
read too): each point a region of ``type`` ``keypointlabels`` whose ``value`` holds ``x``
and ``y`` in percent of the image and ``keypointlabels``, the label's name (here: the
structure's), and ``is_positive`` its polarity (Label Studio's own convention: the smart
tool's points are positive unless the rater made them negative; absent means positive).
Regions of other types (the brush regions of the draft being corrected) are ignored.

The answer is one prediction per task, as for a draft, whose ``result`` holds the brush
region of each clicked structure only (the task image's own size; no region when the
redrawn structure is empty), so Label Studio puts it beside what the rater has. Each region's
``meta`` says the run's model version and how many points it was redrawn from
(``formats.clicks_meta``): Label Studio keeps it on the region the rater accepts, and sync
records the label's provenance from it. A context
without points gets the whole draft, as a plain ``/predict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datatool.core.protocol import Protocol
from datatool.labels.labelstudio.formats import clicks_meta, mask_to_results
from datatool.learning.clicks import Click

MAX_CLICKS = 100  # points in one request: more is not a rater clicking


class BadContext(ValueError):
    """A context that cannot be read as a rater's points (the message says why)."""


@dataclass(frozen=True)
class Point:
    """A rater's point as Label Studio sends it: percent of the image, a structure name."""

    structure: str
    x_percent: float
    y_percent: float
    positive: bool

    def click(self, rows: int, cols: int) -> Click:
        """The point as a pixel click on an image of ``rows`` x ``cols``."""
        x = min(max(int(self.x_percent / 100.0 * cols), 0), cols - 1)
        y = min(max(int(self.y_percent / 100.0 * rows), 0), rows - 1)
        return Click(self.structure, y, x, self.positive)


def context_of(body: dict) -> Any:
    """The request's context: Label Studio's ``params.context``, else a top-level one."""
    params = body.get("params")
    if isinstance(params, dict) and params.get("context") is not None:
        return params["context"]
    return body.get("context")


def points_of(context: Any, protocol: Protocol) -> list[Point]:
    """The rater's keypoints in a request's context, in order; [] when it holds none.
    A point that is not a keypoint of a protocol structure at 0-100 % raises BadContext."""
    if context is None:
        return []
    if not isinstance(context, dict):
        raise BadContext("the request's context must be a JSON object")
    regions = context.get("result")
    if regions is None:
        return []
    if not isinstance(regions, list):
        raise BadContext("the context's 'result' must be a list of regions")
    names = {s.name for s in protocol.structures}
    points: list[Point] = []
    for k, region in enumerate(regions):
        if not isinstance(region, dict) or region.get("type") != "keypointlabels":
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise BadContext(f"point {k + 1} of the context has no 'value' object")
        labels = value.get("keypointlabels")
        if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
            raise BadContext(f"point {k + 1} must carry exactly one keypoint label")
        if labels[0] not in names:
            raise BadContext(
                f"point {k + 1} is labelled {labels[0][:80]!r}, not a structure of protocol "
                f"{protocol.name}"
            )
        x, y = value.get("x"), value.get("y")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (x, y)
        ):
            raise BadContext(f"point {k + 1} needs numbers x and y (percent of the image)")
        assert isinstance(x, int | float) and isinstance(y, int | float)
        if not (0 <= x <= 100 and 0 <= y <= 100):
            raise BadContext(f"point {k + 1} at ({x}, {y}) % is outside the image")
        positive = region.get("is_positive", True)
        if not isinstance(positive, bool):
            raise BadContext(f"point {k + 1}: 'is_positive' must be true or false")
        points.append(Point(labels[0], float(x), float(y), positive))
        if len(points) > MAX_CLICKS:
            raise BadContext(f"more than {MAX_CLICKS} points in one request")
    return points


def clicked_results(
    labels: np.ndarray, structures: Sequence[str], protocol: Protocol
) -> list[dict]:
    """Label Studio brush results of the clicked ``structures`` only, from a label map."""
    value_of = {s.name: s.value for s in protocol.structures}
    values = [value_of[name] for name in structures]
    kept = np.where(np.isin(labels, values), labels, 0).astype(np.uint8)
    return mask_to_results(kept, protocol)


def answer(model: Any, image: np.ndarray, points: Sequence[Point], protocol: Protocol) -> dict:
    """One task's interactive prediction: the image redrawn given the points (blocking)."""
    from datatool.learning.interactive import honoured, redraw_probabilities

    rows, cols = image.shape[:2]
    clicks = [p.click(rows, cols) for p in points]
    p = redraw_probabilities(model, image, clicks)
    top, classes = p.max(dim=0)
    labels = honoured(model, image, model.values[classes.cpu().numpy().astype(np.uint8)], clicks)
    clicked = sorted({c.structure for c in clicks}, key=list(model.structures).index)
    results = clicked_results(labels, clicked, protocol)
    for entry in results:  # provenance Label Studio keeps on the region: sync reads it
        (name,) = entry["value"]["brushlabels"]
        entry["meta"] = clicks_meta(model.model_version, sum(c.structure == name for c in clicks))
    value_of = {s.name: s.value for s in protocol.structures}
    drawn = np.isin(labels, [value_of[n] for n in clicked])
    score = float(top.cpu().numpy()[drawn].mean()) if drawn.any() else 0.0
    return {"result": results, "score": score, "model_version": model.model_version}


__all__ = [
    "MAX_CLICKS",
    "BadContext",
    "Point",
    "answer",
    "clicked_results",
    "context_of",
    "points_of",
]
