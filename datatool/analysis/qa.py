"""``datatool qa``: a review queue of suspicious labels.

:func:`run_qa` checks the latest label version of every human rater and consensus (or of the
raters named) and keeps one flag per (label version, structure, reason) in the catalogue
(``qa_flags``), each with the numbers behind it and a severity (``shape``: how far the evidence
lies past its threshold, 1 for a clear-cut case). The checks, per structure:

* ``model_disagreement``: Dice with the run's whole-image draft below ``model_dice_below``, or
  present in one and absent in the other (needs ``run``);
* ``rater_disagreement``: Dice with another human rater's latest label below
  ``rater_dice_below``, or present for one and absent for the other (the lower Dice when there
  are several other raters);
* ``swap``: the structure lies on the other rater's (or the model's) *different* structure far
  more than on its own (at least half of it, and three times as much);
* ``components``, ``holes``, ``edge``: more pieces than the protocol allows, holes in a solid
  structure, a structure that lies in the view touching the image edge or the blanked area;
* ``size``: the area (mm², pixels for uncalibrated images) far from the structure's median over
  every latest human and consensus label of the workspace (robust z-score beyond
  ``size_z_above``);
* ``anatomy``: a relation of the protocol broken on the centroids (superficial, deep, lateral,
  medial; the image's lateral side from the series' leg and the protocol's display convention).

Re-running adds no duplicate: an open flag found again gets its evidence refreshed; a flag a
reviewer closed stays closed; an open flag that the same check no longer finds on the same label
version is *cleared* (and reopened if it comes back). A new version of a label closes the open
flags of the old one (``labels.annotations``), and the checks sweep up any left. Everything is
audited. The masks are read once per image, in worker processes for large workspaces; the
analysis package does not import the model, so the caller passes the function that makes the
run's drafts (``learning.inference.ensure_drafts``).
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
from sqlalchemy import select

from datatool.analysis import shape
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    FlagReason,
    FlagStatus,
    Image,
    QAFlag,
    Rater,
    RaterKind,
    Run,
    Series,
    StructureStats,
    audit,
    current_user,
    utcnow,
)
from datatool.core.csvcells import csv_writer
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.flags import Resolution, describe
from datatool.core.processes import pool_context, worker_count
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.store import Store
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, in_chunks, latest_annotations_query
from datatool.labels.drafts import drafts_of, model_rater_name
from datatool.labels.matching import image_name

POOL_FROM = 200  # images; below this, checking in this process is faster than a pool
REASON_ORDER = list(FlagReason)  # ties in severity: this order (swap and model first)
REPORT_TOP = 20


# --------------------------------------------------------------------------- results


@dataclass
class Thresholds:
    """The thresholds of the checks (the defaults are in ``shape``)."""

    model_dice_below: float = shape.MODEL_DICE_BELOW
    rater_dice_below: float = shape.RATER_DICE_BELOW
    size_z_above: float = shape.SIZE_Z_ABOVE
    swap_min_share: float = shape.SWAP_MIN_SHARE
    swap_ratio: float = shape.SWAP_RATIO
    min_hole_px: int = shape.MIN_HOLE_PX
    min_present_px: int = shape.MIN_PRESENT_PX

    def check(self) -> None:
        for name in ("model_dice_below", "rater_dice_below"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must lie in (0, 1], got {value}")
        if not self.size_z_above > 0:
            raise UsageError(f"--size-z-above must be above 0, got {self.size_z_above}")


@dataclass
class ReasonCount:
    """What one run of the checks did for one reason."""

    reason: FlagReason
    found: int  # flags the checks found now (new or already there)
    new: int
    reopened: int  # cleared before, found again
    kept_closed: int  # found again on a label version a reviewer already closed
    cleared: int  # open before, no longer found on the same label version
    open: int  # open flags of this reason in the queue now (all raters)


@dataclass
class QARun:
    """What ``datatool qa`` checked and what the queue holds now."""

    run: int | None  # the model run compared with (None: no model checks)
    raters: list[str]  # whose latest labels were checked
    labels: int  # label versions checked
    images: int
    drafts_predicted: int  # images the run drafted now (0 without a run)
    drafts_reused: int
    thresholds: Thresholds
    reasons: list[ReasonCount]
    superseded: int  # open flags of replaced label versions closed now
    open: int  # open flags in the queue now
    # per structure, the median Dice of the run's drafts with the labels (model_agreement);
    # the model is not compared on a structure below --model-dice-below (a note says so)
    model_agreement: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class QueueItem:
    """One flag, as the queue lists it."""

    rank: int
    flag: int
    image: str
    image_id: int
    rater: str
    version: int
    annotation_id: int
    structure: str
    reason: FlagReason
    severity: float
    status: FlagStatus
    summary: str  # the evidence in words
    evidence: dict[str, Any]
    run: int | None
    created: str
    resolved: str | None = None
    resolved_by: str | None = None
    note: str | None = None


@dataclass
class Queue:
    """Flags ranked worst first: by severity (how far the evidence lies past its threshold,
    1 for a clear-cut case), ties by reason (in FlagReason order), image and structure."""

    status: str | None  # None: every status
    reasons: list[str]
    raters: list[str]
    total: int  # items matching before the limit
    items: list[QueueItem]
    by_reason: dict[str, int]  # matching items per reason


@dataclass
class Resolved:
    flag: int
    image: str
    rater: str
    structure: str
    reason: FlagReason
    status: FlagStatus
    note: str
    resolved_by: str


@dataclass
class QAReport:
    out_dir: str
    csv: str
    page: str
    items: int  # open items in the CSV
    thumbnails: list[str]  # PNG per item shown on the page (the worst first)


class DraftMaker(TypingProtocol):
    """Makes the run's missing whole-image drafts: ``learning.inference.ensure_drafts``."""

    def __call__(
        self,
        ws: Workspace,
        run_id: int,
        image_ids: Sequence[int],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any: ...


# --------------------------------------------------------------------------- reading


@dataclass
class _Label:
    annotation_id: int
    image_id: int
    rater: str
    kind: str
    version: int
    mask_hash: str


@dataclass
class _ImageInfo:
    rows: int
    cols: int
    mm: tuple[float | None, float | None]
    regions: list[dict] | None  # the view, when the pixels outside were blanked
    side: str | None


@dataclass
class _Inputs:
    checked: list[_Label]  # the latest labels to check
    humans: dict[int, list[_Label]]  # image -> latest human labels (comparisons)
    images: dict[int, _ImageInfo]
    stats: dict[int, dict[int, tuple]]  # annotation -> value -> (area px, mm², comps, box)
    spreads: dict[tuple[str, str], shape.Spread | None]  # (structure, unit) -> usual size
    drafts: dict[int, _Label]  # image -> the run's draft
    raters: list[str]


def _latest_labels(session, kinds: Sequence[str]) -> list[_Label]:
    sub = latest_annotations_query().subquery()
    return [
        _Label(*row)
        for row in session.execute(
            select(sub.c.id, sub.c.image_id, Rater.name, Rater.kind, sub.c.version, sub.c.mask_hash)
            .join(Rater, Rater.id == sub.c.rater_id)
            .where(Rater.kind.in_(list(kinds)))
            .order_by(sub.c.image_id, Rater.name)
        )
    ]


def _stats(session, annotation_ids: Sequence[int]) -> dict[int, dict[int, tuple]]:
    found: dict[int, dict[int, tuple]] = defaultdict(dict)
    for chunk in in_chunks(sorted(set(annotation_ids))):
        rows = session.execute(
            select(
                StructureStats.annotation_id,
                StructureStats.value,
                StructureStats.area_px,
                StructureStats.area_mm2,
                StructureStats.components,
                StructureStats.x0,
                StructureStats.y0,
                StructureStats.x1,
                StructureStats.y1,
            ).where(StructureStats.annotation_id.in_(chunk))
        )
        for ann, value, area, mm2, comps, x0, y0, x1, y1 in rows:
            found[ann][value] = (area, mm2, comps, (x0, y0, x1, y1) if area else None)
    return dict(found)


def _image_info(session, image_ids: Sequence[int]) -> dict[int, _ImageInfo]:
    found = {}
    for chunk in in_chunks(sorted(set(image_ids))):
        for row in session.execute(
            select(
                Image.id,
                Image.rows,
                Image.cols,
                Image.mm_per_px_x,
                Image.mm_per_px_y,
                Image.regions,
                Image.pixel_handling,
                Series.side,
            )
            .join(Series, Series.id == Image.series_id)
            .where(Image.id.in_(chunk))
        ):
            blanked = row.pixel_handling == "blanked_outside_regions" and row.regions
            found[row.id] = _ImageInfo(
                row.rows,
                row.cols,
                (row.mm_per_px_x, row.mm_per_px_y),
                list(row.regions) if blanked else None,
                row.side,
            )
    return found


def _spreads(
    protocol: Protocol, labels: list[_Label], stats, images: dict[int, _ImageInfo]
) -> dict[tuple[str, str], shape.Spread | None]:
    """Each structure's usual area over every latest human and consensus label: mm² over the
    calibrated images, px over the others."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for label in labels:
        calibrated = all(images[label.image_id].mm)
        for s in protocol.structures:
            area_px, area_mm2, _, _ = stats[label.annotation_id][s.value]
            if area_px:
                unit = "mm2" if calibrated and area_mm2 is not None else "px"
                values[(s.name, unit)].append(area_mm2 if unit == "mm2" else area_px)
    return {key: shape.Spread.of(v) for key, v in values.items()}


def _read_inputs(
    ws: Workspace,
    protocol: Protocol,
    raters: Sequence[str] | None,
    run: int | None,
    drafts: DraftMaker | None,
    notes: list[str],
    progress: Callable[[int, int], None] | None,
) -> tuple[_Inputs, int, int]:
    with ws.session() as s:
        if raters:
            wanted = []
            for name in raters:
                r = get_rater(s, name)
                if r.kind not in (RaterKind.human, RaterKind.consensus):
                    raise UsageError(
                        f"rater {r.name} is a {r.kind}: qa checks human and consensus labels"
                    )
                wanted.append(r.name)
        if run is not None and s.get(Run, run) is None:
            raise UsageError(f"no run {run} in this catalogue: see 'datatool runs'")
        every = _latest_labels(s, [RaterKind.human, RaterKind.consensus])
        checked = [lab for lab in every if not raters or lab.rater in wanted]
        if not checked:
            who = ", ".join(raters) if raters else "any human or consensus rater"
            raise DatatoolError(f"no labels of {who} to check: sync some labels first")
        humans: dict[int, list[_Label]] = defaultdict(list)
        for lab in every:
            if lab.kind == RaterKind.human:
                humans[lab.image_id].append(lab)
        image_ids = sorted({lab.image_id for lab in checked})
        images = _image_info(s, [lab.image_id for lab in every])
        stats = _stats(s, [lab.annotation_id for lab in every])
    predicted = reused = 0
    draft_labels: dict[int, _Label] = {}
    if run is not None:
        checkpoint = None  # without a draft maker: the newest stored draft of any checkpoint
        if drafts is not None:
            made = drafts(ws, run, image_ids, progress=progress)
            predicted, reused, checkpoint = made.predicted, made.reused, made.checkpoint
        with ws.session() as s:
            found = drafts_of(s, run, image_ids, checkpoint=checkpoint)
            if drafts is None:
                reused = len(found)
            draft_labels = {
                i: _Label(a.id, i, model_rater_name(run), RaterKind.model, a.version, a.mask_hash)
                for i, a in found.items()
            }
            stats.update(_stats(s, [a.annotation_id for a in draft_labels.values()]))
        missing = len(image_ids) - len(draft_labels)
        if missing:
            notes.append(
                f"{missing} of {len(image_ids)} images have no draft of run {run}: not compared "
                "with the model"
            )
    else:
        notes.append("no model checks: pass --run RUN to compare the labels with a run's drafts")
    spreads = _spreads(protocol, every, stats, images)
    inputs = _Inputs(
        checked=checked,
        humans=dict(humans),
        images=images,
        stats=stats,
        spreads=spreads,
        drafts=draft_labels,
        raters=sorted({lab.rater for lab in checked}),
    )
    return inputs, predicted, reused


# --------------------------------------------------------------------------- measuring

_WORKER: dict[str, Any] = {}


def _init_worker(store_root: str, specs: tuple, related: frozenset[int], swap_ratio: float) -> None:
    """``specs``: (value, max components, holes allowed, in view) per structure; ``related``:
    the values of the structures that relations name (their centroids are needed)."""
    _WORKER["store"] = Store(Path(store_root))
    _WORKER["specs"] = specs
    _WORKER["related"] = related
    _WORKER["swap_ratio"] = swap_ratio


def _measure_image(job: tuple) -> tuple[int, dict]:
    """Every measure of one image's checked labels (the masks read once): per label and
    structure present, its centroid, extra components, holes, edge contact and, for each
    label it is compared with, which values of that label the structure's pixels hold."""
    image_id, shape_rc, regions, labels, hashes, stats = job
    store: Store = _WORKER["store"]
    specs, related, ratio = _WORKER["specs"], _WORKER["related"], _WORKER["swap_ratio"]
    masks = {a: store.get_array(h) for a, h in hashes.items()}
    out: dict[int, dict] = {}
    for annotation_id, compared in labels:
        label = masks[annotation_id]
        per: dict[int, dict] = {}
        for value, max_components, holes_allowed, in_view in specs:
            area, _, components, box = stats[annotation_id][value]
            if not area:
                continue
            binary = shape.crop(label, box) == value
            rec: dict[str, Any] = {}
            if value in related:
                rec["centroid"] = shape.centroid(binary, box[0], box[1])
            if max_components is not None and components > max_components:
                rec["components"] = shape.extra_component_px(binary, max_components)
            if not holes_allowed:
                rec["holes"] = shape.holes(binary)
            if in_view and not shape.inside_view(box, shape_rc, regions):
                near = shape.near_outside(shape_rc, regions)
                rec["edge"] = shape.edge_contact(binary, shape.crop(near, box))
            rec["vs"] = {
                other: shape.cross_counts(binary, shape.crop(masks[other], box), value, ratio, area)
                for other in compared
            }
            per[value] = rec
        out[annotation_id] = per
    return image_id, out


def _jobs(inputs: _Inputs) -> list[tuple]:
    """One job per image: its labels to check, each with the labels it is compared with (the
    human raters' labels but its own, and the draft)."""
    by_image: dict[int, list[_Label]] = defaultdict(list)
    for lab in inputs.checked:
        by_image[lab.image_id].append(lab)
    jobs = []
    for image_id, labels in sorted(by_image.items()):
        info = inputs.images[image_id]
        draft = inputs.drafts.get(image_id)
        hashes: dict[int, str] = {}
        checks = []
        for lab in labels:
            compared = [*_backers(inputs, lab), *([draft] if draft is not None else [])]
            checks.append((lab.annotation_id, [c.annotation_id for c in compared]))
            for x in (lab, *compared):
                hashes[x.annotation_id] = x.mask_hash
        jobs.append(
            (
                image_id,
                (info.rows, info.cols),
                info.regions,
                checks,
                hashes,
                {i: inputs.stats[i] for i in hashes},
            )
        )
    return jobs


def _backers(inputs: _Inputs, lab: _Label) -> list[_Label]:
    """The human labels of the image that may back this one (all but itself)."""
    return [o for o in inputs.humans.get(lab.image_id, []) if o.annotation_id != lab.annotation_id]


def _others(inputs: _Inputs, lab: _Label) -> list[_Label]:
    """The other human raters' latest labels of the image, which a human label is checked
    against (none for a consensus label, which is made from them)."""
    if lab.kind != RaterKind.human:
        return []
    return [o for o in inputs.humans.get(lab.image_id, []) if o.annotation_id != lab.annotation_id]


def _measure(
    ws: Workspace,
    protocol: Protocol,
    jobs: list[tuple],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
    swap_ratio: float = shape.SWAP_RATIO,
) -> dict[int, dict]:
    specs = tuple((s.value, s.max_components, s.holes, s.in_view) for s in protocol.structures)
    related = frozenset(
        protocol.by_label(name).value for r in protocol.relations for name in (r.structure, r.other)
    )
    n = worker_count(workers, cap=8)
    results: dict[int, dict] = {}
    if len(jobs) >= POOL_FROM and n > 1:
        with pool_context().Pool(
            n, initializer=_init_worker, initargs=(str(ws.store.root), specs, related, swap_ratio)
        ) as pool:
            for k, (_, out) in enumerate(pool.imap(_measure_image, jobs, chunksize=64), 1):
                results.update(out)
                if progress:
                    progress(k, len(jobs))
    else:
        _init_worker(str(ws.store.root), specs, related, swap_ratio)
        for k, job in enumerate(jobs, 1):
            results.update(_measure_image(job)[1])
            if progress:
                progress(k, len(jobs))
    return results


# --------------------------------------------------------------------------- rules


@dataclass
class _Found:
    annotation_id: int
    image_id: int
    structure: str
    reason: FlagReason
    severity: float
    evidence: dict[str, Any]
    run: int | None = None


def _add(
    found: list[_Found],
    lab: _Label,
    structure: str,
    reason: FlagReason,
    severity: float,
    run_id: int | None = None,
    **evidence: Any,
) -> None:
    found.append(
        _Found(lab.annotation_id, lab.image_id, structure, reason, severity, evidence, run_id)
    )


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def _agreement(
    flag: Callable[..., None],
    name: str,
    value: int,
    area: int,
    rec: dict | None,
    others: list[_Label],
    backers: list[_Label],
    draft: _Label | None,
    inputs: _Inputs,
    t: Thresholds,
    run: int | None,
    values: list[int],
    name_of: dict[int, str],
) -> None:
    """The comparison flags of one structure of one label: a swap (the strongest against any
    comparison label), the disagreement with the model and with the other raters. A swap
    explains the low Dice with the label it was found against, so that label's disagreement
    is not flagged again. A second opinion halves a severity, as the other label is then the
    likelier culprit: where the model's draft backs the label (Dice at or above the model
    threshold, or absent in both), disagreements with another rater and swaps against one
    count half; where a human rater backs it (``backers``: Dice at or above the rater
    threshold, or absent in both), its disagreement with the model counts half."""

    def overlap(o: _Label) -> int:
        return rec["vs"][o.annotation_id].get(value, 0) if rec else 0

    def raters_backing() -> list[str]:
        found = []
        for o in backers:
            other_area = inputs.stats[o.annotation_id][value][0]
            d = shape.dice(area, other_area, overlap(o))
            if d is None or d >= t.rater_dice_below:
                found.append(o.rater)
        return found

    backed: float | None = None  # the label's Dice with the draft, when the draft backs it
    model_flag: tuple[float, float | None, int] | None = None  # severity, Dice, draft's area
    if draft is not None:
        model_area = inputs.stats[draft.annotation_id][value][0]
        if area or model_area >= t.min_present_px:
            d = shape.dice(area, model_area, overlap(draft))
            sev = shape.disagreement(d, t.model_dice_below)
            if sev is None:
                backed = d
            else:
                model_flag = (sev, d, model_area)
        else:
            backed = 1.0  # absent in both
    best = None
    swapped_with = set()  # the labels a swap was found against
    if rec is not None:
        for o in [*others, *([draft] if draft is not None else [])]:
            sw = shape.swap(
                rec["vs"][o.annotation_id], value, area, values, t.swap_min_share, t.swap_ratio
            )
            if sw is not None:
                swapped_with.add(o.annotation_id)
                if best is None or sw.severity > best[0].severity:
                    best = (sw, o)
    half = 0.5 if backed is not None else 1.0
    backing = {} if backed is None else {"model_backs": True, "model_dice": _r(backed)}
    if best is not None:
        sw, o = best
        is_model = o.kind == RaterKind.model
        flag(
            name,
            FlagReason.swap,
            sw.severity * (1.0 if is_model else half),
            run_id=run if is_model else None,
            lies_on=name_of[sw.other_value],
            source=o.rater,
            source_annotation=o.annotation_id,
            share_on_other=_r(sw.share_other),
            share_on_own=_r(sw.share_own),
            area_px=area,
            **({} if is_model else backing),
        )
    if draft is not None and model_flag is not None and draft.annotation_id not in swapped_with:
        sev, d, model_area = model_flag
        raters_back = raters_backing()
        flag(
            name,
            FlagReason.model_disagreement,
            sev * (0.5 if raters_back else 1.0),
            run_id=run,
            dice=_r(d),
            threshold=t.model_dice_below,
            area_px=area,
            run=run,
            model_annotation=draft.annotation_id,
            model_area_px=model_area,
            **({"raters_back": raters_back} if raters_back else {}),
        )
    worst: tuple[float, float | None, _Label, int] | None = None
    for o in others:
        other_area = inputs.stats[o.annotation_id][value][0]
        d = shape.dice(area, other_area, overlap(o))
        rater_sev = shape.disagreement(d, t.rater_dice_below)
        if rater_sev is not None and (worst is None or rater_sev > worst[0]):
            worst = (rater_sev, d, o, other_area)
    if worst is not None and worst[2].annotation_id not in swapped_with:
        sev, d, o, other_area = worst
        flag(
            name,
            FlagReason.rater_disagreement,
            sev * half,
            dice=_r(d),
            threshold=t.rater_dice_below,
            area_px=area,
            other_rater=o.rater,
            other_annotation=o.annotation_id,
            other_area_px=other_area,
            **backing,
        )


def model_agreement(
    protocol: Protocol, inputs: _Inputs, measures: dict[int, dict], t: Thresholds
) -> dict[str, tuple[float | None, int]]:
    """Per structure, the median Dice of the run's drafts with the labels checked (pairs where
    both leave it out excluded) and how many pairs: how far the model can be trusted on it."""
    dices: dict[str, list[float]] = defaultdict(list)
    for lab in inputs.checked:
        draft = inputs.drafts.get(lab.image_id)
        if draft is None:
            continue
        for s in protocol.structures:
            area = inputs.stats[lab.annotation_id][s.value][0]
            model_area = inputs.stats[draft.annotation_id][s.value][0]
            if not area and model_area < t.min_present_px:
                continue
            rec = measures.get(lab.annotation_id, {}).get(s.value)
            overlap = rec["vs"][draft.annotation_id].get(s.value, 0) if rec else 0
            d = shape.dice(area, model_area, overlap)
            if d is not None:
                dices[s.name].append(d)
    return {
        s.name: (float(np.median(dices[s.name])) if dices[s.name] else None, len(dices[s.name]))
        for s in protocol.structures
    }


def _evaluate(
    protocol: Protocol,
    inputs: _Inputs,
    measures: dict[int, dict],
    t: Thresholds,
    run: int | None,
    trusted: set[str],
) -> tuple[list[_Found], set[tuple[int, FlagReason, str | None]]]:
    """The flags the measures call for, and which checks ran: (annotation, reason, structure
    or None for every structure). The model is compared only on the ``trusted`` structures."""
    found: list[_Found] = []
    checked: set[tuple[int, FlagReason, str | None]] = set()
    values = [s.value for s in protocol.structures]
    name_of = {s.value: s.name for s in protocol.structures}
    relations = [
        (rel, protocol.by_label(rel.structure), protocol.by_label(rel.other))
        for rel in protocol.relations
    ]
    for lab in inputs.checked:
        per = measures.get(lab.annotation_id, {})
        st = inputs.stats[lab.annotation_id]
        info = inputs.images[lab.image_id]
        others = _others(inputs, lab)
        draft = inputs.drafts.get(lab.image_id)
        for reason in (FlagReason.components, FlagReason.holes, FlagReason.edge):
            checked.add((lab.annotation_id, reason, None))
        checked.add((lab.annotation_id, FlagReason.anatomy, None))
        if others:
            checked.add((lab.annotation_id, FlagReason.rater_disagreement, None))
        if draft is not None:  # also where the model is not trusted: its old flags go
            checked.add((lab.annotation_id, FlagReason.model_disagreement, None))
        if others or draft is not None:
            checked.add((lab.annotation_id, FlagReason.swap, None))

        flag = partial(_add, found, lab)

        # agreement with the other raters and the model, and swaps
        backers = _backers(inputs, lab)
        for s in protocol.structures:
            model = draft if s.name in trusted else None
            _agreement(flag, s.name, s.value, st[s.value][0], per.get(s.value), others, backers,
                       model, inputs, t, run, values, name_of)  # fmt: skip
        # shape
        for s in protocol.structures:
            rec = per.get(s.value)
            if rec is None:
                continue
            area = st[s.value][0]
            if "components" in rec:
                n, extra = rec["components"]
                flag(
                    s.name,
                    FlagReason.components,
                    shape.components_severity(extra, area),
                    components=n,
                    max_components=s.max_components,
                    outside_largest_px=extra,
                    area_px=area,
                )
            n_holes, hole_px = rec.get("holes", (0, 0))
            if hole_px >= t.min_hole_px and n_holes:
                flag(
                    s.name,
                    FlagReason.holes,
                    shape.holes_severity(hole_px, area),
                    holes=n_holes,
                    hole_px=hole_px,
                    area_px=area,
                )
            touching, boundary = rec.get("edge", (0, 0))
            if touching:
                flag(
                    s.name,
                    FlagReason.edge,
                    shape.edge_severity(touching, boundary),
                    touching_px=touching,
                    outline_px=boundary,
                    view="ultrasound region" if info.regions else "image",
                )
        # size
        calibrated = all(info.mm)
        for s in protocol.structures:
            area_px, area_mm2, _, _ = st[s.value]
            unit = "mm2" if calibrated and area_mm2 is not None else "px"
            spread = inputs.spreads.get((s.name, unit))
            if spread is None:
                continue
            checked.add((lab.annotation_id, FlagReason.size, s.name))
            if not area_px:
                continue
            value = area_mm2 if unit == "mm2" else area_px
            z = spread.z(value)
            sev = shape.size_severity(z, t.size_z_above)
            if sev is not None:
                flag(
                    s.name,
                    FlagReason.size,
                    sev,
                    area=_r(value, 2),
                    unit=unit,
                    median=_r(spread.median, 2),
                    mad=_r(spread.mad, 2),
                    robust_z=_r(z, 2),
                    threshold=t.size_z_above,
                    labels=spread.n,
                )
        # anatomy
        lateral = protocol.lateral_image_side(info.side)
        for rel, a, b in relations:
            if a.value not in per or b.value not in per:
                continue
            broken = shape.relation_check(
                rel,
                per[a.value]["centroid"],
                per[b.value]["centroid"],
                (st[a.value][0], st[b.value][0]),
                lateral,
                info.mm,
            )
            if broken is not None:
                flag(
                    a.name,
                    FlagReason.anatomy,
                    broken.severity,
                    relation=str(rel),
                    other=b.name,
                    wrong_by_px=_r(broken.wrong_by_px, 1),
                    wrong_by_mm=_r(broken.wrong_by_mm, 2),
                    centroid=[_r(v, 1) for v in per[a.value]["centroid"]],
                    other_centroid=[_r(v, 1) for v in per[b.value]["centroid"]],
                    leg=info.side,
                    lateral_side=lateral,
                )
    return found, checked


# --------------------------------------------------------------------------- recording


def _record(
    ws: Workspace,
    inputs: _Inputs,
    found: list[_Found],
    checked: set[tuple[int, FlagReason, str | None]],
) -> tuple[dict[FlagReason, dict[str, int]], int, int]:
    """Write the flags in one transaction: new ones added, open ones refreshed, cleared ones
    reopened, open ones no longer found cleared, flags of replaced versions superseded."""
    counts: dict[FlagReason, dict[str, int]] = {
        r: defaultdict(int) for r in FlagReason
    }  # found, new, reopened, kept_closed, cleared
    now, who = utcnow(), current_user()
    ids = sorted({lab.annotation_id for lab in inputs.checked})
    with ws.session() as s:
        existing: dict[tuple[int, str, str], QAFlag] = {}
        for chunk in in_chunks(ids):
            for flag in s.scalars(select(QAFlag).where(QAFlag.annotation_id.in_(chunk))):
                existing[(flag.annotation_id, flag.structure, flag.reason)] = flag
        added: list[QAFlag] = []
        changed: dict[str, list[int]] = defaultdict(list)
        seen = set()
        for f in found:
            key = (f.annotation_id, f.structure, f.reason.value)
            seen.add(key)
            c = counts[f.reason]
            c["found"] += 1
            old = existing.get(key)
            severity = round(float(f.severity), 4)
            if old is None:
                row = QAFlag(
                    image_id=f.image_id,
                    annotation_id=f.annotation_id,
                    structure=f.structure,
                    reason=f.reason.value,
                    severity=severity,
                    evidence=f.evidence,
                    run_id=f.run,
                    status=FlagStatus.open.value,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                added.append(row)
                c["new"] += 1
                continue
            if old.status == FlagStatus.cleared:
                old.status = FlagStatus.open.value
                old.resolved_at = old.resolved_by = old.note = None
                changed["reopened"].append(old.id)
                c["reopened"] += 1
            elif old.status != FlagStatus.open:
                c["kept_closed"] += 1
                continue
            if old.evidence != f.evidence or old.severity != severity or old.run_id != f.run:
                old.evidence, old.severity, old.run_id, old.updated_at = (
                    f.evidence,
                    severity,
                    f.run,
                    now,
                )
                changed["refreshed"].append(old.id)
        for key, old in existing.items():
            annotation_id, structure, reason = key
            if old.status != FlagStatus.open or key in seen:
                continue
            reason_enum = FlagReason(reason)
            if (annotation_id, reason_enum, None) in checked or (
                annotation_id,
                reason_enum,
                structure,
            ) in checked:
                old.status = FlagStatus.cleared.value
                old.resolved_at, old.resolved_by = now, who
                old.note = "a later check of the same label version no longer finds it"
                changed["cleared"].append(old.id)
                counts[reason_enum]["cleared"] += 1
        superseded = _sweep_superseded(s, now, who)
        s.flush()
        audit(
            s,
            "qa",
            "check",
            labels=len(ids),
            new=[row.id for row in added],
            reopened=changed["reopened"],
            cleared=changed["cleared"],
            refreshed=len(changed["refreshed"]),
            superseded=superseded,
        )
        open_by_reason: dict[str, int] = defaultdict(int)
        for (reason,) in s.execute(select(QAFlag.reason).where(QAFlag.status == FlagStatus.open)):
            open_by_reason[reason] += 1
    for r in FlagReason:
        counts[r]["open"] = open_by_reason.get(r.value, 0)
    return counts, len(superseded), sum(open_by_reason.values())


def _sweep_superseded(s, now, who) -> list[int]:
    """Open flags of label versions that are no longer the latest: superseded."""
    latest = latest_annotations_query().subquery()
    stale = list(
        s.scalars(
            select(QAFlag)
            .outerjoin(latest, latest.c.id == QAFlag.annotation_id)
            .where(QAFlag.status == FlagStatus.open, latest.c.id.is_(None))
        )
    )
    for f in stale:
        f.status = FlagStatus.superseded.value
        f.resolved_at, f.resolved_by = now, who
        f.note = "closed by a new version of the label"
    return [f.id for f in stale]


def run_qa(
    ws: Workspace,
    run: int | None = None,
    raters: Sequence[str] | None = None,
    thresholds: Thresholds | None = None,
    drafts: DraftMaker | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> QARun:
    """Check the latest labels of human raters and consensus (or of ``raters``) and update the
    review queue. With ``run``, the labels are also compared with the run's whole-image drafts:
    ``drafts`` (``learning.inference.ensure_drafts``) makes those missing; without it only the
    drafts already stored are used."""
    t = thresholds or Thresholds()
    t.check()
    protocol = load_protocol(ws.protocol_name)
    notes: list[str] = []
    inputs, predicted, reused = _read_inputs(ws, protocol, raters, run, drafts, notes, progress)
    jobs = _jobs(inputs)
    measures = _measure(ws, protocol, jobs, workers, progress, t.swap_ratio)
    agreement = model_agreement(protocol, inputs, measures, t) if inputs.drafts else {}
    trusted = set()
    for name, (median, n) in agreement.items():
        if median is not None and n >= shape.MIN_SIZE_SAMPLE and median < t.model_dice_below:
            notes.append(
                f"{name}: run {run}'s drafts agree with these labels only to a median Dice of "
                f"{median:.2f} (over {n}), below --model-dice-below: not compared with the model"
            )
        else:
            trusted.add(name)
    found, checked = _evaluate(protocol, inputs, measures, t, run, trusted)
    counts, superseded, open_total = _record(ws, inputs, found, checked)
    for s in protocol.structures:
        for unit in ("mm2", "px"):
            key = (s.name, unit)
            if key in inputs.spreads and inputs.spreads[key] is None:
                notes.append(
                    f"{s.name} ({'mm²' if unit == 'mm2' else 'px'}): too few labels "
                    f"(< {shape.MIN_SIZE_SAMPLE}) or no spread to judge sizes by"
                )
    if protocol.relations and any(
        r.relation in ("lateral to", "medial to") for r in protocol.relations
    ):
        unknown = sum(
            1
            for i in {lab.image_id for lab in inputs.checked}
            if protocol.lateral_image_side(inputs.images[i].side) is None
        )
        if unknown:
            notes.append(
                f"{unknown} images of an unknown leg (or a protocol without lateral_side): "
                "lateral/medial relations not checked there"
            )
    return QARun(
        run=run,
        raters=inputs.raters,
        labels=len(inputs.checked),
        images=len(jobs),
        drafts_predicted=predicted,
        drafts_reused=reused,
        thresholds=t,
        reasons=[
            ReasonCount(
                reason=r,
                found=counts[r]["found"],
                new=counts[r]["new"],
                reopened=counts[r]["reopened"],
                kept_closed=counts[r]["kept_closed"],
                cleared=counts[r]["cleared"],
                open=counts[r]["open"],
            )
            for r in FlagReason
        ],
        superseded=superseded,
        open=open_total,
        model_agreement={k: v[0] for k, v in agreement.items()},
        notes=notes,
    )


# --------------------------------------------------------------------------- the queue


def _rank_key(f: QAFlag) -> tuple:
    return (-f.severity, REASON_ORDER.index(FlagReason(f.reason)), f.image_id, f.structure, f.id)


def _choices(values: Sequence[str] | None, enum, what: str) -> list[str]:
    out = []
    for v in values or ():
        try:
            out.append(enum(v).value)
        except ValueError:
            raise UsageError(
                f"{what} must be one of {', '.join(e.value for e in enum)}, got {v!r}"
            ) from None
    return out


def list_queue(
    ws: Workspace,
    status: FlagStatus | str | None = FlagStatus.open,
    reasons: Sequence[str] | None = None,
    raters: Sequence[str] | None = None,
    limit: int | None = None,
) -> Queue:
    """The flags, worst first (see :class:`Queue`); ``status`` None lists every status."""
    status_value = None if status is None else _choices([str(status)], FlagStatus, "--status")[0]
    reason_values = _choices(reasons, FlagReason, "--reason")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be 0 (no limit) or more")
    with ws.session() as s:
        names = [get_rater(s, r).name for r in raters or ()]
        query = (
            select(QAFlag, Rater.name, Annotation.version)
            .join(Annotation, Annotation.id == QAFlag.annotation_id)
            .join(Rater, Rater.id == Annotation.rater_id)
        )
        if status_value:
            query = query.where(QAFlag.status == status_value)
        if reason_values:
            query = query.where(QAFlag.reason.in_(reason_values))
        if names:
            query = query.where(Rater.name.in_(names))
        rows = sorted(s.execute(query).all(), key=lambda row: _rank_key(row[0]))
    by_reason: dict[str, int] = defaultdict(int)
    for f, _, _ in rows:
        by_reason[f.reason] += 1
    shown = rows if not limit else rows[:limit]
    items = [
        QueueItem(
            rank=k,
            flag=f.id,
            image=image_name(f.image_id),
            image_id=f.image_id,
            rater=rater,
            version=version,
            annotation_id=f.annotation_id,
            structure=f.structure,
            reason=FlagReason(f.reason),
            severity=f.severity,
            status=FlagStatus(f.status),
            summary=describe(f.reason, f.evidence),
            evidence=f.evidence,
            run=f.run_id,
            created=f.created_at.isoformat(timespec="seconds"),
            resolved=f.resolved_at.isoformat(timespec="seconds") if f.resolved_at else None,
            resolved_by=f.resolved_by,
            note=f.note,
        )
        for k, (f, rater, version) in enumerate(shown, 1)
    ]
    return Queue(
        status=status_value,
        reasons=reason_values,
        raters=names,
        total=len(rows),
        items=items,
        by_reason={r.value: by_reason[r.value] for r in FlagReason if by_reason.get(r.value)},
    )


def resolve_flag(
    ws: Workspace, flag_id: int, note: str, status: Resolution | str = Resolution.fixed
) -> Resolved:
    """Close an open flag as fixed or accepted, with the reviewer's note (audited)."""
    try:
        resolution = Resolution(status)
    except ValueError:
        raise UsageError(
            f"--status must be one of {', '.join(r.value for r in Resolution)}"
        ) from None
    note = (note or "").strip()
    if not note:
        raise UsageError("a resolution needs a note: --note 'what was found'")
    with ws.session() as s:
        f = s.get(QAFlag, int(flag_id))
        if f is None:
            raise UsageError(f"no flag {flag_id}: see 'datatool qa list'")
        if f.status != FlagStatus.open:
            raise DatatoolError(
                f"flag {f.id} is {f.status} already"
                + (f" ({f.resolved_by}, {f.resolved_at:%Y-%m-%d %H:%M})" if f.resolved_at else "")
                + ": only open flags are resolved"
            )
        f.status = resolution.value
        f.resolved_at, f.resolved_by, f.note = utcnow(), current_user(), note
        rater = f.annotation.rater.name
        audit(
            s,
            "qa resolve",
            "flag",
            flag=f.id,
            status=resolution.value,
            reason=f.reason,
            structure=f.structure,
            annotation=f.annotation_id,
        )
        return Resolved(
            flag=f.id,
            image=image_name(f.image_id),
            rater=rater,
            structure=f.structure,
            reason=FlagReason(f.reason),
            status=FlagStatus(f.status),
            note=note,
            resolved_by=f.resolved_by or "",
        )


# --------------------------------------------------------------------------- report

CSV_COLUMNS = [
    "rank",
    "flag",
    "image",
    "rater",
    "version",
    "structure",
    "reason",
    "severity",
    "summary",
    "evidence",
]


def _panels(s, ws: Workspace, item: QueueItem) -> list[tuple[str, Any]]:
    """(title, label map or None) for the flagged label, the model's draft and another rater."""
    ann = s.get(Annotation, item.annotation_id)
    ev = item.evidence
    panels: list[tuple[str, Any]] = [
        (f"{item.rater} v{item.version} (flagged)", ws.store.get_array(ann.mask_hash))
    ]
    model_id = ev.get("model_annotation")
    if model_id is None and ev.get("source", "").startswith("model:"):
        model_id = ev.get("source_annotation")
    if model_id is None and item.run is not None:
        draft = drafts_of(s, item.run, [item.image_id]).get(item.image_id)
        model_id = draft.id if draft else None
    model = s.get(Annotation, model_id) if model_id else None
    panels.append(
        (
            f"model:{item.run} draft" if model is not None else "model: no draft",
            ws.store.get_array(model.mask_hash) if model is not None else None,
        )
    )
    other_id = ev.get("other_annotation")
    if other_id is None and ev.get("source", "") and not ev["source"].startswith("model:"):
        other_id = ev.get("source_annotation")
    if other_id is None:
        sub = latest_annotations_query().subquery()
        other_id = s.scalar(
            select(sub.c.id)
            .join(Rater, Rater.id == sub.c.rater_id)
            .where(
                sub.c.image_id == item.image_id,
                Rater.kind == RaterKind.human,
                sub.c.rater_id != ann.rater_id,
            )
            .order_by(Rater.name)
            .limit(1)
        )
    other = s.get(Annotation, other_id) if other_id else None
    panels.append(
        (
            f"{other.rater.name} v{other.version}" if other is not None else "no other rater",
            ws.store.get_array(other.mask_hash) if other is not None else None,
        )
    )
    return panels


def write_report(
    ws: Workspace,
    out_dir: Path | None = None,
    top: int = REPORT_TOP,
    reasons: Sequence[str] | None = None,
    raters: Sequence[str] | None = None,
) -> QAReport:
    """The open queue as CSV (``queue.csv``) and a page (``index.html``) of overlay
    thumbnails (the flagged label, the model's draft, another rater's label) for the ``top``
    worst items."""
    from datatool.analysis.plots import qa_panels_png

    if top < 0:
        raise UsageError("--top must be 0 or more")
    queue = list_queue(ws, FlagStatus.open, reasons, raters)
    protocol = load_protocol(ws.protocol_name)
    out = Path(out_dir) if out_dir else ws.root / "reports" / "qa"
    (out / "thumbnails").mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv_writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for it in queue.items:
        writer.writerow(
            [
                it.rank,
                it.flag,
                it.image,
                it.rater,
                it.version,
                it.structure,
                it.reason.value,
                it.severity,
                it.summary,
                json.dumps(it.evidence, sort_keys=True),
            ]
        )
    write_text_atomic(out / "queue.csv", buf.getvalue())
    thumbs: list[str] = []
    rows_html = []
    with ws.session() as s:
        for it in queue.items[:top]:
            image = ws.store.get_array(s.get_one(Image, it.image_id).store_hash)
            value = protocol.by_label(it.structure).value
            path = out / "thumbnails" / f"flag-{it.flag}.png"
            qa_panels_png(
                path,
                image,
                _panels(s, ws, it),
                protocol,
                value,
                f"#{it.rank} flag {it.flag}: {it.image} {it.structure}, {it.reason.value}",
            )
            thumbs.append(str(path))
            cells = [
                str(it.rank),
                str(it.flag),
                "<br>".join(
                    [
                        html.escape(it.image),
                        f"{html.escape(it.rater)} v{it.version}",
                        html.escape(it.structure),
                        f"<b>{html.escape(it.reason.value)}</b> ({it.severity:.2f})",
                        html.escape(it.summary),
                    ]
                ),
                f'<img src="thumbnails/{path.name}" width="900">',
            ]
            rows_html.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    page = out / "index.html"
    write_text_atomic(
        page,
        "<!doctype html><meta charset='utf-8'><title>datatool qa</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px}</style>"
        f"<h1>Review queue: the {len(rows_html)} worst of {queue.total} open items</h1>"
        "<p>Ranked by severity: how far the evidence lies past its threshold (1: a clear-cut "
        "case). Panels: the flagged label, the model's draft, another rater's label; the "
        "flagged structure is drawn thick. The whole queue is in "
        "<a href='queue.csv'>queue.csv</a>.</p>"
        "<table><tr><th>rank</th><th>flag</th><th>item</th><th>label | model | other rater"
        "</th></tr>" + "".join(rows_html) + "</table>\n",
    )
    with ws.session() as s:
        audit(s, "qa report", "report", items=queue.total, thumbnails=len(thumbs))
    return QAReport(
        out_dir=str(out),
        csv=str(out / "queue.csv"),
        page=str(page),
        items=queue.total,
        thumbnails=thumbs,
    )


__all__ = [
    "QAReport",
    "QARun",
    "Queue",
    "QueueItem",
    "ReasonCount",
    "Resolved",
    "Thresholds",
    "list_queue",
    "resolve_flag",
    "run_qa",
    "write_report",
]
