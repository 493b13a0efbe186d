"""``datatool agreement``: inter-rater reliability on a saved, reproducible sample.

The sample (which images, and which version of each rater's annotation) is saved in the
catalogue: running the same command again reuses it and prints the same numbers, even after
raters add new versions; ``resample=True`` draws afresh from the latest versions.
See ``metrics`` for the conventions (Dice/IoU of two empty maps, ICC rows, descriptives).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from datatool.analysis import metrics
from datatool.analysis.overlap_cache import OverlapCache, job_key
from datatool.analysis.plots import bland_altman_png
from datatool.analysis.sampling import (
    _cine_frames,
    _draw,
    _pick_raters,
    _why_new,
)
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    Image,
    StructureStats,
    audit,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.jsonable import to_jsonable
from datatool.core.processes import pool_context, worker_count
from datatool.core.protocol import Protocol, Structure, load_protocol
from datatool.core.store import Store
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    mask_hashes,
)

MEASURES = ("area_mm2", "area_px")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


CONVENTIONS: dict[str, str] = {
    "icc": "ICC(2,1): two-way random effects, absolute agreement, single measure "
    "(McGraw & Wong's ICC(A,1) and its CI; pingouin's figures); an empty structure is a "
    "rating of 0, so no image is dropped",
    "overall": "ICC over all (image, structure) pairs of the listed structures",
    "dice_iou": "pairs where both raters left the structure empty are excluded "
    "(both_absent); one empty gives 0",
    "prelabelled": "a new sample leaves out images where either rater's label started from "
    "a model draft (the raters were not independent) unless include_prelabelled",
    "cine": "a cine's frames are images like stills: a sample draws images, so it may hold "
    "several frames of one loop, which are not independent ratings (the same anatomy moments "
    "apart, labelled by the same rater in one sitting: the ICC's confidence interval is then "
    "too narrow); per_cine takes at most one frame per loop",
    "gold": "a new sample leaves out a rater's labels of their gold-standard tasks unless "
    "include_gold",
    "surface": "HD95 (the larger directed 95th percentile of border-to-border distances), "
    "ASSD (the mean of those distances, both directions pooled) and NSD (the share of both "
    "borders within the tolerance) per image, in mm with each image's own x and y spacing "
    "(in px when an image of the sample is not calibrated); an image where both raters or "
    "one rater left the structure empty has no surface distance (NaN, counted as "
    "both_absent or one_absent), never 0",
}


@dataclass
class SampleInfo:
    id: int
    size: int | None  # None: every image labelled by both raters
    seed: int  # the seed the sample was drawn with
    images: int
    reused: bool  # a saved sample, reused: the same numbers as before
    created: str
    why_new: str | None = None  # a new sample of every image: why the saved one was not reused


@dataclass
class StructureAgreement:
    structure: str
    icc: metrics.ICC | None  # None: no ICC (the reason is in the report's notes)
    dice: dict  # metrics.describe of the per-image Dice
    iou: dict
    both_absent: int  # images where both raters left it empty (no Dice/IoU)
    one_absent: int  # images where one rater left it empty (Dice/IoU 0)
    bland_altman: dict
    mean_rating: dict[str, float]  # rater -> mean of the measure
    # metrics.describe of the per-image HD95, ASSD (in surface_unit) and NSD at the
    # tolerance, over the images where both raters labelled the structure
    hd95: dict = field(default_factory=lambda: metrics.describe([]))
    assd: dict = field(default_factory=lambda: metrics.describe([]))
    nsd: dict = field(default_factory=lambda: metrics.describe([]))


@dataclass
class AgreementReport:
    sample: SampleInfo
    raters: list[str]
    measure: str  # area_mm2 or area_px
    unit: str
    structures: list[StructureAgreement]
    overall_icc: metrics.ICC | None  # over all (image, structure) pairs
    notes: list[str]
    out_dir: str
    figures: list[str]
    include_prelabelled: bool = False  # images labelled from model drafts were kept
    prelabelled_in_sample: int = 0  # images of the sample with a label from a model draft
    prelabelled_left_out: int | None = None  # left out of a new sample (None: reused)
    include_gold: bool = False  # raters' labels of gold-standard tasks were kept
    per_cine: bool = False  # at most one frame of each cine loop
    cine_frames: int = 0  # images of the sample that are frames of a cine loop
    cines: int = 0  # ... of this many loops
    # of HD95 and ASSD (and the tolerance): mm, or px uncalibrated; None: not computed
    surface_unit: str | None = "mm"
    nsd_tolerance: float = metrics.NSD_TOLERANCE_MM  # in surface_unit
    conventions: dict[str, str] = field(default_factory=lambda: dict(CONVENTIONS))


@dataclass
class _Sample:
    """A drawn sample with what the measures need, read in one transaction."""

    info: SampleInfo
    rater_a: str
    rater_b: str
    items: list[tuple[int, int, int]]  # (image, annotation of a, annotation of b)
    stats: dict[tuple[int, str], Any]  # (annotation, structure) -> its StructureStats row
    masks: dict[int, str]  # annotation -> mask hash
    calibrated: int  # images of the sample with mm calibration
    spacing: dict[int, tuple[float, float] | None]  # image -> (mm per px in y, in x)
    include_prelabelled: bool = False
    prelabelled: int = 0  # images whose label (either rater's) started from a model draft
    left_out: int | None = None  # images left out of a new sample for that reason
    include_gold: bool = False
    per_cine: bool = False
    cine_frames: int = 0  # images of the sample that are frames of a cine
    cines: int = 0  # ... of this many cines


def run_agreement(
    ws: Workspace,
    sample: int | None = None,
    seed: int = 0,
    raters: list[str] | None = None,
    structures: list[str] | None = None,
    measure: str | None = None,
    out_dir: Path | None = None,
    resample: bool = False,
    plots: bool = True,
    include_prelabelled: bool = False,
    include_gold: bool = False,
    tolerance: float = metrics.NSD_TOLERANCE_MM,
    surface: bool = True,
    per_cine: bool = False,
) -> AgreementReport:
    """Agreement between two raters: ICC(2,1) per structure and over all structures, Dice
    and IoU, the surface distances (HD95, ASSD, NSD at ``tolerance`` mm), Bland-Altman plots.
    The report is also written to out_dir/agreement.json. ``surface=False`` skips the
    surface distances (the slowest part: about 2 ms per image and structure).

    Two raters who started from the same model draft are not independent: a new sample
    leaves out images where either rater's label started from a draft (counted in the notes)
    unless ``include_prelabelled``, which keeps them and marks the report. A saved sample is
    reused as it is.

    A cine's frames are images: a sample draws among them like among stills, unless
    ``per_cine`` takes at most one frame of each loop (frames of one loop are not independent
    ratings); the report counts the sample's cine frames and says so in a note."""
    protocol = load_protocol(ws.protocol_name)
    if measure is not None and measure not in MEASURES:
        raise UsageError(f"--measure must be one of {', '.join(MEASURES)}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a distance in mm of 0 or more, not {tolerance}")
    wanted = _wanted_structures(protocol, structures)
    smp = _load_sample(
        ws, raters, sample, seed, resample, include_prelabelled, include_gold, per_cine
    )
    notes: list[str] = _prelabelled_notes(smp) + _cine_notes(smp)
    measure, unit = _choose_measure(measure, smp, notes)
    surface_unit = "mm" if smp.calibrated == len(smp.items) else "px"
    if surface and surface_unit == "px":
        notes.append(
            f"surface distances in pixels (an image of the sample has no mm calibration); "
            f"the NSD tolerance {tolerance:g} is read as pixels"
        )
    spacing = {
        i: (sp if surface_unit == "mm" and sp else (1.0, 1.0)) for i, sp in smp.spacing.items()
    }
    overlaps, surfaces = _overlaps(
        ws.store.root,
        smp.items,
        smp.masks,
        smp.stats,
        wanted,
        spacing,
        tolerance if surface else None,
        OverlapCache(ws.meta_dir),
    )
    results: list[StructureAgreement] = []
    ratings: list[tuple[np.ndarray, np.ndarray]] = []
    matrices: list[np.ndarray] = []
    for st in wanted:
        ra, rb, pa, pb = _ratings(smp, st.name, measure)
        if not pa.any() and not pb.any():
            message = f"structure {st.name!r}: neither rater labelled it in these images"
            if structures:
                raise DatatoolError(message)
            notes.append(message + " (left out)")
            continue
        matrices.append(_matrix(ra, rb))
        agreement = _structure_agreement(
            st.name, smp, matrices[-1], ra, rb, pa, pb, overlaps[st.name], notes
        )
        described = metrics.describe_surfaces(surfaces[st.name])
        agreement.hd95, agreement.assd, agreement.nsd = (
            described["hd95"],
            described["assd"],
            described["nsd"],
        )
        results.append(agreement)
        ratings.append((ra, rb))
    if not results:
        raise DatatoolError("no structure was labelled by either rater in these images")
    overall = (
        _icc_or_note(np.concatenate(matrices), "all structures", notes)
        if len(results) > 1
        else results[0].icc
    )
    out = Path(out_dir) if out_dir else ws.root / "reports" / f"agreement-{smp.info.id}"
    out.mkdir(parents=True, exist_ok=True)
    figures = (
        _bland_altman_plots(out, results, ratings, unit, (smp.rater_a, smp.rater_b))
        if plots
        else []
    )
    report = AgreementReport(
        sample=smp.info,
        raters=[smp.rater_a, smp.rater_b],
        measure=measure,
        unit=unit,
        structures=results,
        overall_icc=overall,
        notes=notes,
        out_dir=str(out),
        figures=figures,
        include_prelabelled=smp.include_prelabelled,
        prelabelled_in_sample=smp.prelabelled,
        prelabelled_left_out=smp.left_out,
        include_gold=smp.include_gold,
        per_cine=smp.per_cine,
        cine_frames=smp.cine_frames,
        cines=smp.cines,
        surface_unit=surface_unit if surface else None,
        nsd_tolerance=tolerance,
    )
    write_text_atomic(out / "agreement.json", json.dumps(to_jsonable(report), indent=2))
    return report


