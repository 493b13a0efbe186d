"""Versioned patient-level splits: create (frozen), show, check (export: split_export).

Whole patients go to train / validation / test, as close to the requested ratios *in images*
as whole patients allow; the non-test patients are also dealt into k cross-validation folds.
The order patients are dealt in is a keyed hash of the seed and the pseudonym, and the greedy
dealing gives each patient (largest first) to the set furthest below its target: the same
catalogue and seed give the same split on any machine and any library version. A split
records each member's reference label version and a content hash over everything; it is never
changed: images added later belong to no old split, and a new split needs a new name.

Only images with a reference label are frozen (``all_images`` keeps the others): a catalogue
labelled in part gives a split of its labelled images, the ratios holding over those, and
the images left out are counted by reason. Patients are dealt by their labelled images. A
later split made with ``extend=OLD`` keeps every patient OLD has in OLD's set and fold, so
the images of a patient labelled since (a cine's frames, a late still) join that patient's
set; only patients OLD lacks are dealt, toward the ratios over the whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Bundle

from datatool.core.catalogue import (
    Annotation,
    Image,
    Patient,
    Rater,
    RaterKind,
    Series,
    SourceFile,
    Split,
    SplitMember,
    Study,
    audit,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.verified import verify_objects
from datatool.core.workspace import Workspace
from datatool.labels.annotations import latest_annotations_query
from datatool.labels.matching import image_name
from datatool.learning.options import Stratify, Subset, choice

SUBSETS = tuple(s.value for s in Subset)  # the order of deal()'s bins: train, val, test
SEED_MAX = 2**31 - 1  # the largest seed the catalogue stores (an INTEGER column)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    total = sum(parts)
    if (
        len(parts) != 3
        or not all(math.isfinite(p) and p >= 0 for p in parts)
        or not math.isfinite(total)  # 1e308:1e308:1e308 sums to inf: every share 0
        or parts[0] == 0  # (so the total is above 0)
    ):
        raise UsageError(
            f"--ratios takes three finite shares train:val:test such as 6:2:2, not {text[:40]!r}"
        )
    shares = tuple(p / total for p in parts)
    if shares[0] == 0 or not math.isclose(math.fsum(shares), 1.0):  # 5e-324:1:1 underflows
        raise UsageError(f"--ratios {text[:40]!r}: shares too far apart to divide; use e.g. 6:2:2")
    return shares  # type: ignore[return-value]


def deal(
    units: list[tuple[str, int]],
    weights: list[float],
    seed: int,
    filled: list[int] | None = None,
) -> dict[str, int]:
    """Give each unit (name, images) to one of len(weights) bins so that each bin's share of
    the images comes as close to its weight as whole units allow. Deterministic: units are
    taken largest first, ties in a keyed-hash order of (seed, name). ``filled``: images the
    bins hold already (units kept from an earlier split), counted toward the shares."""
    filled = list(filled) if filled is not None else [0] * len(weights)
    total = sum(n for _, n in units) + sum(filled)
    targets = [w * total for w in weights]
    order = sorted(
        units, key=lambda u: (-u[1], hashlib.sha256(f"{seed}:{u[0]}".encode()).hexdigest())
    )
    out = {}
    for name, n in order:
        # the bin whose filling would leave it least over (most under) its target, relative
        best = max(
            range(len(weights)),
            key=lambda k: (
                (targets[k] - filled[k]) / targets[k] if targets[k] > 0 else float("-inf"),
                -k,
            ),
        )
        out[name] = best
        filled[best] += n
    return out


def default_reference(session) -> Rater | None:
    """The consensus rater with the newest annotation, if any."""
    return session.scalar(
        select(Rater)
        .join(Annotation, Annotation.rater_id == Rater.id)
        .where(Rater.kind == RaterKind.consensus)
        .order_by(Annotation.created_at.desc(), Annotation.id.desc())
        .limit(1)
    )


def _population(session):
    """(image id, patient id, pseudonym, sex, side, image store hash, frames of its file) of
    every image."""
    return session.execute(
        select(
            Image.id,
            Patient.id,
            Patient.pseudonym,
            Patient.sex,
            Series.side,
            Image.store_hash,
            SourceFile.n_frames,
        )
        .join(Series, Image.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .join(Patient, Study.patient_id == Patient.id)
        .join(SourceFile, Image.source_file_id == SourceFile.id)
        .order_by(Image.id)
    ).all()


# --------------------------------------------------------------------------- results


@dataclass
class SetCounts:
    """Patients and images of a set, a fold or the whole split, with sex and side balance."""

    patients: int
    images: int
    female: int  # patients
    male: int
    left_images: int
    right_images: int
    with_reference: int  # images with a reference label
    share: float | None = None  # of the split's images; sets only

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.share is None:
            del d["share"]
        return d


@dataclass
class LeftOut:
    """Images of the catalogue that ``split create`` did not freeze, for one reason."""

    reason: str
    images: int
    patients: int
    cine_frames: int  # of the images, frames of a cine loop
    next_step: str  # what makes them part of a later split


@dataclass
class SplitSummary:
    """A frozen split: its parameters and content hash, counts per set and per fold; from
    ``split create`` also the images it left out, by reason (``left_out`` None: not known,
    as ``split show`` reads a split back), and the split it extends."""

    name: str
    hash: str
    seed: int
    ratios: str
    folds: int
    stratify: str | None
    reference: str | None  # the rater whose labels are the reference
    created: str
    subsets: dict[str, SetCounts]  # train, val, test
    fold_sizes: dict[str, SetCounts]  # "0", "1", ... (none without folds)
    total: SetCounts
    left_out: int | None = None  # images not frozen (split create only)
    left_out_reasons: list[LeftOut] = field(default_factory=list)
    extends: str | None = None  # the earlier split whose patients kept their sets
    not_in_split: int = 0  # catalogue images left out (no reference label then) or added after


@dataclass
class SplitCheck:
    """Leakage, completeness and integrity of a split; ``ok`` when there is no problem."""

    name: str
    ok: bool
    hash_ok: bool  # the content hash still matches the members
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0
    masks_hashed: int = 0  # reference masks read and hashed now (the rest unchanged since)


# --------------------------------------------------------------------------- create


def content_hash(params: dict, members: list[tuple]) -> str:
    body = json.dumps(
        {"params": params, "members": sorted(members)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _params(split: Split) -> dict:
    """The parameters a split's content hash covers."""
    return {
        "ratios": split.ratios,
        "folds": split.folds,
        "seed": split.seed,
        "stratify": split.stratify,
        "reference": split.reference,
    }


