"""``datatool consensus``: one reference label per image, made from the raters' labels.

Methods: ``staple`` (SimpleITK's multi-label STAPLE, which weighs each rater by estimated
performance), ``majority`` (label voting; with two raters a pixel they disagree on is a tie,
and ties go to background, so two raters' majority is their per-structure intersection), and
``rater:NAME`` (that rater's labels taken as the reference). The result is stored as
annotations of rater ``consensus:METHOD`` (kind ``consensus``, source ``consensus``), versioned
like any other: running it again after no change is a no-op. Training uses these labels.

Each rater's quality, as STAPLE estimates it (``staple`` and ``majority``, two raters or
more): per image and structure, SimpleITK's binary ``STAPLEImageFilter`` over the raters'
maps of that structure (the whole image) gives each rater's sensitivity (the share of the
estimated structure the rater labelled) and specificity (the share of the estimated
background the rater left empty); per rater and structure they are described over the images
(mean ± SD, median (P25, P75)). An image where no rater labelled the structure tells nothing
about it and is left out. The table is also written to
``reports/consensus-METHOD/consensus.json`` for the study report.

Images that need adjudication (``staple`` and ``majority``): where two raters drew the same
region but named it differently, fusing them would silently drop both structures (two raters
who swap the adductor magnus and the semitendinosus: STAPLE keeps neither). So when rater A's
structure X lies on rater B's different structure Y and B's Y on A's X, each by the rule of
QA's ``swap`` flag (at least half of it, and three times as much as on the other's same
structure: :func:`datatool.analysis.shape.swap`), the image gets no consensus label; the
report lists it with the structures in conflict. An ordinary disagreement (boundaries, a
structure one rater left out, a few pixels named differently) is fused as before. With three
raters or more any pair in conflict sends the image to adjudication. An earlier consensus
version of such an image is not withdrawn (versions are never changed): the report counts
them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sqlalchemy import select

from datatool.analysis import metrics, shape
from datatool.analysis.consensus_cache import ConsensusCache, Worked
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import Annotation, Image, Rater, RaterKind, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.jsonable import to_jsonable
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, latest_annotations_query, store_annotations
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


STAPLE_MARGIN = 8  # pixels of agreed background kept round the raters' labels


def staple_performance(
    masks: list[np.ndarray], value: int
) -> tuple[list[float], list[float]] | None:
    """STAPLE's estimate of each rater's (sensitivity, specificity) for one structure
    (``value`` in each label map), in the order of ``masks``: SimpleITK's binary
    ``STAPLEImageFilter``, its ``GetSensitivity()`` and ``GetSpecificity()`` after
    ``Execute``. None when no map holds the structure (nothing to estimate).

    For speed the filter runs on the box round every rater's label of the structure (and
    ``STAPLE_MARGIN`` pixels more); the pixels outside it, which every rater left empty, are
    agreed background, and the specificity is stated over the whole image: the filter's
    true negatives plus those pixels, over its estimated background (the sum of 1 - the
    probability image) plus those pixels. The sensitivity needs no such step: the estimated
    structure lies inside the box."""
    binary = [(m == value).astype(np.uint8) for m in masks]
    union = np.logical_or.reduce(binary)
    if not union.any():
        return None
    rows, cols = np.nonzero(union)
    r0, c0 = max(int(rows.min()) - STAPLE_MARGIN, 0), max(int(cols.min()) - STAPLE_MARGIN, 0)
    r1, c1 = int(rows.max()) + STAPLE_MARGIN + 1, int(cols.max()) + STAPLE_MARGIN + 1
    crops = [np.ascontiguousarray(b[r0:r1, c0:c1]) for b in binary]
    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1.0)
    probability = sitk.GetArrayViewFromImage(
        staple.Execute([sitk.GetImageFromArray(c) for c in crops])
    )
    background = float(np.sum(1.0 - probability))
    outside = float(union.size - crops[0].size)
    specificity = [
        (q * background + outside) / (background + outside) if background + outside else q
        for q in staple.GetSpecificity()
    ]
    return list(staple.GetSensitivity()), specificity


@dataclass(frozen=True)
class StructureConflict:
    """Two raters who drew one region under different names: ``structure_a`` of ``rater_a``
    lies on ``structure_b`` of ``rater_b`` (``share_a`` of its pixels) and the other way
    round (``share_b``)."""

    rater_a: str
    structure_a: str
    rater_b: str
    structure_b: str
    share_a: float
    share_b: float


def structure_conflicts(
    masks: list[np.ndarray],
    raters: list[str],
    structures: dict[int, str],
    min_share: float = shape.SWAP_MIN_SHARE,
    ratio: float = shape.SWAP_RATIO,
) -> list[StructureConflict]:
    """The regions two raters (label maps ``masks`` of ``raters``) drew under different
    names: for each pair of raters, each structure X of the first that lies on a different
    structure Y of the second (``shape.swap``: at least ``min_share`` of X, and ``ratio``
    times more than on the second's X) while the second's Y lies likewise on the first's X.
    ``structures``: {value: name} of the protocol's structures."""
    values = list(structures)
    found = []
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            a, b = masks[i], masks[j]
            for x in values:
                ax = a == x
                area_ax = int(np.count_nonzero(ax))
                over = shape.swap(
                    shape.cross_counts(ax, b, x, ratio, area_ax),
                    x,
                    area_ax,
                    values,
                    min_share,
                    ratio,
                )
                if over is None:
                    continue
                y = over.other_value
                by = b == y
                area_by = int(np.count_nonzero(by))
                back = shape.swap(
                    shape.cross_counts(by, a, y, ratio, area_by),
                    y,
                    area_by,
                    values,
                    min_share,
                    ratio,
                )
                if back is None or back.other_value != x:
                    continue
                found.append(
                    StructureConflict(
                        raters[i],
                        structures[x],
                        raters[j],
                        structures[y],
                        round(over.share_other, 4),
                        round(back.share_other, 4),
                    )
                )
    return found


@dataclass
class Adjudication:
    """An image left without a consensus label: raters disagree on which structure a region
    is. ``earlier_consensus``: it still has a consensus version from an earlier run."""

    image_id: int
    conflicts: list[StructureConflict]
    earlier_consensus: bool = False


@dataclass
class RaterQuality:
    """One rater's STAPLE sensitivity and specificity for one structure, described
    (``metrics.describe``) over the images where some rater labelled the structure."""

    rater: str
    structure: str
    images: int
    sensitivity: dict
    specificity: dict


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
    quality: list[RaterQuality] = field(default_factory=list)  # empty for rater:NAME
    quality_file: str | None = None  # consensus.json (None: no quality, one rater)
    # images left without a consensus label: raters named one region differently
    adjudication: list[Adjudication] = field(default_factory=list)

    @property
    def needs_adjudication(self) -> int:
        return len(self.adjudication)


def make_consensus(
    ws: Workspace,
    method: str,
    raters: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    include_gold: bool = False,
    quality: bool = True,
) -> ConsensusReport:
    """Make (or update) the reference label of every image with enough rater labels, and
    (``quality``, two raters or more) STAPLE's estimate of each rater's quality. A rater's
    label of a gold-standard task is no new opinion: left out unless ``include_gold``."""
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
    names = {r.id: r.name for r in sources}
    structure_names = {st.value: st.name for st in protocol.structures}
    settings = [shape.SWAP_MIN_SHARE, shape.SWAP_RATIO, STAPLE_MARGIN]
    cache = None if single else ConsensusCache(ws.meta_dir, method, structure_names, settings)
    with ws.session() as s:
        current = {
            a.image_id: a.mask_hash for a in s.scalars(latest_annotations_query([target_id]))
        }
    adjudication: list[Adjudication] = []
    # (rater, structure) -> per image: (sensitivity, specificity)
    per_rater: dict[tuple[str, str], list[tuple[float, float]]] = {}
    fusing = _Fusing(ws, protocol, target_id, cache)
    refs: set[str] = set()
    for done, image_id in enumerate(todo, start=1):
        anns = sorted(by_image[image_id], key=lambda a: a.rater_id)
        ref = _fused_ref(method, anns)
        refs.add(ref)
        if single:  # the rater's own label is the fused one
            worked: Worked | None = Worked([], None, anns[0].mask_hash)
        else:
            assert cache is not None
            worked = cache.get(ref, quality)
        masks: list[np.ndarray] = []
        if worked is None or not (worked.conflicts or current.get(image_id) == worked.fused):
            masks = [ws.store.get_array(a.mask_hash) for a in anns]
        if worked is None:  # not worked out before for these label versions
            worked = _work_out(masks, [names[a.rater_id] for a in anns], structure_names, quality)
        if quality and worked.performance is not None:
            for value, (sensitivity, specificity) in worked.performance.items():
                for ann, sens, spec in zip(anns, sensitivity, specificity):
                    key = (names[ann.rater_id], structure_names[int(value)])
                    per_rater.setdefault(key, []).append((sens, spec))
        if worked.conflicts:
            conflicts = [StructureConflict(*c) for c in worked.conflicts]
            adjudication.append(Adjudication(image_id, conflicts, image_id in current))
            if cache is not None:
                cache.put(ref, worked)
        elif masks:  # fused and stored (an unchanged result is a no-op)
            fusing.add(image_id, fuse(masks, "staple" if single else method), ref, worked)
        else:  # the consensus label of these versions is the latest already
            fusing.unchanged += 1
        if progress:
            progress(done, len(todo))
    fusing.flush()
    created, unchanged = fusing.created, fusing.unchanged
    if cache is not None:
        if raters is None:
            cache.keep_only(refs)
        cache.save()
    with ws.session() as s:
        audit(
            s,
            "consensus",
            "consensus",
            method=method,
            images=len(todo),
            new_versions=created,
            unchanged=unchanged,
            needs_adjudication=[a.image_id for a in adjudication],
            raters=[r.name for r in sources],
        )
    order = {st.name: k for k, st in enumerate(protocol.structures)}
    report = ConsensusReport(
        method=method,
        reference_rater=consensus_rater_name(method),
        raters=[r.name for r in sources],
        images=len(todo) - len(adjudication),
        new_versions=created,
        unchanged=unchanged,
        skipped_too_few_raters=skipped,
        gold_left_out=gold_left_out,
        quality=[
            RaterQuality(
                rater=rater,
                structure=structure,
                images=len(values),
                sensitivity=metrics.describe([v[0] for v in values]),
                specificity=metrics.describe([v[1] for v in values]),
            )
            for (rater, structure), values in sorted(
                per_rater.items(), key=lambda kv: (order[kv[0][1]], kv[0][0])
            )
        ],
        adjudication=adjudication,
    )
    if quality and not single:
        path = quality_path(ws, method)
        report.quality_file = str(path)
        write_text_atomic(path, json.dumps(to_jsonable(report), indent=2))
    return report


def _work_out(
    masks: list[np.ndarray], raters: list[str], structures: dict[int, str], quality: bool
) -> Worked:
    """The conflicts between the raters' ``masks`` and (``quality``, two raters or more) STAPLE's
    estimate of each rater's performance per structure; the fused mask comes later."""
    conflicts = structure_conflicts(masks, raters, structures) if len(masks) > 1 else []
    performance = None
    if quality and len(masks) > 1:
        performance = {}
        for value in structures:
            found = staple_performance(masks, value)
            if found is not None:
                performance[str(value)] = [list(found[0]), list(found[1])]
    return Worked([list(astuple(c)) for c in conflicts], performance, None)


class _Fusing:
    """Fused masks stored as the consensus rater's next versions, ``BATCH`` images a
    transaction; each image's cache entry is written with the stored mask's hash."""

    BATCH = 64

    def __init__(
        self, ws: Workspace, protocol, target_id: int, cache: ConsensusCache | None
    ) -> None:
        self.ws, self.protocol, self.target_id, self.cache = ws, protocol, target_id, cache
        self.pending: list[tuple[int, np.ndarray, str, Worked]] = []
        self.created = self.unchanged = 0

    def add(self, image_id: int, fused: np.ndarray, ref: str, worked: Worked) -> None:
        self.pending.append((image_id, fused, ref, worked))
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        ids = [image_id for image_id, _, _, _ in self.pending]
        with self.ws.session() as s:
            images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(ids)))}
            stored = store_annotations(
                s,
                self.ws.store,
                s.get_one(Rater, self.target_id),
                [(images[i], fused, "consensus", ref) for i, fused, ref, _ in self.pending],
                self.protocol,
            )
        for (_, _, ref, worked), result in zip(self.pending, stored):
            self.created += result.created
            self.unchanged += not result.created
            if self.cache is not None:
                self.cache.put(ref, replace(worked, fused=result.mask_hash))
        self.pending = []


def quality_path(ws: Workspace, method: str) -> Path:
    """Where ``consensus`` writes its report with the raters' quality."""
    return ws.root / "reports" / f"consensus-{method}" / "consensus.json"
