"""``run_qa``: the checks, step by step (read, measure, evaluate, record)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from datatool.analysis import shape
from datatool.analysis.qa.flood import cap
from datatool.analysis.qa.inputs import DraftMaker, _read_inputs
from datatool.analysis.qa.measure import _measure
from datatool.analysis.qa.pairs import displaced, pair_spreads
from datatool.analysis.qa.record import _record
from datatool.analysis.qa.rules import Thresholds, _evaluate, model_agreement
from datatool.analysis.qa.temporal import temporal
from datatool.analysis.qa.wrongimage import wrong_images
from datatool.core.catalogue import FlagReason
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace


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
    measures, thumbs = _measure(ws, protocol, inputs, workers, progress, t.swap_ratio)
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
    found, checked = _evaluate(protocol, inputs, measures, t, run, trusted, notes)
    pairs = pair_spreads(protocol, inputs, measures)
    found += wrong_images(
        inputs,
        thumbs,
        checked,
        found,
        {s.name: s.value for s in protocol.structures},
        partial(displaced, protocol, inputs, measures, pairs, t.pair_z_above),
    )
    in_loops, loop_labels = temporal(
        protocol, inputs, measures, t.temporal_ratio, t.temporal_floor_mm, checked
    )
    found += in_loops
    found, capped = cap(
        found, len(inputs.checked), t.max_flag_share, {FlagReason.temporal: loop_labels}
    )
    notes.extend(capped)
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
        images=len({lab.image_id for lab in inputs.checked}),
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