def _prelabelled_notes(smp: _Sample) -> list[str]:
    notes = []
    if smp.left_out:
        notes.append(
            f"{smp.left_out} images left out: a label of either rater started from a model "
            "draft (or was made with clicks), so the raters were not independent "
            "(--include-prelabelled keeps them)"
        )
    if smp.prelabelled:
        notes.append(
            f"{smp.prelabelled} of {len(smp.items)} images have a label that started from a "
            "model draft (or was made with clicks): for them this is not a measure of "
            "independent human agreement"
        )
    return notes


def _cine_notes(smp: _Sample) -> list[str]:
    if smp.per_cine:
        return [
            f"at most one frame per cine loop (--per-cine): {smp.cine_frames} of "
            f"{len(smp.items)} images are cine frames, each of another loop"
        ]
    if not smp.cine_frames:
        return []
    return [
        f"{smp.cine_frames} of {len(smp.items)} images are frames of {smp.cines} cine "
        "loop(s): frames of one loop are not independent ratings (the same anatomy moments "
        "apart, labelled in one sitting), so the ICC's confidence interval is too narrow; "
        "--per-cine takes at most one frame per loop"
    ]


def _wanted_structures(protocol: Protocol, structures: list[str] | None) -> list[Structure]:
    if not structures:
        return list(protocol.structures)
    try:
        return [protocol.by_label(n) for n in structures]
    except KeyError as exc:
        raise UsageError(
            f"{exc.args[0]}; the protocol has: {', '.join(s.name for s in protocol.structures)}"
        ) from None


