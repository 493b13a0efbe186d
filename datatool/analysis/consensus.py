"""``datatool consensus``: one reference label per image, made from the raters' labels.

Methods: ``staple`` (SimpleITK's multi-label STAPLE, which weighs each rater by estimated
performance), ``majority`` (label voting; with two raters a pixel they disagree on is a tie,
and ties go to background, so two raters' majority is their per-structure intersection), and
``rater:NAME`` (that rater's labels taken as the reference). The result is stored as
annotations of rater ``consensus:METHOD`` (kind ``consensus``, source ``consensus``), versioned
like any other: running it again after no change is a no-op. Training uses these labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from sqlalchemy import select

from datatool.core.catalogue import Annotation, Image, Rater, RaterKind, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, latest_annotations_query, store_annotation
from datatool.labels.gold import without_gold

METHODS = ("staple", "majority")


def consensus_rater_name(method: str) -> str:
    return f"consensus:{method}"


def _fused_ref(method: str, anns: list[Annotation]) -> str:
    """A consensus annotation's ``source_ref``: the method and the annotations it fused."""
    return f"{method} of " + ", ".join(f"annotation {a.id} (v{a.version})" for a in anns)


_FUSED = re.compile(r"annotation (\d+) \(v\d+\)")


def fused_annotation_ids(source_ref: str | None) -> list[int]:
    """The annotations a consensus label was made from, read back from its ``source_ref``
    (empty for any other label)."""
    return [int(m) for m in _FUSED.findall(source_ref or "")]


def fuse(masks: list[np.ndarray], method: str) -> np.ndarray:
    """Fuse label maps (2D uint8) into one; undecided pixels are background (0)."""
    if len(masks) == 1:
        return masks[0].copy()
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]
    if method == "staple":
        fused = sitk.MultiLabelSTAPLE(images, 0)
    elif method == "majority":
        fused = sitk.LabelVoting(images, 0)
    else:
        raise UsageError(f"unknown fusion method {method!r}")
    return sitk.GetArrayFromImage(fused).astype(np.uint8)


@dataclass
class ConsensusReport:
    method: str
    reference_rater: str  # consensus:METHOD
    raters: list[str]  # whose labels were fused
    images: int
    new_versions: int
    unchanged: int
    skipped_too_few_raters: int
    gold_left_out: int = 0  # raters' labels of their gold-standard tasks, not fused


def make_consensus(
    ws: Workspace,
    method: str,
    raters: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    include_gold: bool = False,
) -> ConsensusReport:
    """Make (or update) the reference label of every image with enough rater labels. A
    rater's label of a gold-standard task is no new opinion: left out unless ``include_gold``."""
    protocol = load_protocol(ws.protocol_name)
    single = method.startswith("rater:")
    if not single and method not in METHODS:
        raise UsageError(f"--method must be staple, majority or rater:NAME, not {method!r}")
    with ws.session() as s:
        if single:
            sources = [get_rater(s, method.split(":", 1)[1])]
        elif raters:
            sources = [get_rater(s, r) for r in raters]
        else:
            sources = list(
                s.scalars(select(Rater).where(Rater.kind == RaterKind.human).order_by(Rater.name))
            )
        needed = 1 if single else 2
        if len(sources) < needed:
            raise DatatoolError(
                f"consensus by {method} needs labels of at least {needed} "
                f"raters; {len(sources)} registered (datatool rater add)"
            )
        latest = list(s.scalars(latest_annotations_query([r.id for r in sources])))
        latest, gold_left_out = (latest, 0) if include_gold else without_gold(s, latest)
        target = s.scalar(select(Rater).where(Rater.name == consensus_rater_name(method)))
        if target is None:
            target = Rater(name=consensus_rater_name(method), kind=RaterKind.consensus)
            s.add(target)
            s.flush()
        target_id = target.id
    by_image: dict[int, list[Annotation]] = {}
    for ann in latest:
        by_image.setdefault(ann.image_id, []).append(ann)
    todo = sorted(i for i, anns in by_image.items() if len(anns) >= needed)
    skipped = len(by_image) - len(todo)
    created = unchanged = 0
    for done, image_id in enumerate(todo, start=1):
        anns = sorted(by_image[image_id], key=lambda a: a.rater_id)
        fused = fuse(
            [ws.store.get_array(a.mask_hash) for a in anns], "staple" if single else method
        )
        with ws.session() as s:
            stored = store_annotation(
                s,
                ws.store,
                s.get_one(Image, image_id),
                s.get_one(Rater, target_id),
                fused,
                "consensus",
                _fused_ref(method, anns),
                protocol,
            )
        created += stored.created
        unchanged += not stored.created
        if progress:
            progress(done, len(todo))
    with ws.session() as s:
        audit(
            s,
            "consensus",
            "consensus",
            method=method,
            images=len(todo),
            new_versions=created,
            unchanged=unchanged,
            raters=[r.name for r in sources],
        )
    return ConsensusReport(
        method=method,
        reference_rater=consensus_rater_name(method),
        raters=[r.name for r in sources],
        images=len(todo),
        new_versions=created,
        unchanged=unchanged,
        skipped_too_few_raters=skipped,
        gold_left_out=gold_left_out,
    )
