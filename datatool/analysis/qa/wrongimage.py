"""A label on the wrong image: a human label that agrees with the labels of another image of
the same patient far better than with the other raters' labels of its own image (a file that
went to the wrong image, a task answered on the wrong screen). Compared on thumbnails (every
``measure.THUMB_STEP``-th pixel), over every structure at once: the share of the labelled
pixels that carry the same structure (a multi-structure Dice)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from datatool.analysis.qa.inputs import _Inputs, _Label
from datatool.analysis.qa.measure import Thumb
from datatool.analysis.qa.rules import IMAGE, _Found
from datatool.core.catalogue import FlagReason, RaterKind
from datatool.labels.matching import image_name

OWN_BELOW = 0.8  # checked when the label agrees less than this with its own image's others
GAIN = 0.15  # ... and flagged when another image's labels agree at least this much better
FITS_ABOVE = 0.85  # ... and at least this much (a label of that image, not a poor label)


def overall_dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """The share of the two maps' labelled pixels that carry the same structure in both
    (2 |same structure| / (|labelled in a| + |labelled in b|)); None when both are empty."""
    fa, fb = a > 0, b > 0
    total = int(np.count_nonzero(fa)) + int(np.count_nonzero(fb))
    if not total:
        return None
    return 2.0 * int(np.count_nonzero(fa & (a == b))) / total


def pair_table(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels per (value in ``a``, value in ``b``) of two maps of one size: a k x k table from
    one ``np.bincount`` of the pair codes ``value_a * k + value_b`` (k: 1 + the largest
    value of either map)."""
    k = int(max(a.max(initial=0), b.max(initial=0))) + 1
    codes = a.astype(np.intp)
    codes *= k
    codes += b
    return np.bincount(codes.ravel(), minlength=k * k).reshape(k, k)


def _own_dice(a: np.ndarray, b: np.ndarray, swapped: Sequence[int]) -> float:
    """:func:`overall_dice` over the structures both labels hold and no swap was found on
    (a structure one of them lacks, or a swap, explains the disagreement there); 0 when
    nothing is left. One pass over the pair of maps (:func:`pair_table`) gives every
    structure's pixels in each map and where both agree, instead of masks per structure."""
    table = pair_table(a, b)
    in_a, in_b = table.sum(axis=1), table.sum(axis=0)
    keep = [
        v for v in range(1, table.shape[0]) if in_a[v] and in_b[v] and v not in swapped
    ]  # fmt: skip
    total = int(sum(int(in_a[v]) + int(in_b[v]) for v in keep))
    if not total:
        return 0.0
    return 2.0 * int(sum(int(table[v, v]) for v in keep)) / total


def wrong_images(
    inputs: _Inputs,
    thumbs: dict[int, Thumb],
    checked: set[tuple[int, FlagReason, str | None]],
    found: list[_Found],
    values: dict[str, int],
    displaced: Callable[[_Label, _Label, Sequence[int]], tuple[int, int]],
    own_below: float = OWN_BELOW,
    gain: float = GAIN,
) -> list[_Found]:
    """The wrong-image flags of the checked human labels (each compared with the human labels
    of its own image and of the patient's other images; all need thumbnails). A label is on
    the wrong image when it agrees less than ``own_below`` with its own image's other labels
    (over the structures both hold and no swap was found on: ``found``), and the labels of one
    other image of the patient agree with it at least FITS_ABOVE and ``gain`` better; of an
    image's labels, the one that fits another image best. And the whole label must have moved:
    at least half of the structures both labels hold lie further from the other label's than
    the workspace's rater pairs do (``displaced``: (structures moved, structures held)), not
    one structure drawn badly in the other label. The swaps and rater disagreements
    of its image (``found``) are then dropped: the wrong label explains them. ``values``: the
    protocol's value of each structure."""
    swapped: dict[int, list[int]] = defaultdict(list)
    for f in found:
        if f.reason == FlagReason.swap:
            swapped[f.image_id].append(values[f.structure])
    by_patient: dict[int, list[_Label]] = defaultdict(list)
    for lab in inputs.checked:
        if lab.kind == RaterKind.human and lab.annotation_id in thumbs:
            by_patient[inputs.images[lab.image_id].patient].append(lab)
    flags = []
    for labels in by_patient.values():
        # the patient's thumbnails unpacked while its labels are compared, then let go
        small = {lab.annotation_id: thumbs[lab.annotation_id].array() for lab in labels}
        for lab in labels:
            own_labels = [
                o
                for o in labels
                if o.image_id == lab.image_id and o.annotation_id != lab.annotation_id
            ]
            if not own_labels:
                continue
            checked.add((lab.annotation_id, FlagReason.wrong_image, None))
            mine = small[lab.annotation_id]
            own = max(
                _own_dice(mine, small[o.annotation_id], swapped.get(lab.image_id, ()))
                for o in own_labels
            )
            if own >= own_below:
                continue
            best, best_label = 0.0, None
            per_image: dict[int, float] = {}
            for o in labels:
                if o.image_id == lab.image_id:
                    continue
                d = overall_dice(mine, small[o.annotation_id]) or 0.0
                per_image[o.image_id] = max(per_image.get(o.image_id, 0.0), d)
                if d > best:
                    best, best_label = d, o
            if best_label is None or best < FITS_ABOVE or best - own < gain:
                continue
            moved, held = max(displaced(lab, o, swapped.get(lab.image_id, ())) for o in own_labels)
            if not held or moved * 2 < held:
                continue
            flags.append(
                _Found(
                    lab.annotation_id,
                    lab.image_id,
                    IMAGE,
                    FlagReason.wrong_image,
                    (best - own) / gain,
                    {
                        "fits_image": image_name(best_label.image_id),
                        "fits_image_id": best_label.image_id,
                        "fits_rater": best_label.rater,
                        "fits_dice": round(best, 4),
                        "own_dice": round(own, 4),
                        "gain": gain,
                    },
                )
            )
    best_of: dict[int, _Found] = {}
    for f in flags:
        if f.image_id not in best_of or f.severity > best_of[f.image_id].severity:
            best_of[f.image_id] = f
    flags = list(best_of.values())
    wrong = set(best_of)
    explained = (FlagReason.swap, FlagReason.rater_disagreement)
    found[:] = [f for f in found if not (f.image_id in wrong and f.reason in explained)]
    return flags
