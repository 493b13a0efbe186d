"""The agreement sample: which two raters, which images and which version of each rater's
annotation. A sample is drawn with a seed and saved in the catalogue, so that ``agreement``
reuses it (the same numbers on a re-run); it is drawn anew with ``--resample`` or, for a sample
of every image, when the labels changed (and says how). Frames of a cine count as images;
``--per-cine`` keeps at most one frame of each loop."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select

from datatool.core.catalogue import (
    AgreementItem,
    AgreementSample,
    Annotation,
    Image,
    Rater,
    RaterKind,
    SourceFile,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.labels.annotations import get_rater, in_chunks, latest_annotations_query
from datatool.labels.gold import without_gold

MIN_IMAGES = 3  # an agreement needs at least this many images both raters labelled


def model_started(*labels: Annotation) -> bool:
    """Whether any of these labels started from a model: a draft, or a region a model redrew
    from the rater's clicks (Label Studio's interactive tool). Such raters are not
    independent."""
    return any(a.draft_version is not None or a.draft_clicks is not None for a in labels)


def _pick_raters(session, raters: list[str] | None) -> tuple[Rater, Rater]:
    if raters:
        if len(raters) != 2 or raters[0] == raters[1]:
            raise UsageError("--raters takes two different raters, e.g. --raters AN1,AN2")
        return get_rater(session, raters[0]), get_rater(session, raters[1])
    humans = session.execute(
        select(Rater, func.count(func.distinct(Annotation.image_id)).label("n"))
        .join(Annotation, Annotation.rater_id == Rater.id)
        .where(Rater.kind == RaterKind.human)
        .group_by(Rater.id)
        .order_by(func.count(func.distinct(Annotation.image_id)).desc(), Rater.name)
    ).all()
    if len(humans) < 2:
        raise DatatoolError(
            "agreement needs two raters with labels; "
            f"found {len(humans)} (sync both raters' labels first)"
        )
    a, b = sorted([humans[0][0], humans[1][0]], key=lambda r: r.name)
    return a, b


def _draw(
    session,
    a: Rater,
    b: Rater,
    size: int | None,
    seed: int,
    resample: bool,
    include_prelabelled: bool = False,
    include_gold: bool = False,
    per_cine: bool = False,
) -> tuple[AgreementSample, bool, int | None]:
    """The saved sample for these parameters, or a new one. Returns (sample, reused, images
    left out of a new sample because a label started from a model draft). ``per_cine``: at
    most one frame of each cine loop (drawn with the seed) among the candidates."""
    kept_drafts = (
        (func.coalesce(AgreementSample.include_prelabelled, False) == include_prelabelled)
        & (func.coalesce(AgreementSample.include_gold, False) == include_gold)
        & (func.coalesce(AgreementSample.per_cine, False) == per_cine)
    )
    if size is not None and not resample:
        saved = session.scalar(
            select(AgreementSample)
            .where(
                AgreementSample.rater_a_id == a.id,
                AgreementSample.rater_b_id == b.id,
                AgreementSample.size == size,
                AgreementSample.seed == seed,
                kept_drafts,
            )
            .order_by(AgreementSample.id.desc())
            .limit(1)
        )
        if saved is not None:
            return saved, True, None
    latest_of_both = list(session.scalars(latest_annotations_query([a.id, b.id])))
    if not include_gold:  # a gold-standard task's label is no independent rating
        latest_of_both = without_gold(session, latest_of_both)[0]
    annotations = {(ann.image_id, ann.rater_id): ann for ann in latest_of_both}
    latest = {key: ann.id for key, ann in annotations.items()}
    both = sorted({i for (i, r) in latest if r == a.id} & {i for (i, r) in latest if r == b.id})
    drafted = [i for i in both if model_started(annotations[(i, a.id)], annotations[(i, b.id)])]
    left_out = 0
    if not include_prelabelled and drafted:
        both = sorted(set(both) - set(drafted))
        left_out = len(drafted)
    if len(both) < MIN_IMAGES:
        why = (
            f" ({left_out} more left out: a label started from a model draft or was made "
            "with clicks; "
            "--include-prelabelled keeps them)"
            if left_out
            else ""
        )
        raise DatatoolError(
            f"only {len(both)} images are labelled by both {a.name} and "
            f"{b.name}{why}; agreement needs at least {MIN_IMAGES}"
        )
    rng = np.random.default_rng(seed)
    if per_cine:
        both = _one_frame_per_cine(session, both, rng)
        if len(both) < MIN_IMAGES:
            raise DatatoolError(
                f"only {len(both)} images (a cine loop counted once, --per-cine) are labelled "
                f"by both {a.name} and {b.name}; agreement needs at least {MIN_IMAGES}"
            )
    if size is not None:
        if size > len(both):
            what = " (a cine loop counted once, --per-cine)" if per_cine else ""
            raise DatatoolError(
                f"--sample {size} is more than the {len(both)} images{what} labelled "
                f"by both {a.name} and {b.name}: use --sample {len(both)} or "
                "leave --sample out for all of them"
            )
        if size < MIN_IMAGES:
            raise UsageError(f"--sample must be at least {MIN_IMAGES}")
        chosen = sorted(int(i) for i in rng.choice(np.asarray(both), size=size, replace=False))
    else:
        chosen = both
        saved = session.scalar(
            select(AgreementSample)
            .where(
                AgreementSample.rater_a_id == a.id,
                AgreementSample.rater_b_id == b.id,
                AgreementSample.size.is_(None),
                kept_drafts,
            )
            .order_by(AgreementSample.id.desc())
            .limit(1)
        )
        if (
            saved is not None
            and not resample
            and [(it.image_id, it.annotation_a_id, it.annotation_b_id) for it in saved.items]
            == [(i, latest[(i, a.id)], latest[(i, b.id)]) for i in chosen]
        ):
            return saved, True, left_out
    sample = AgreementSample(
        rater_a_id=a.id,
        rater_b_id=b.id,
        size=size,
        seed=seed,
        n_images=len(chosen),
        include_prelabelled=include_prelabelled,
        include_gold=include_gold,
        per_cine=per_cine,
    )
    session.add(sample)
    for i in chosen:
        session.add(
            AgreementItem(
                sample=sample,
                image_id=i,
                annotation_a_id=latest[(i, a.id)],
                annotation_b_id=latest[(i, b.id)],
            )
        )
    session.flush()
    return sample, False, left_out


def _one_frame_per_cine(session, image_ids: list[int], rng: np.random.Generator) -> list[int]:
    """The images with at most one frame of each cine file: the stills, and of each cine's
    frames among ``image_ids`` one drawn with ``rng`` (cines in file order), sorted."""
    frames: dict[int, list[int]] = {}
    kept = []
    for chunk in in_chunks(image_ids):
        for image_id, file_id, n_frames in session.execute(
            select(Image.id, Image.source_file_id, SourceFile.n_frames)
            .join(SourceFile, SourceFile.id == Image.source_file_id)
            .where(Image.id.in_(chunk))
        ):
            if n_frames > 1:
                frames.setdefault(file_id, []).append(image_id)
            else:
                kept.append(image_id)
    for file_id in sorted(frames):
        kept.append(int(rng.choice(np.asarray(sorted(frames[file_id])))))
    return sorted(kept)


def _cine_frames(session, image_ids: list[int]) -> tuple[int, int]:
    """Of these images: how many are frames of a cine, and of how many cines."""
    frames, files = 0, set()
    for chunk in in_chunks(image_ids):
        for file_id, n_frames in session.execute(
            select(Image.source_file_id, SourceFile.n_frames)
            .join(SourceFile, SourceFile.id == Image.source_file_id)
            .where(Image.id.in_(chunk))
        ):
            if n_frames > 1:
                frames += 1
                files.add(file_id)
    return frames, len(files)


def _why_new(session, sample: AgreementSample, resample: bool) -> str | None:
    """Why a new sample of every doubly labelled image was made instead of reusing the saved
    one of the same raters and options: --resample, or how the labels changed since."""
    if sample.size is not None:
        return "--resample" if resample else None
    if resample:
        return "--resample"
    before = session.scalar(
        select(AgreementSample)
        .where(
            AgreementSample.rater_a_id == sample.rater_a_id,
            AgreementSample.rater_b_id == sample.rater_b_id,
            AgreementSample.size.is_(None),
            func.coalesce(AgreementSample.include_prelabelled, False)
            == bool(sample.include_prelabelled),
            func.coalesce(AgreementSample.include_gold, False) == bool(sample.include_gold),
            AgreementSample.id < sample.id,
        )
        .order_by(AgreementSample.id.desc())
        .limit(1)
    )
    if before is None:
        return None  # the first such sample: nothing to reuse
    old = {it.image_id: (it.annotation_a_id, it.annotation_b_id) for it in before.items}
    new = {it.image_id: (it.annotation_a_id, it.annotation_b_id) for it in sample.items}
    added = len(new.keys() - old.keys())
    gone = len(old.keys() - new.keys())
    changed = sum(1 for i in new.keys() & old.keys() if new[i] != old[i])

    def images(n: int) -> str:
        return f"{n} image{'' if n == 1 else 's'}"

    parts = [
        f"{images(added)} newly labelled by both" if added else "",
        f"{images(gone)} no longer in it" if gone else "",
        f"{images(changed)} with a new label version" if changed else "",
    ]
    return f"the labels changed since sample {before.id}: " + ", ".join(p for p in parts if p)
