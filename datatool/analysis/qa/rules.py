"""The rules: which flags the measures call for."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from datatool.analysis import shape
from datatool.analysis.qa.convention import LATERAL, Where, learn_from
from datatool.analysis.qa.inputs import _Inputs, _Label
from datatool.analysis.qa.measure import _backers, _others
from datatool.analysis.qa.pairs import PairSpreads, measure_of, pair_spreads
from datatool.core.catalogue import FlagReason, RaterKind
from datatool.core.errors import UsageError
from datatool.core.protocol import Protocol


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
    pair_z_above: float = shape.PAIR_Z_ABOVE
    max_flag_share: float = shape.MAX_FLAG_SHARE  # a rule over this share of labels: a note
    temporal_ratio: float = shape.TEMPORAL_RATIO  # times a loop's usual frame-to-frame change
    temporal_floor_mm: float = shape.TEMPORAL_FLOOR_MM  # ... and beyond this centroid shift

    def check(self) -> None:
        for name in ("model_dice_below", "rater_dice_below"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must lie in (0, 1], got {value}")
        if not 0.0 < self.max_flag_share <= 1.0:
            raise UsageError(f"--max-flag-share must lie in (0, 1], got {self.max_flag_share}")
        for name in ("size_z_above", "pair_z_above", "temporal_ratio", "temporal_floor_mm"):
            if not getattr(self, name) > 0:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be above 0, got {getattr(self, name)}"
                )


IMAGE = "whole image"  # the structure of a flag about the whole label or image


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


def _beyond_pairs(spread, value: float, z_above: float) -> tuple[float, float] | None:
    """(robust z, severity) when ``value`` lies beyond the workspace's rater pairs' usual
    ``spread`` (None: no spread known, or within it)."""
    if spread is None:
        return None
    z = spread.z(value)
    found = shape.size_severity(z, z_above) if z > 0 else None
    return None if found is None else (z, found)


def _pair_outlier(
    flag: Callable[..., None],
    name: str,
    value: int,
    lab: _Label,
    others: list[_Label],
    inputs: _Inputs,
    measures: dict[int, dict],
    pairs: PairSpreads,
    t: Thresholds,
) -> None:
    """A disagreement with another rater that Dice lets pass: the centroids further apart, or
    the sizes more different, than the workspace's rater pairs (robust z beyond
    ``pair_z_above``); the worst over the other raters."""
    worst: tuple[float, dict] | None = None
    for o in others:
        m = measure_of(inputs, measures, lab, o, value)
        if m is None:
            continue
        ev: dict[str, Any] = {}
        sev = 0.0
        hit = _beyond_pairs(pairs.offset.get((name, m.unit)), m.offset, t.pair_z_above)
        if hit is not None:
            z, found = hit
            sev = max(sev, found)
            ev.update(offset=_r(m.offset, 2), offset_unit=m.unit, offset_z=_r(z, 2))
        hit = _beyond_pairs(pairs.radius.get((name, m.unit)), m.radius_diff, t.pair_z_above)
        if hit is not None:
            z, found = hit
            sev = max(sev, found)
            ev.update(
                area_ratio=_r(m.ratio, 3),
                radius_diff=_r(m.radius_diff, 2),
                area_z=_r(z, 2),
                offset_unit=m.unit,
            )
        if ev and (worst is None or sev > worst[0]):
            area, other_area = (
                inputs.stats[lab.annotation_id][value][0],
                inputs.stats[o.annotation_id][value][0],
            )
            rec = measures[lab.annotation_id][value]
            overlap = rec["vs"][o.annotation_id].get(value, 0)
            ev.update(
                dice=_r(shape.dice(area, other_area, overlap)),
                threshold=t.pair_z_above,
                area_px=area,
                other_rater=o.rater,
                other_annotation=o.annotation_id,
                other_area_px=other_area,
            )
            worst = (sev, ev)
    if worst is not None:
        flag(name, FlagReason.rater_disagreement, worst[0], **worst[1])


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
    notes: list[str] | None = None,
) -> tuple[list[_Found], set[tuple[int, FlagReason, str | None]]]:
    """The flags the measures call for, and which checks ran: (annotation, reason, structure
    or None for every structure). The model is compared only on the ``trusted`` structures;
    lateral/medial relations against the workspace's own convention (:mod:`.convention`),
    whose notes go to ``notes``."""
    found: list[_Found] = []
    checked: set[tuple[int, FlagReason, str | None]] = set()
    where = {
        i: Where(inputs.images[i].side, inputs.images[i].series, inputs.images[i].device)
        for i in {lab.image_id for lab in inputs.checked}
    }
    centroids = {
        a: {v: rec["centroid"] for v, rec in per.items() if "centroid" in rec}
        for a, per in measures.items()
    }
    pairs = pair_spreads(protocol, inputs, measures)
    learned, mirrored, convention_notes = learn_from(
        protocol, where, [(lab.annotation_id, lab.image_id) for lab in inputs.checked], centroids
    )
    if notes is not None:
        notes.extend(convention_notes)
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
        checked.add((lab.annotation_id, FlagReason.mirrored, None))
        if others:
            checked.add((lab.annotation_id, FlagReason.rater_disagreement, None))
        if draft is not None:  # also where the model is not trusted: its old flags go
            checked.add((lab.annotation_id, FlagReason.model_disagreement, None))
        if others or draft is not None:
            checked.add((lab.annotation_id, FlagReason.swap, None))

        flag = partial(_add, found, lab)

        # agreement with the other raters and the model, and swaps
        backers = _backers(inputs, lab)
        start = len(found)
        for s in protocol.structures:
            model = draft if s.name in trusted else None
            _agreement(flag, s.name, s.value, st[s.value][0], per.get(s.value), others, backers,
                       model, inputs, t, run, values, name_of)  # fmt: skip
        paired = {
            f.structure
            for f in found[start:]
            if f.reason in (FlagReason.swap, FlagReason.rater_disagreement)
        }
        for s in protocol.structures:
            if s.name not in paired:
                _pair_outlier(flag, s.name, s.value, lab, others, inputs, measures, pairs, t)
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
        # anatomy: an image whose labels all reverse the lateral relations is one flag
        seen_mirrored = mirrored.get(lab.image_id)
        if seen_mirrored is not None and seen_mirrored["annotation"] == lab.annotation_id:
            evidence = {k: v for k, v in seen_mirrored.items() if k != "annotation"}
            flag(IMAGE, FlagReason.mirrored, 1.0, **evidence)
        convention = learned.get(lab.image_id)
        lateral = convention.lateral_side if convention is not None else None
        for rel, a, b in relations:
            if a.value not in per or b.value not in per:
                continue
            if seen_mirrored is not None and rel.relation in LATERAL:
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
                lateral_ev: dict[str, Any] = (
                    {"lateral_side": lateral, "convention": convention.source}
                    if rel.relation in LATERAL and convention is not None
                    else {}
                )
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
                    **lateral_ev,
                )
    return found, checked
