"""The inputs of the checks: the latest labels, what is known of their images, the areas of
their structures and the run's drafts."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from sqlalchemy import select

from datatool.analysis import shape
from datatool.core.catalogue import (
    Image,
    Rater,
    RaterKind,
    Run,
    Series,
    SourceFile,
    StructureStats,
    Study,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, in_chunks, latest_annotations_query
from datatool.labels.drafts import drafts_of, model_rater_name


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


@dataclass(slots=True)
class _Label:
    annotation_id: int
    image_id: int
    rater: str
    kind: str
    version: int
    mask_hash: str


@dataclass(slots=True)
class _ImageInfo:
    rows: int
    cols: int
    mm: tuple[float | None, float | None]
    regions: list[dict] | None  # the view, when the pixels outside were blanked
    side: str | None
    series: int = 0
    device: tuple[str | None, str | None] = (None, None)  # the series' manufacturer and model
    patient: int = 0
    source_file: int = 0  # the DICOM file; a cine's frames share it
    frame: int = 0  # the frame's index in its file (0-based)
    n_frames: int = 1  # the file's frames (a cine: more than 1)


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
    return [  # the rater's name and kind interned: one string each, not one per label
        _Label(aid, image_id, sys.intern(rater), sys.intern(kind), version, mask_hash)
        for aid, image_id, rater, kind, version, mask_hash in session.execute(
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
                Series.id.label("series_id"),
                Series.manufacturer,
                Series.model_name,
                Study.patient_id,
                Image.source_file_id,
                Image.frame_index,
                SourceFile.n_frames,
            )
            .join(Series, Series.id == Image.series_id)
            .join(SourceFile, SourceFile.id == Image.source_file_id)
            .join(Study, Study.id == Series.study_id)
            .where(Image.id.in_(chunk))
        ):
            blanked = row.pixel_handling == "blanked_outside_regions" and row.regions
            found[row.id] = _ImageInfo(
                row.rows,
                row.cols,
                (row.mm_per_px_x, row.mm_per_px_y),
                list(row.regions) if blanked else None,
                row.side,
                row.series_id,
                (row.manufacturer, row.model_name),
                row.patient_id,
                row.source_file_id,
                row.frame_index,
                row.n_frames,
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
