"""A label's link to a draft inferred from overlap, when the tool lost it.

Label Studio links an annotation to the prediction it started from (``parent_prediction``),
but not when the rater's working copy was autosaved as a Label Studio draft and restored in a
later sitting: the submitted annotation then names no parent. A label that close to a draft
handed to that rater for that image still started from it, so it is stored as draft-started
(and ``agreement`` leaves it out like the others), with the link marked ``overlap`` and the
IoU per structure recorded.

The rule (``OVERLAP_RULE``): of the structures present in the label or the draft, more than
half have IoU >= ``MIN_IOU`` (0.9) between the two; a structure present in only one of them
has IoU 0. A label or draft with no structure at all is never linked by overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from datatool.core.protocol import Protocol

MIN_IOU = 0.9
OVERLAP_RULE = "IoU >= 0.9 on more than half of the structures present in the label or the draft"
OVERLAP = "overlap"  # Annotation.draft_link of a link inferred by overlap
ACCEPTED_UNCHANGED = "accepted unchanged"  # an ITK-SNAP draft stored with --accept-unchanged


def structure_ious(label: np.ndarray, draft: np.ndarray, protocol: Protocol) -> dict[str, float]:
    """IoU between label and draft of every protocol structure present in either (3
    decimals), in protocol order; a structure in only one of them has 0."""
    ious: dict[str, float] = {}
    for st in protocol.structures:
        a, b = label == st.value, draft == st.value
        union = int(np.count_nonzero(a | b))
        if union:
            ious[st.name] = round(int(np.count_nonzero(a & b)) / union, 3)
    return ious


def close_enough(ious: dict[str, float]) -> bool:
    """The overlap rule: more than half of the structures present reach ``MIN_IOU``."""
    return bool(ious) and 2 * sum(v >= MIN_IOU for v in ious.values()) > len(ious)


@dataclass(frozen=True)
class Closest:
    """The draft a label is linked to by overlap: its key (the caller's), and the IoUs."""

    key: object
    ious: dict[str, float]

    @property
    def mean(self) -> float:
        return sum(self.ious.values()) / len(self.ious)


def closest_draft(
    label: np.ndarray, drafts: Iterable[tuple[object, np.ndarray]], protocol: Protocol
) -> Closest | None:
    """Of ``drafts`` (key, label map of the label's shape), the one the label is close to by
    the overlap rule with the highest mean IoU (the first on a tie), or None."""
    best: Closest | None = None
    for key, draft in drafts:
        if draft.shape != label.shape:
            continue
        ious = structure_ious(label, draft, protocol)
        if close_enough(ious):
            found = Closest(key, ious)
            if best is None or found.mean > best.mean:
                best = found
    return best