def _load_sample(
    ws: Workspace,
    raters: list[str] | None,
    size: int | None,
    seed: int,
    resample: bool,
    include_prelabelled: bool = False,
    include_gold: bool = False,
    per_cine: bool = False,
) -> _Sample:
    """The saved sample for these parameters (or a new one, saved and audited), with the
    structure statistics and mask hashes of its annotations."""
    with ws.session() as s:
        a, b = _pick_raters(s, raters)
        smp, reused, left_out = _draw(s, a, b, size, seed, resample, include_prelabelled,
                                      include_gold, per_cine)  # fmt: skip
        if not reused:
            audit(
                s,
                "agreement",
                "sample",
                sample_id=smp.id,
                raters=[a.name, b.name],
                size=size,
                seed=seed,
                images=smp.n_images,
                include_prelabelled=include_prelabelled,
                prelabelled_left_out=left_out,
                include_gold=include_gold,
                per_cine=per_cine,
            )
        items = [(it.image_id, it.annotation_a_id, it.annotation_b_id) for it in smp.items]
        ann_ids = [x for _, ia, ib in items for x in (ia, ib)]
        stats = {
            (row.annotation_id, row.structure): row
            for row in s.execute(
                select(
                    StructureStats.annotation_id,
                    StructureStats.structure,
                    StructureStats.value,
                    StructureStats.area_px,
                    StructureStats.area_mm2,
                    StructureStats.x0,
                    StructureStats.y0,
                    StructureStats.x1,
                    StructureStats.y1,
                ).where(StructureStats.annotation_id.in_(ann_ids))
            )
        }
        spacing: dict[int, tuple[float, float] | None] = {
            i: (float(y), float(x)) if x and y else None
            for i, x, y in s.execute(
                select(Image.id, Image.mm_per_px_x, Image.mm_per_px_y).where(
                    Image.id.in_([i for i, _, _ in items])
                )
            )
        }
        calibrated = sum(sp is not None for sp in spacing.values())
        cine_frames, cines = _cine_frames(s, [i for i, _, _ in items])
        info = SampleInfo(
            id=smp.id,
            size=smp.size,
            seed=smp.seed,
            images=len(items),
            reused=reused,
            created=smp.created_at.isoformat(timespec="seconds"),
            why_new=None if reused else _why_new(s, smp, resample),
        )
        prelabelled = set(
            s.scalars(
                select(Annotation.image_id).where(
                    Annotation.id.in_(ann_ids),
                    Annotation.draft_version.is_not(None) | Annotation.draft_clicks.is_not(None),
                )
            )
        )
        return _Sample(
            info,
            a.name,
            b.name,
            items,
            stats,
            mask_hashes(s, ann_ids),
            calibrated,
            spacing,
            include_prelabelled=bool(smp.include_prelabelled),
            prelabelled=len(prelabelled),
            left_out=left_out,
            include_gold=bool(smp.include_gold),
            per_cine=bool(smp.per_cine),
            cine_frames=cine_frames,
            cines=cines,
        )