def _hashed(
    store_hash: str, pseudonym: str, subset: str, fold: int | None, mask_hash: str | None
) -> tuple:
    """One member as the content hash covers it."""
    return (store_hash, pseudonym, subset, -1 if fold is None else fold, mask_hash or "")


def _assign(
    population,
    weights: list[float],
    folds: int,
    seed: int,
    stratify: Stratify | None,
    kept: dict[int, tuple[int, int | None]] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Pseudonym -> set (index into SUBSETS), and pseudonym -> fold for the non-test
    patients: whole patients dealt within each stratum. ``kept``: patient id -> (set, fold)
    of the patients an earlier split holds, who stay there (their images counted toward the
    shares); only the others are dealt."""
    kept = kept or {}
    patients: dict[str, dict] = {}
    for _image_id, patient_id, pseudonym, sex, side, *_ in population:
        p = patients.setdefault(
            pseudonym, {"id": patient_id, "sex": sex or "?", "sides": set(), "images": 0}
        )
        p["images"] += 1
        p["sides"].add(side or "?")
    strata: dict[str, list[tuple[str, int]]] = defaultdict(list)
    filled: dict[str, list[int]] = defaultdict(lambda: [0] * len(weights))
    fold_filled: dict[str, list[int]] = defaultdict(lambda: [0] * folds)  # used when folds
    subset_of: dict[str, int] = {}
    fold_of: dict[str, int] = {}
    for pseudonym, p in patients.items():
        key = {Stratify.sex: p["sex"], Stratify.side: "".join(sorted(p["sides"])), None: ""}[
            stratify
        ]
        if p["id"] in kept:
            subset, fold = kept[p["id"]]
            subset_of[pseudonym] = subset
            filled[key][subset] += p["images"]
            if fold is not None and folds:
                fold_of[pseudonym] = fold
                fold_filled[key][fold] += p["images"]
        else:
            strata[key].append((pseudonym, p["images"]))
    for key in sorted(strata):
        subset_of.update(deal(strata[key], weights, seed, filled.get(key)))
    test = SUBSETS.index(Subset.test)
    outside_test = sum(1 for k in subset_of.values() if k != test)
    if folds > outside_test:
        raise UsageError(
            f"--folds {folds}: only {outside_test} patient(s) outside the test set; "
            f"at most {outside_test} folds (or --folds 0)"
        )
    if folds:
        for key in sorted(strata):
            rest = [u for u in strata[key] if subset_of[u[0]] != test]
            fold_of.update(deal(rest, [1.0 / folds] * folds, seed, fold_filled.get(key)))
    return subset_of, fold_of


def _reference_rater(session, reference: str | None) -> Rater | None:
    if not reference:
        return default_reference(session)
    ref = session.scalar(select(Rater).where(Rater.name == reference))
    if ref is None:  # an unknown rater is a usage error, as in every command
        raise UsageError(
            f"rater {reference!r} is not registered (reference labels come from "
            "'datatool consensus' or a registered rater's name)"
        )
    return ref


@dataclass
class _Params:
    ratios: str
    folds: int
    seed: int
    stratify: str | None


def _inherit(
    base: Split | None,
    ratios: str | None,
    folds: int | None,
    seed: int | None,
    stratify: str | None,
) -> _Params:
    """The parameters of a new split: those given, else the extended split's, else the
    defaults (6:2:2, 5 folds, seed 0, no strata). A split that extends another keeps its
    ratios, folds and strata (its seed may differ: it only orders the new patients)."""
    if base is None:
        return _Params(
            ratios if ratios is not None else "6:2:2",
            folds if folds is not None else 5,
            seed if seed is not None else 0,
            stratify,
        )
    if ratios is not None and parse_ratios(ratios) != parse_ratios(base.ratios):
        raise UsageError(
            f"--ratios {ratios}: split {base.name!r} was dealt {base.ratios}, and a split "
            "that extends it keeps its ratios (leave --ratios out)"
        )
    if folds is not None and folds != base.folds:
        raise UsageError(
            f"--folds {folds}: split {base.name!r} has {base.folds} folds, and a split that "
            "extends it keeps its folds (leave --folds out)"
        )
    strat = None if stratify is None else choice(Stratify, stratify, "--stratify").value
    if stratify is not None and strat != base.stratify:
        raise UsageError(
            f"--stratify {stratify}: split {base.name!r} is stratified by "
            f"{base.stratify or 'nothing'}, and a split that extends it keeps that"
        )
    return _Params(base.ratios, base.folds, seed if seed is not None else base.seed, base.stratify)


def _kept_patients(session, base: Split) -> dict[int, tuple[int, int | None]]:
    """Patient id -> (set index, fold) in an earlier split; refused when that split puts a
    patient in two sets or folds (it fails 'split check')."""
    kept: dict[int, tuple[int, int | None]] = {}
    rows = session.execute(
        select(SplitMember.patient_id, SplitMember.subset, SplitMember.fold)
        .where(SplitMember.split_id == base.id)
        .distinct()
    ).all()
    for patient_id, subset, fold in rows:
        place = (SUBSETS.index(subset), fold)
        if kept.setdefault(patient_id, place) != place:
            raise DatatoolError(
                f"split {base.name!r} puts one patient in two sets or folds: it cannot be "
                f"extended (see 'datatool split check {base.name}')"
            )
    return kept


def _left_out(session, missing, ref: Rater | None) -> list[LeftOut]:
    """The images without a reference label, by reason: labelled by a rater but not (yet)
    by the reference, or labelled by no rater at all."""
    rated = set(
        session.scalars(
            select(Annotation.image_id)
            .join(Rater, Annotation.rater_id == Rater.id)
            .where(Rater.kind == RaterKind.human)
            .distinct()
        )
    )
    source = f"from {ref.name}" if ref is not None else "(no consensus has been made)"
    reasons = {
        True: (
            f"labelled by a rater, but no reference label {source}",
            "run 'datatool consensus' (or give --reference), then create a new split "
            "(--extend keeps its patients' sets)",
        ),
        False: (
            "not labelled by any rater",
            "label them (export itksnap / labelstudio push), run 'datatool consensus', then "
            "create a new split (--extend keeps its patients' sets)",
        ),
    }
    out = []
    for labelled in (True, False):
        rows = [r for r in missing if (r[0] in rated) == labelled]
        if rows:
            reason, step = reasons[labelled]
            out.append(
                LeftOut(
                    reason=reason,
                    images=len(rows),
                    patients=len({r[1] for r in rows}),
                    cine_frames=sum(1 for r in rows if (r[6] or 1) > 1),
                    next_step=step,
                )
            )
    return out


def create_split(
    ws: Workspace,
    name: str,
    ratios: str | None = None,
    folds: int | None = None,
    seed: int | None = None,
    stratify: str | None = None,
    reference: str | None = None,
    all_images: bool = False,
    extend: str | None = None,
) -> SplitSummary:
    """Deal whole patients to train/val/test (and folds), record each member's reference
    label and freeze the split with a content hash.

    Only images with a reference label are members (``all_images``: every image); the
    others are counted by reason in ``left_out_reasons``. With ``extend`` (an earlier
    split's name) every patient of that split keeps its set and fold, and the ratios, folds
    and strata are that split's."""
    if not NAME_RE.match(name):
        raise UsageError(f"split name {name!r}: letters, digits, '.', '_' or '-' (max 64)")
    with ws.session() as s:
        base = get_split(s, extend) if extend is not None else None
        if base is not None:
            s.expunge(base)
    params = _inherit(base, ratios, folds, seed, stratify)
    weights = parse_ratios(params.ratios)
    if params.folds < 0 or params.folds == 1:
        raise UsageError("--folds is 0 (none) or at least 2")
    if not 0 <= params.seed <= SEED_MAX:
        raise UsageError(f"--seed must be 0 .. {SEED_MAX}")
    strat = None if params.stratify is None else choice(Stratify, params.stratify, "--stratify")
    with ws.session() as s:
        old = s.scalar(select(Split).where(Split.name == name))
        if old is not None:
            raise DatatoolError(
                f"split {name!r} exists (frozen since {old.created_at:%Y-%m-%d %H:%M}, hash "
                f"{old.content_hash[:12]}); splits never change: create a new one, e.g. "
                f"'datatool split create {name}-v2'"
            )
        ref = _reference_rater(s, reference)
        population = _population(s)
        if not population:
            raise DatatoolError("the catalogue has no images: run 'datatool ingest' first")
        labels = (
            {a.image_id: a for a in s.scalars(latest_annotations_query([ref.id]))}
            if ref is not None
            else {}
        )
        left_out: list[LeftOut] = []
        if not all_images:
            missing = [row for row in population if row[0] not in labels]
            population = [row for row in population if row[0] in labels]
            left_out = _left_out(s, missing, ref)
            if not population:
                patients = len({row[1] for row in missing})
                if params.folds > patients:  # a usage error whatever the labels
                    raise UsageError(
                        f"--folds {params.folds}: the catalogue has only {patients} "
                        f"patient(s); at most {patients} folds (or --folds 0)"
                    )
                raise DatatoolError(
                    "no image has a reference label"
                    + (f" from {ref.name}" if ref is not None else " (no consensus yet)")
                    + ": run 'datatool consensus' (or give --reference RATER), or keep "
                    "unlabelled images with --all-images"
                )
        kept = _kept_patients(s, base) if base is not None else None
        subset_of, fold_of = _assign(
            population, list(weights), params.folds, params.seed, strat, kept
        )
        split = Split(
            name=name,
            content_hash="",
            seed=params.seed,
            ratios=params.ratios,
            folds=params.folds,
            stratify=None if strat is None else strat.value,
            reference=ref.name if ref else None,
        )
        s.add(split)
        hashed = []
        for image_id, patient_id, pseudonym, _, _, store_hash, _ in population:
            subset = SUBSETS[subset_of[pseudonym]]
            fold = fold_of.get(pseudonym)
            ann = labels.get(image_id)
            s.add(
                SplitMember(
                    split=split,
                    image_id=image_id,
                    patient_id=patient_id,
                    subset=subset,
                    fold=fold,
                    annotation_id=ann.id if ann else None,
                )
            )
            hashed.append(_hashed(store_hash, pseudonym, subset, fold, ann and ann.mask_hash))
        hash_params = _params(split)
        split.content_hash = content_hash(hash_params, hashed)
        audit(
            s,
            "split create",
            "split",
            name=name,
            hash=split.content_hash,
            left_out=sum(r.images for r in left_out),
            all_images=all_images,
            extends=extend,
            **hash_params,
        )
    summary = show_split(ws, name)
    summary.left_out = sum(r.images for r in left_out)
    summary.left_out_reasons = left_out
    summary.extends = extend
    return summary


# --------------------------------------------------------------------------- read


# A member as the readers use it (image_id, annotation_id, subset, fold, and its reference
# label's mask_hash): plain rows, not ORM entities (30,000 members: 0.63 -> 0.2 s)
_MEMBER: Bundle[Any] = Bundle(
    "member",
    SplitMember.image_id,
    SplitMember.annotation_id,
    SplitMember.subset,
    SplitMember.fold,
    Annotation.mask_hash,
)


def split_members(session, split: Split):
    """(member, pseudonym, sex, side, image store hash) per member, by image id."""
    return session.execute(
        select(_MEMBER, Patient.pseudonym, Patient.sex, Series.side, Image.store_hash)
        .join(Image, SplitMember.image_id == Image.id)
        .outerjoin(Annotation, SplitMember.annotation_id == Annotation.id)
        .join(Series, Image.series_id == Series.id)
        .join(Patient, SplitMember.patient_id == Patient.id)
        .where(SplitMember.split_id == split.id)
        .order_by(SplitMember.image_id)
    ).all()


def get_split(session, name: str) -> Split:
    """The split called ``name``, or an error that lists the splits there are."""
    split = session.scalar(select(Split).where(Split.name == name))
    if split is None:
        names = list(session.scalars(select(Split.name).order_by(Split.name)))
        raise DatatoolError(
            f"no split {name!r}"
            + (
                f"; splits: {', '.join(names)}"
                if names
                else "; create one with 'datatool split create'"
            )
        )
    return split


def split_name_of(session, split_id: int) -> str:
    """The name of the split with id ``split_id`` (which must exist)."""
    return session.execute(select(Split.name).where(Split.id == split_id)).scalar_one()


def _counts(selected, share: float | None = None) -> SetCounts:
    patients = {pseudonym: sex for m, pseudonym, sex, _, _ in selected}
    sexes = Counter(patients.values())
    sides = Counter(side for _, _, _, side, _ in selected)  # L and R are read; None is not
    return SetCounts(
        patients=len(patients),
        images=len(selected),
        female=sexes.get("F", 0),
        male=sexes.get("M", 0),
        left_images=sides.get("L", 0),
        right_images=sides.get("R", 0),
        with_reference=sum(1 for m, *_ in selected if m.annotation_id),
        share=share,
    )


def show_split(ws: Workspace, name: str) -> SplitSummary:
    """Patients and images per set and fold, with sex and side balance."""
    with ws.session() as s:
        split = get_split(s, name)
        rows = split_members(s, split)
        total = len(rows)
        subsets = {}
        for sub in SUBSETS:
            selected = [r for r in rows if r[0].subset == sub]
            subsets[sub] = _counts(selected, (len(selected) / total) if total else 0.0)
        return SplitSummary(
            name=split.name,
            hash=split.content_hash,
            seed=split.seed,
            ratios=split.ratios,
            folds=split.folds,
            stratify=split.stratify,
            reference=split.reference,
            created=split.created_at.isoformat(timespec="seconds"),
            subsets=subsets,
            fold_sizes={
                str(k): _counts([r for r in rows if r[0].fold == k]) for k in range(split.folds)
            },
            total=_counts(rows),
            not_in_split=int(
                s.scalar(
                    select(func.count(Image.id)).where(
                        Image.id.not_in(
                            select(SplitMember.image_id).where(SplitMember.split_id == split.id)
                        )
                    )
                )
                or 0
            ),
        )


def _leakage(rows) -> list[str]:
    """Patients in two sets or two folds, test images in a fold."""
    problems = []
    subsets, folds = defaultdict(set), defaultdict(set)
    for m, pseudonym, *_ in rows:
        subsets[pseudonym].add(m.subset)
        if m.fold is not None:
            folds[pseudonym].add(m.fold)
        if m.subset == Subset.test and m.fold is not None:
            problems.append(f"{image_name(m.image_id)}: a test image in fold {m.fold}")
    for pseudonym, sets in sorted(subsets.items()):
        if len(sets) > 1:
            problems.append(f"patient {pseudonym} is in {' and '.join(sorted(sets))}")
    for pseudonym, fs in sorted(folds.items()):
        if len(fs) > 1:
            problems.append(f"patient {pseudonym} is in folds {sorted(fs)}")
    return problems


def _owners(session, split: Split) -> dict[int, str]:
    """Image id -> patient pseudonym as the catalogue has it now (image -> series -> study ->
    patient), for the split's members."""
    members = select(SplitMember.image_id).where(SplitMember.split_id == split.id)
    return dict(
        session.execute(
            select(Image.id, Patient.pseudonym)
            .join(Series, Image.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id)
            .where(Image.id.in_(members))
        ).all()
    )


def _first_five(lines: list[str], what: str) -> list[str]:
    more = [f"... and {len(lines) - 5} more {what}"] if len(lines) > 5 else []
    return lines[:5] + more


def _moved(rows, owner: dict[int, str]) -> list[str]:
    """Members whose image now belongs to another patient than the one frozen."""
    moved = [
        f"{image_name(m.image_id)} now belongs to patient {owner.get(m.image_id)}, not "
        f"{pseudonym} as frozen (its series was moved)"
        for m, pseudonym, *_ in rows
        if owner.get(m.image_id) != pseudonym
    ]
    return _first_five(moved, "images moved to another patient")


def _bad_masks(ws: Workspace, rows, mask_of: dict, deep: bool) -> tuple[list[str], int]:
    """Frozen reference masks missing from the store or no longer hashing to their name, and
    how many were hashed now (:func:`datatool.core.verified.verify_objects`: those unchanged
    since they last hashed intact are not, unless ``deep``)."""
    digests = {m.image_id: mask_of[m.annotation_id] for m, *_ in rows if m.annotation_id in mask_of}
    found = verify_objects(ws.store, ws.meta_dir, digests.values(), deep=deep)
    missing, changed = set(found.missing), set(found.changed)
    bad = []
    for image_id, digest in digests.items():
        if digest in missing:
            bad.append(f"{image_name(image_id)}: its reference mask {digest[:12]} is missing")
        elif digest in changed:
            bad.append(
                f"{image_name(image_id)}: its reference mask {digest[:12]} no longer "
                "hashes to its name (changed in the store)"
            )
    return _first_five(bad, "reference masks missing or changed"), found.hashed


def check_split(ws: Workspace, name: str, deep: bool = False) -> SplitCheck:
    """Leakage and completeness: no patient in two sets or two folds (patients as the
    catalogue has them now, image -> series -> study -> patient, not as stored with the
    split), every image with a reference label whose mask is in the store and hashes to its
    name, the content hash still matches. A mask unchanged on disk since it last hashed
    intact is not hashed again unless ``deep`` (:mod:`datatool.core.verified`)."""
    with ws.session() as s:
        split = get_split(s, name)
        rows = split_members(s, split)
        mask_of = {m.annotation_id: m.mask_hash for m, *_ in rows if m.annotation_id}
        params = _params(split)
        stored_hash = split.content_hash
        owner = _owners(s, split)
        extra = s.scalar(
            select(func.count(Image.id)).where(
                Image.id.not_in(
                    select(SplitMember.image_id).where(SplitMember.split_id == split.id)
                )
            )
        )
    problems = _moved(rows, owner)
    rows = [(m, owner.get(m.image_id, pseudonym), *rest) for m, pseudonym, *rest in rows]
    bad, rehashed = _bad_masks(ws, rows, mask_of, deep)
    problems += bad
    problems += _leakage(rows)
    missing = [image_name(m.image_id) for m, *_ in rows if m.annotation_id is None]
    if missing:
        problems.append(
            f"{len(missing)} image(s) have no reference label"
            f"{' from ' + params['reference'] if params['reference'] else ''}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            "(run 'datatool consensus', then create a new split)"
        )
    hashed = [
        _hashed(store_hash, pseudonym, m.subset, m.fold, mask_of.get(m.annotation_id))
        for m, pseudonym, _, _, store_hash in rows
    ]
    hash_ok = content_hash(params, hashed) == stored_hash
    if not hash_ok:
        problems.append("the content hash no longer matches: the split was altered")
    notes = (
        [
            f"{extra} image(s) in the catalogue are not in this split (added after it, or "
            "without a reference label when it was made, e.g. awaiting adjudication)"
        ]
        if extra
        else []
    )
    return SplitCheck(
        name=name,
        ok=not problems,
        hash_ok=hash_ok,
        problems=problems,
        notes=notes,
        images=len(rows),
        masks_hashed=rehashed,
    )


__all__ = [
    "LeftOut",
    "SetCounts",
    "SplitCheck",
    "SplitSummary",
    "check_split",
    "content_hash",
    "create_split",
    "deal",
    "get_split",
    "parse_ratios",
    "show_split",
    "split_name_of",
]
