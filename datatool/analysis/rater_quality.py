"""``datatool raters``: each rater scored against the reference on their gold-standard tasks.

A gold task (``labels.gold``) is an image that had a reference label (a consensus or another
rater) when it was handed to the rater among their ordinary tasks. Once the rater has labelled
it, their latest label version is compared with the reference version recorded at hand-out
(not a later one), per structure: IoU and Dice (``metrics.dice_iou``: a structure both left
empty is excluded and counted, one empty scores 0).

Drift: the rater's labelled gold images in the order they were labelled, split into a first
and a second half (the middle image of an odd number is in neither); drift is the mean Dice of
the second half minus that of the first (negative: worse lately). It needs at least two
labelled gold images and a scored pair in each half. The order: when every one of the rater's
gold labels came from a Label Studio server, by the server's annotation id (given as each
annotation is submitted, so the labelling order even when they were all synced at once);
otherwise by when each label reached the catalogue (the version's time, then its id), which
for ITK-SNAP is the time of the sync that found it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from datatool.analysis import metrics
from datatool.core.catalogue import GoldTask, Rater
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, latest_annotations_query

ALL = "all structures"
_SERVER_REF = re.compile(r"^project \d+ task \d+ annotation (\d+)$")  # labelstudio sync

CONVENTIONS: dict[str, str] = {
    "label": "the rater's latest label version of each gold image",
    "reference": "the reference label version recorded when the image was handed as gold",
    "dice_iou": "pairs where both left the structure empty are excluded (both_absent); one "
    "empty gives 0; 'all structures' pools every scored (image, structure) pair",
    "drift": "mean Dice of the second half of the rater's labelled gold images minus the first "
    "half, in the order labelled (Label Studio annotation ids when all came from a server, "
    "else when each label reached the catalogue); the middle one of an odd number is in "
    "neither half",
}


@dataclass
class GoldScore:
    """One rater's scores on one structure (or all pooled) over their labelled gold images."""

    structure: str
    images: int  # labelled gold images
    both_absent: int  # images where label and reference both leave it empty (not scored)
    one_absent: int  # images where one of them leaves it empty (scored 0)
    iou: dict  # metrics.describe of the per-image IoU
    dice: dict
    dice_first_half: float | None  # mean Dice of the first half (by time labelled)
    dice_second_half: float | None
    drift: float | None  # second half minus first half (None: not enough in a half)


@dataclass
class RaterGold:
    rater: str
    references: list[str]  # the reference raters of their gold images
    handed: int  # gold images handed to the rater
    labelled: int  # of them, labelled by the rater
    half: int  # labelled gold images in each half for drift
    reference_newer: int  # gold images whose reference has a newer version since hand-out
    structures: list[GoldScore]
    overall: GoldScore  # every structure pooled


@dataclass
class RaterQuality:
    raters: list[RaterGold]
    conventions: dict[str, str] = field(default_factory=lambda: dict(CONVENTIONS))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


Pair = tuple[float, float] | None  # (Dice, IoU); None: both empty


def _score(name: str, pairs: list[tuple[Pair, int]], ones: int, n: int, half: int) -> GoldScore:
    """Scores from (Dice, IoU) pairs, each with the position in time of its image among the
    rater's ``n`` labelled gold images."""
    first = [p[0] for p, k in pairs if p and k < half]
    second = [p[0] for p, k in pairs if p and k >= n - half] if half else []
    d1, d2 = _mean(first), _mean(second)
    return GoldScore(
        structure=name,
        images=n,
        both_absent=sum(p is None for p, _ in pairs),
        one_absent=ones,
        iou=metrics.describe([p[1] for p, _ in pairs if p]),
        dice=metrics.describe([p[0] for p, _ in pairs if p]),
        dice_first_half=d1,
        dice_second_half=d2,
        drift=None if d1 is None or d2 is None else d2 - d1,
    )


def _server_id(source_ref: str | None) -> int | None:
    """The Label Studio annotation id of a label synced from a server, else None."""
    match = _SERVER_REF.match(source_ref or "")
    return int(match.group(1)) if match else None


def rater_quality(ws: Workspace, rater: str | None = None) -> RaterQuality:
    """Per rater with gold tasks (or only ``rater``), per structure: IoU and Dice against the
    reference, the number of gold images, and drift (see the module docstring)."""
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        query = select(GoldTask).order_by(GoldTask.rater_id, GoldTask.image_id)
        if rater is not None:
            query = query.where(GoldTask.rater_id == get_rater(s, rater).id)
        rows = list(s.scalars(query))
        names = dict(s.execute(select(Rater.id, Rater.name)).all())
        raters = sorted({g.rater_id for g in rows}, key=lambda i: names[i])
        labels = {
            (a.image_id, a.rater_id): (a.created_at, a.id, a.mask_hash, _server_id(a.source_ref))
            for a in s.scalars(latest_annotations_query(raters))
        }
        references = {g.id: (g.reference.rater_id, g.reference.mask_hash) for g in rows}
        latest_reference = {
            (a.image_id, a.rater_id): a.id
            for a in s.scalars(
                latest_annotations_query(sorted({r for r, _ in references.values()}))
            )
        }
        newer = {
            g.id
            for g in rows
            if latest_reference.get((g.image_id, references[g.id][0]), g.reference_annotation_id)
            != g.reference_annotation_id
        }
    result = []
    for rid in raters:
        mine = [g for g in rows if g.rater_id == rid]
        found = [(labels[(g.image_id, rid)], g) for g in mine if (g.image_id, rid) in labels]
        by_server = all(label[3] is not None for label, _ in found)
        done = sorted(found, key=lambda x: (x[0][3],) if by_server else x[0][:2])
        n, half = len(done), len(done) // 2
        per: dict[str, list[tuple[Pair, int]]] = {st.name: [] for st in protocol.structures}
        ones = dict.fromkeys(per, 0)
        for k, ((_, _, mask_hash, _), g) in enumerate(done):
            label = ws.store.get_array(mask_hash)
            answer = ws.store.get_array(references[g.id][1])
            for st in protocol.structures:
                a, b = label == st.value, answer == st.value
                area_a, area_b = int(a.sum()), int(b.sum())
                per[st.name].append(
                    (metrics.dice_iou(area_a, area_b, int(np.count_nonzero(a & b))), k)
                )
                ones[st.name] += (area_a == 0) != (area_b == 0)
        pooled = [item for pairs in per.values() for item in pairs]
        result.append(
            RaterGold(
                rater=names[rid],
                references=sorted({names[references[g.id][0]] for g in mine}),
                handed=len(mine),
                labelled=n,
                half=half,
                reference_newer=sum(g.id in newer for g in mine),
                structures=[_score(x, pairs, ones[x], n, half) for x, pairs in per.items()],
                overall=_score(ALL, pooled, sum(ones.values()), n, half),
            )
        )
    return RaterQuality(result)