def _choose_measure(measure: str | None, smp: _Sample, notes: list[str]) -> tuple[str, str]:
    """The per-image measure (mm² when every image is calibrated, else px) and its unit."""
    n = len(smp.items)
    all_calibrated = smp.calibrated == n
    if measure is None:
        measure = "area_mm2" if all_calibrated else "area_px"
        if not all_calibrated:
            notes.append(
                f"{n - smp.calibrated} of {n} images have no mm calibration: areas in pixels"
            )
    elif measure == "area_mm2" and not all_calibrated:
        raise DatatoolError(
            f"{n - smp.calibrated} of {n} images have no mm calibration: use --measure area_px"
        )
    return measure, "mm²" if measure == "area_mm2" else "px"


def _ratings(
    smp: _Sample, structure: str, measure: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both raters' measure and area in px of one structure over the sample's images."""
    rows_a = [smp.stats[(ia, structure)] for _, ia, _ in smp.items]
    rows_b = [smp.stats[(ib, structure)] for _, _, ib in smp.items]
    return (  # numpy's own dtypes (int px, float mm²): every figure is computed in float
        np.array([getattr(r, measure) for r in rows_a]),
        np.array([getattr(r, measure) for r in rows_b]),
        np.array([r.area_px for r in rows_a]),
        np.array([r.area_px for r in rows_b]),
    )


def _matrix(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """The (image x rater) matrix of one structure's ratings, as ICC takes it."""
    return np.column_stack([ra, rb]).astype(float)


def _structure_agreement(
    name: str,
    smp: _Sample,
    matrix: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    pa: np.ndarray,
    pb: np.ndarray,
    overlaps: list[int],
    notes: list[str],
) -> StructureAgreement:
    pairs = [metrics.dice_iou(int(x), int(y), overlaps[k]) for k, (x, y) in enumerate(zip(pa, pb))]
    return StructureAgreement(
        structure=name,
        icc=_icc_or_note(matrix, name, notes),
        dice=metrics.describe([p[0] for p in pairs if p]),
        iou=metrics.describe([p[1] for p in pairs if p]),
        both_absent=int(sum(p is None for p in pairs)),
        one_absent=int(sum(1 for x, y in zip(pa, pb) if (x == 0) != (y == 0))),
        bland_altman=metrics.bland_altman(ra, rb),
        mean_rating={smp.rater_a: float(ra.mean()), smp.rater_b: float(rb.mean())},
    )


def _bland_altman_plots(
    out: Path,
    results: list[StructureAgreement],
    ratings: list[tuple[np.ndarray, np.ndarray]],
    unit: str,
    raters: tuple[str, str],
) -> list[str]:
    return [
        str(
            bland_altman_png(
                out / f"bland_altman_{_slug(r.structure)}.png",
                ra,
                rb,
                r.bland_altman,
                f"Bland-Altman: {r.structure}",
                unit,
                raters,
            )
        )
        for r, (ra, rb) in zip(results, ratings)
    ]


def _icc_or_note(matrix: np.ndarray, what: str, notes: list[str]) -> metrics.ICC | None:
    try:
        icc = metrics.icc21_matrix(matrix)
    except ValueError as exc:
        notes.append(f"{what}: no ICC ({exc})")
        return None
    if icc.ci_low is None:
        why = (
            "the raters agree perfectly"
            if icc.icc == 1.0
            else "the raters differ by the same amount on every target"
        )
        notes.append(f"{what}: {why}; no CI (no residual variance)")
    return icc


POOL_FROM = 400  # items; below this, counting in this process is faster than a pool


def _overlap_one(job: tuple) -> list[tuple[int, metrics.Surface]]:
    """For each (value, box, present in a, present in b, union of the boxes) of one item's
    two masks: the overlap (box None: 0) and the surface distances (tolerance None: not
    asked; a structure absent from either map: the stated empty case). The masks are read
    only when a measure needs them."""
    store_root, hash_a, hash_b, boxes, spacing, tolerance = job
    masks: list[np.ndarray] = []

    def load() -> list[np.ndarray]:
        if not masks:
            store = Store(Path(store_root))
            masks.extend((store.get_array(hash_a), store.get_array(hash_b)))
        return masks

    nan = math.nan
    out: list[tuple[int, metrics.Surface]] = []
    for value, box, in_a, in_b, union in boxes:
        if box is None:
            overlap = 0
        else:
            a, b = load()
            overlap = metrics.overlap(a, b, value, box)
        if tolerance is None:
            surface = metrics.Surface(nan, nan, nan, nan, "not asked")
        elif not (in_a and in_b):
            empty = metrics.ONE_EMPTY if in_a or in_b else metrics.BOTH_EMPTY
            surface = metrics.Surface(nan, nan, nan, tolerance, empty)
        else:
            # the union of both boxes holds every pixel of the structure in either map, and
            # metrics.surface takes the crop's edge as outside: the borders as in the image
            x0, y0, x1, y1 = union
            sa, sb = (m[y0 : y1 + 1, x0 : x1 + 1] == value for m in load())
            surface = metrics.surface(sa, sb, spacing, tolerance)
        out.append((overlap, surface))
    return out


def _overlaps(
    store_root: Path,
    items,
    masks: dict,
    by_ann: dict,
    wanted,
    spacing: dict[int, tuple[float, float]],
    tolerance: float | None,
    cache: OverlapCache | None = None,
) -> tuple[dict[str, list[int]], dict[str, list[metrics.Surface]]]:
    """Per structure, for each item: the overlap in pixels of the two raters' maps, counted
    only where the two structures' bounding boxes meet, and the surface distances at the
    image's spacing; large samples in worker processes. With ``cache``, an item measured
    before from the same inputs is not measured again (``overlap_cache``)."""
    jobs = []
    for image_id, ia, ib in items:
        boxes = []
        for st in wanted:
            ra, rb = by_ann[(ia, st.name)], by_ann[(ib, st.name)]
            box = metrics.box_intersection(
                None if ra.area_px == 0 else (ra.x0, ra.y0, ra.x1, ra.y1),
                None if rb.area_px == 0 else (rb.x0, rb.y0, rb.x1, rb.y1),
            )
            union = (
                (
                    int(min(ra.x0, rb.x0)),
                    int(min(ra.y0, rb.y0)),
                    int(max(ra.x1, rb.x1)),
                    int(max(ra.y1, rb.y1)),
                )
                if ra.area_px > 0 and rb.area_px > 0
                else None
            )
            boxes.append(
                (
                    st.value,
                    None if box is None else tuple(int(v) for v in box),
                    ra.area_px > 0,
                    rb.area_px > 0,
                    union,
                )
            )
        jobs.append((str(store_root), masks[ia], masks[ib], boxes, spacing[image_id], tolerance))
    keys = [job_key(*job[1:]) for job in jobs] if cache is not None else []
    known = [cache.get(key) for key in keys] if cache is not None else [None] * len(jobs)
    todo = [job for job, found in zip(jobs, known) if found is None]
    workers = worker_count(cap=8)
    if len(todo) >= POOL_FROM and workers > 1:
        with pool_context().Pool(workers) as pool:
            measured = pool.map(_overlap_one, todo, chunksize=64)
    else:
        measured = [_overlap_one(job) for job in todo]
    fresh = iter(measured)
    counts = [found if found is not None else next(fresh) for found in known]
    if cache is not None:
        for key, found, count in zip(keys, known, counts):
            if found is None:
                cache.put(key, count)
        cache.save()
    return (
        {st.name: [c[k][0] for c in counts] for k, st in enumerate(wanted)},
        {st.name: [c[k][1] for c in counts] for k, st in enumerate(wanted)},
    )
