"""Errors planted at known places in a rated demo workspace, to measure the review queue
(``bench/qa.py --planted`` and its small version in the tests).

Each planted error is a new version of one rater's label of one image (each on its own image):

* ``missed``: a structure left out;
* ``swap``: two structures' labels exchanged;
* ``shift``: a structure moved by 3 mm;
* ``dilation``: a structure's boundary drawn 2 mm wide (over its neighbours, as a brush does);
* ``blob``: a stray disc (2.5 mm radius) of a structure that must be one piece, away from it;
* ``wrong_image``: the label replaced by the same rater's label of another image of the patient.

And a share of the images are *shown mirrored*: every rater's label flipped left to right, as
if the image had been displayed with the probe marker on the other side (the label itself is
right, the display convention is not the workspace's).

:func:`score` reads the queue: a flag *finds* a planted error when it is on the error's image
and structure (any structure for a wrong image), and an item of the queue is a *hit* when its
image holds a planted error, or it is the mirrored flag of a mirrored image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from sqlalchemy import select

from datatool.analysis.qa import list_queue
from datatool.core.catalogue import Image, Rater, RaterKind, Series, Study
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import latest_annotations_query, store_annotation

KINDS = ("missed", "swap", "shift", "dilation", "blob", "wrong_image")
SHIFT_MM, DILATION_MM, BLOB_MM = 3.0, 2.0, 2.5


@dataclass(frozen=True)
class Planted:
    kind: str
    image_id: int
    rater: str
    structures: tuple[str, ...]  # the structures changed (none for a wrong image)


@dataclass
class Plan:
    planted: list[Planted]
    mirrored: list[int]  # images shown mirrored
    images: int  # labelled images


@dataclass
class Score:
    recall: dict[str, float]  # per kind (and "mirrored": the mirrored images with their flag)
    found: dict[str, int]
    planted: dict[str, int]
    k: int  # errors planted plus images mirrored
    precision_at_k: float
    queue: int  # open items
    queue_per_image: float
    mirrored_extra: int  # flags on mirrored images besides their own mirrored flag
    elsewhere: int  # open items on images where nothing was planted nor mirrored
    missed: list[Planted] = field(default_factory=list)


def _disc(radius_px: float) -> np.ndarray:
    r = max(1, math.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= radius_px * radius_px


def plant(
    ws: Workspace,
    per_kind: int,
    mirrored_share: float = 0.05,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
) -> Plan:
    """Plant ``per_kind`` errors of every kind (each on its own image, a random rater's label)
    and mirror ``mirrored_share`` of the other images, as new label versions."""
    rng = np.random.default_rng(seed)
    protocol = load_protocol(ws.protocol_name)
    names = {s.value: s.name for s in protocol.structures}
    one_piece = [s.value for s in protocol.structures if s.max_components == 1]
    with ws.session() as s:
        sub = latest_annotations_query().subquery()
        rows = s.execute(
            select(sub.c.image_id, Rater.name, sub.c.mask_hash)
            .join(Rater, Rater.id == sub.c.rater_id)
            .where(Rater.kind == RaterKind.human)
            .order_by(sub.c.image_id, Rater.name)
        ).all()
        labels: dict[int, dict[str, str]] = defaultdict(dict)
        for image_id, rater, mask_hash in rows:
            labels[image_id][rater] = mask_hash
        meta = {
            i: (mm, patient)
            for i, mm, patient in s.execute(
                select(Image.id, Image.mm_per_px_x, Study.patient_id)
                .join(Series, Series.id == Image.series_id)
                .join(Study, Study.id == Series.study_id)
            )
        }
    images = sorted(i for i, by in labels.items() if len(by) >= 2)
    order = [images[int(k)] for k in rng.permutation(len(images))]
    by_patient: dict[int, list[int]] = defaultdict(list)
    for i in images:
        by_patient[meta[i][1]].append(i)
    planted: list[Planted] = []
    changes: list[tuple[int, str, np.ndarray]] = []
    used: set[int] = set()
    pool = iter(order)
    for kind in kinds:
        n = 0
        while n < per_kind:
            image_id = next(pool, None)
            if image_id is None:
                break
            raters = sorted(labels[image_id])
            rater = raters[int(rng.integers(len(raters)))]
            label = ws.store.get_array(labels[image_id][rater]).copy()
            px_per_mm = 1.0 / (meta[image_id][0] or 0.25)
            present = [v for v in names if np.any(label == v)]
            changed = _plant_one(kind, label, present, one_piece, px_per_mm, rng)
            if kind == "wrong_image":
                others = [i for i in by_patient[meta[image_id][1]] if i != image_id]
                if not others:
                    continue
                other = others[int(rng.integers(len(others)))]
                label = ws.store.get_array(labels[other][rater]).copy()
                changed = ()
            if changed is None:
                continue
            used.add(image_id)
            planted.append(Planted(kind, image_id, rater, tuple(names[v] for v in changed)))
            changes.append((image_id, rater, label))
            n += 1
    rest = [i for i in order if i not in used]
    mirrored = sorted(rest[: round(mirrored_share * len(images))])
    for image_id in mirrored:
        for rater, mask_hash in labels[image_id].items():
            changes.append(
                (image_id, rater, np.ascontiguousarray(ws.store.get_array(mask_hash)[:, ::-1]))
            )
    with ws.session() as s:
        by_name = {r.name: r for r in s.scalars(select(Rater))}
        for image_id, rater, label in changes:
            store_annotation(
                s,
                ws.store,
                s.get_one(Image, image_id),
                by_name[rater],
                label,
                "itksnap",
                None,
                protocol,
            )
    return Plan(planted, mirrored, len(images))


def _plant_one(
    kind: str,
    label: np.ndarray,
    present: list[int],
    one_piece: list[int],
    px_per_mm: float,
    rng: np.random.Generator,
) -> tuple[int, ...] | None:
    """Change ``label`` in place; the values changed, or None when the label has no room for
    this kind of error."""
    if kind == "wrong_image":
        return ()
    if not present:
        return None
    value = present[int(rng.integers(len(present)))]
    mask = label == value
    if kind == "missed":
        label[mask] = 0
        return (value,)
    if kind == "swap":
        if len(present) < 2:
            return None
        other = [v for v in present if v != value][int(rng.integers(len(present) - 1))]
        was_other = label == other
        label[mask], label[was_other] = other, value
        return (value, other)
    if kind == "shift":
        angle = rng.uniform(0, 2 * math.pi)
        dx = round(SHIFT_MM * px_per_mm * math.cos(angle))
        dy = round(SHIFT_MM * px_per_mm * math.sin(angle))
        moved = np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
        label[mask] = 0
        label[moved] = value
        return (value,)
    if kind == "dilation":
        wide = ndimage.binary_dilation(mask, structure=_disc(DILATION_MM * px_per_mm))
        label[wide] = value  # drawn over its neighbours, as a brush does
        return (value,)
    if kind == "blob":
        choices = [v for v in present if v in one_piece]
        if not choices:
            return None
        value = choices[int(rng.integers(len(choices)))]
        mask = label == value
        radius = BLOB_MM * px_per_mm
        far = ~ndimage.binary_dilation(mask, iterations=int(6 * radius))
        ys, xs = np.nonzero(far & (label == 0))
        inner = (ys > 60) & (ys < label.shape[0] - 40) & (np.abs(xs - label.shape[1] / 2) < 120)
        ys, xs = ys[inner], xs[inner]
        if not len(ys):
            return None
        k = int(rng.integers(len(ys)))
        disc = _disc(radius)
        r = disc.shape[0] // 2
        y, x = int(ys[k]), int(xs[k])
        window = label[y - r : y + r + 1, x - r : x + r + 1]
        if window.shape != disc.shape:
            return None
        window[disc & (window == 0)] = value
        return (value,)
    raise ValueError(kind)


def score(ws: Workspace, plan: Plan) -> Score:
    """Recall per kind, precision at k and the queue's length, from the open queue."""
    queue = list_queue(ws, limit=0)
    by_image: dict[int, list] = defaultdict(list)
    for it in queue.items:
        by_image[it.image_id].append(it)
    found: dict[str, int] = defaultdict(int)
    planted: dict[str, int] = defaultdict(int)
    missed = []
    for p in plan.planted:
        planted[p.kind] += 1
        items = by_image.get(p.image_id, [])
        hit = any(p.kind == "wrong_image" or it.structure in p.structures for it in items)
        if hit:
            found[p.kind] += 1
        else:
            missed.append(p)
    mirrored = set(plan.mirrored)
    planted["mirrored"] = len(mirrored)
    found["mirrored"] = sum(
        1 for i in mirrored if any(it.reason == "mirrored" for it in by_image.get(i, []))
    )
    extra = sum(1 for i in mirrored for it in by_image.get(i, []) if it.reason != "mirrored") + sum(
        max(0, sum(1 for it in by_image.get(i, []) if it.reason == "mirrored") - 1)
        for i in mirrored
    )
    errors = {p.image_id for p in plan.planted}
    k = len(plan.planted) + len(mirrored)
    hits = sum(
        1
        for it in queue.items[:k]
        if it.image_id in errors or (it.image_id in mirrored and it.reason == "mirrored")
    )
    return Score(
        recall={kind: found[kind] / planted[kind] for kind in planted if planted[kind]},
        found=dict(found),
        planted=dict(planted),
        k=k,
        precision_at_k=hits / k if k else 1.0,
        queue=queue.total,
        queue_per_image=queue.total / plan.images if plan.images else 0.0,
        mirrored_extra=extra,
        elsewhere=sum(1 for it in queue.items if it.image_id not in errors | mirrored),
        missed=missed,
    )
