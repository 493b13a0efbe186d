"""A label on the wrong image: a human label that agrees with the labels of another image of
the same patient far better than with the other raters' labels of its own image (a file that
went to the wrong image, a task answered on the wrong screen). Compared on thumbnails (every
``measure.THUMB_STEP``-th pixel), over every structure at once: the share of the labelled
pixels that carry the same structure (a multi-structure Dice)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from datatool.analysis.qa.inputs import _Inputs, _Label
from datatool.analysis.qa.rules import IMAGE, _Found
from datatool.core.catalogue import FlagReason, RaterKind
from datatool.labels.matching import image_name

OWN_BELOW = 0.8  # checked when the label agrees less than this with its own image's others
GAIN = 0.15  # ... and flagged when another image's labels agree at least this much better


def overall_dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """The share of the two maps' labelled pixels that carry the same structure in both
    (2 |same structure| / (|labelled in a| + |labelled in b|)); None when both are empty."""
    fa, fb = a > 0, b > 0
    total = int(np.count_nonzero(fa)) + int(np.count_nonzero(fb))
    if not total:
        return None
    return 2.0 * int(np.count_nonzero(fa & (a == b))) / total


def wrong_images(
    inputs: _Inputs,
    thumbs: dict[int, np.ndarray],
    checked: set[tuple[int, FlagReason, str | None]],
    found: list[_Found],
    own_below: float = OWN_BELOW,
    gain: float = GAIN,
) -> list[_Found]:
    """The wrong-image flags of the checked human labels (each compared with the human labels
    of its own image and of the patient's other images; all need thumbnails). An image with a
    swap among ``found`` is left out: the swap explains why its labels disagree."""
    swapped = {f.image_id for f in found if f.reason == FlagReason.swap}
    by_patient: dict[int, list[_Label]] = defaultdict(list)
    for lab in inputs.checked:
        if (
            lab.kind == RaterKind.human
            and lab.annotation_id in thumbs
            and lab.image_id not in swapped
        ):
            by_patient[inputs.images[lab.image_id].patient].append(lab)
    flags = []
    for labels in by_patient.values():
        for lab in labels:
            own_labels = [
                o
                for o in labels
                if o.image_id == lab.image_id and o.annotation_id != lab.annotation_id
            ]
            if not own_labels:
                continue
            checked.add((lab.annotation_id, FlagReason.wrong_image, None))
            mine = thumbs[lab.annotation_id]
            own = max((overall_dice(mine, thumbs[o.annotation_id]) or 0.0) for o in own_labels)
            if own >= own_below:
                continue
            best, best_label = 0.0, None
            for o in labels:
                if o.image_id == lab.image_id:
                    continue
                d = overall_dice(mine, thumbs[o.annotation_id]) or 0.0
                if d > best:
                    best, best_label = d, o
            if best_label is None or best - own < gain:
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
    return flags
