"""Versioned patient-level splits: create (frozen), show, check, export.

Whole patients go to train / validation / test, as close to the requested ratios *in images*
as whole patients allow; the non-test patients are also dealt into k cross-validation folds.
The order patients are dealt in is a keyed hash of the seed and the pseudonym, and the greedy
dealing gives each patient (largest first) to the set furthest below its target: the same
catalogue and seed give the same split on any machine and any library version. A split
records each member's reference label version and a content hash over everything; it is never
changed: images added later belong to no old split, and a new split needs a new name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    Image,
    Patient,
    Rater,
    RaterKind,
    Series,
    Split,
    SplitMember,
    Study,
    audit,
)
from datatool.core.csvcells import csv_writer
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.store import encode_png
from datatool.core.workspace import Workspace
from datatool.labels.annotations import latest_annotations_query, mask_hashes
from datatool.labels.itksnap.formats import spacing_mm, write_image, write_segmentation
from datatool.labels.matching import image_name
from datatool.learning.options import ExportFormat, FileEnding, Stratify, Subset, choice

SUBSETS = tuple(s.value for s in Subset)  # the order of deal()'s bins: train, val, test
SEED_MAX = 2**31 - 1  # the largest seed the catalogue stores (an INTEGER column)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if (
        len(parts) != 3
        or not all(math.isfinite(p) and p >= 0 for p in parts)
        or sum(parts) <= 0
        or parts[0] == 0
    ):
        raise UsageError(f"--ratios takes train:val:test such as 6:2:2, not {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def deal(units: list[tuple[str, int]], weights: list[float], seed: int) -> dict[str, int]:
    """Give each unit (name, images) to one of len(weights) bins so that each bin's share of
    the images comes as close to its weight as whole units allow. Deterministic: units are
    taken largest first, ties in a keyed-hash order of (seed, name)."""
    total = sum(n for _, n in units)
    targets = [w * total for w in weights]
    filled = [0] * len(weights)
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
    """(image id, patient id, pseudonym, sex, side, image store hash) of every image."""
    return session.execute(
        select(Image.id, Patient.id, Patient.pseudonym, Patient.sex, Series.side, Image.store_hash)
        .join(Series, Image.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .join(Patient, Study.patient_id == Patient.id)
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
class SplitSummary:
    """A frozen split: its parameters and content hash, counts per set and per fold."""

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


@dataclass
class SplitCheck:
    """Leakage, completeness and integrity of a split; ``ok`` when there is no problem."""

    name: str
    ok: bool
    hash_ok: bool  # the content hash still matches the members
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0


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
    population, weights: list[float], folds: int, seed: int, stratify: Stratify | None
) -> tuple[dict[str, int], dict[str, int]]:
    """Pseudonym -> set (index into SUBSETS), and pseudonym -> fold for the non-test
    patients: whole patients dealt within each stratum."""
    patients: dict[str, dict] = {}
    for _image_id, patient_id, pseudonym, sex, side, _ in population:
        p = patients.setdefault(
            pseudonym, {"id": patient_id, "sex": sex or "?", "sides": set(), "images": 0}
        )
        p["images"] += 1
        p["sides"].add(side or "?")
    strata: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for pseudonym, p in patients.items():
        key = {Stratify.sex: p["sex"], Stratify.side: "".join(sorted(p["sides"])), None: ""}[
            stratify
        ]
        strata[key].append((pseudonym, p["images"]))
    subset_of: dict[str, int] = {}
    for key in sorted(strata):
        subset_of.update(deal(strata[key], weights, seed))
    test = SUBSETS.index(Subset.test)
    outside_test = sum(1 for k in subset_of.values() if k != test)
    if folds > outside_test:
        raise UsageError(
            f"--folds {folds}: only {outside_test} patient(s) outside the test set; "
            f"at most {outside_test} folds (or --folds 0)"
        )
    fold_of: dict[str, int] = {}
    if folds:
        for key in sorted(strata):
            rest = [u for u in strata[key] if subset_of[u[0]] != test]
            fold_of.update(deal(rest, [1.0 / folds] * folds, seed))
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


def create_split(
    ws: Workspace,
    name: str,
    ratios: str = "6:2:2",
    folds: int = 5,
    seed: int = 0,
    stratify: str | None = None,
    reference: str | None = None,
) -> SplitSummary:
    """Deal whole patients to train/val/test (and folds), record each member's reference
    label and freeze the split with a content hash."""
    if not NAME_RE.match(name):
        raise UsageError(f"split name {name!r}: letters, digits, '.', '_' or '-' (max 64)")
    weights = parse_ratios(ratios)
    if folds < 0 or folds == 1:
        raise UsageError("--folds is 0 (none) or at least 2")
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed must be 0 .. {SEED_MAX}")
    strat = None if stratify is None else choice(Stratify, stratify, "--stratify")
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
        subset_of, fold_of = _assign(population, list(weights), folds, seed, strat)
        split = Split(
            name=name,
            content_hash="",
            seed=seed,
            ratios=ratios,
            folds=folds,
            stratify=None if strat is None else strat.value,
            reference=ref.name if ref else None,
        )
        s.add(split)
        hashed = []
        for image_id, patient_id, pseudonym, _, _, store_hash in population:
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
        params = _params(split)
        split.content_hash = content_hash(params, hashed)
        audit(s, "split create", "split", name=name, hash=split.content_hash, **params)
    return show_split(ws, name)


# --------------------------------------------------------------------------- read


def _members(session, split: Split):
    return session.execute(
        select(SplitMember, Patient.pseudonym, Patient.sex, Series.side, Image.store_hash)
        .join(Image, SplitMember.image_id == Image.id)
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
    sides = Counter(side or "?" for _, _, _, side, _ in selected)
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
        rows = _members(s, split)
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


def _bad_masks(ws: Workspace, rows, mask_of: dict) -> list[str]:
    """Frozen reference masks missing from the store or no longer hashing to their name."""
    bad = []
    for m, *_ in rows:
        digest = mask_of.get(m.annotation_id)
        if digest is None:
            continue
        try:
            intact = ws.store.verify(digest)
        except FileNotFoundError:
            bad.append(f"{image_name(m.image_id)}: its reference mask {digest[:12]} is missing")
            continue
        if not intact:
            bad.append(
                f"{image_name(m.image_id)}: its reference mask {digest[:12]} no longer "
                "hashes to its name (changed in the store)"
            )
    return _first_five(bad, "reference masks missing or changed")


def check_split(ws: Workspace, name: str) -> SplitCheck:
    """Leakage and completeness: no patient in two sets or two folds (patients as the
    catalogue has them now, image -> series -> study -> patient, not as stored with the
    split), every image with a reference label whose mask is in the store and hashes to its
    name, the content hash still matches."""
    with ws.session() as s:
        split = get_split(s, name)
        rows = _members(s, split)
        mask_of = mask_hashes(s, [m.annotation_id for m, *_ in rows if m.annotation_id])
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
    problems += _bad_masks(ws, rows, mask_of)
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
        [f"{extra} image(s) in the catalogue are not in this split (added after it)"]
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
    )


# --------------------------------------------------------------------------- export

#: nnU-Net dataset ids run 1..999; ours default to 500 + a number fixed by the split's content
#: hash (nnU-Net's own and the Medical Segmentation Decathlon's datasets use low ids).
DATASET_ID_BASE = 500
DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def default_dataset_id(split_hash: str) -> int:
    """500..999, the same for the same split on any machine."""
    return DATASET_ID_BASE + int(split_hash[:12], 16) % (1000 - DATASET_ID_BASE)


def dataset_name_of(split_name: str) -> str:
    """A split name made into an nnU-Net dataset name: letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", split_name)


def nnunet_folds(members: list[tuple[str, str, int | None]], folds: int) -> list[dict]:
    """``splits_final.json``: the split's frozen folds over the case ids of train and val
    (case, subset, fold). Without folds, one fold: train against val."""
    rest = [(c, subset, fold) for c, subset, fold in members if subset != Subset.test]
    if not folds:
        return [
            {
                "train": sorted(c for c, subset, _ in rest if subset == Subset.train),
                "val": sorted(c for c, subset, _ in rest if subset == Subset.val),
            }
        ]
    return [
        {
            "train": sorted(c for c, _, fold in rest if fold != k),
            "val": sorted(c for c, _, fold in rest if fold == k),
        }
        for k in range(folds)
    ]


@dataclass
class SplitExport:
    """What ``split export`` wrote. For nnU-Net: the dataset folder and where its
    ``splits_final.json`` went (``splits_in_preprocessed``: where nnU-Net reads it)."""

    name: str
    format: ExportFormat
    out_dir: str  # --out: the nnUNet_raw folder for nnunet, the manifest folder for csv
    images: int
    test: int  # of them in the test set
    dataset_dir: str | None = None  # nnunet: OUT/DatasetNNN_Name
    dataset_id: int | None = None
    dataset_name: str | None = None
    file_ending: str | None = None
    splits_file: str | None = None
    splits_in_preprocessed: bool = False
    folds: int = 0  # folds in splits_final.json
    replaced: bool = False  # an earlier export was replaced whole
    uncalibrated: int = 0  # images written with 1 mm pixels (no calibration)
    notes: list[str] = field(default_factory=list)


def _nonempty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _other_dataset_with_id(folder: Path | None, dataset_id: int, name: str) -> Path | None:
    """A ``DatasetNNN_Other`` in ``folder`` with the same id: nnU-Net refuses an id that
    names two datasets."""
    if folder is None or not folder.is_dir():
        return None
    prefix = f"Dataset{dataset_id:03d}_"
    for p in sorted(folder.iterdir()):
        if p.name.startswith(prefix) and p.name != name and p.is_dir():
            return p
    return None


def _swap_in(built: Path, target: Path) -> bool:
    """Put the folder ``built`` at ``target`` by rename; an existing ``target`` is moved
    aside first and removed after, so no file of it survives. True when one was replaced."""
    if not target.exists():
        os.rename(built, target)
        return False
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(built, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def _dataset_json(name: str, split_hash: str, training: int, ending: str, protocol) -> dict:
    consecutive = {s.value: i + 1 for i, s in enumerate(protocol.structures)}
    return {
        "channel_names": {"0": "US"},
        "labels": {
            "background": 0,
            **{s.name: consecutive[s.value] for s in protocol.structures},
        },
        "numTraining": training,
        "file_ending": ending,
        "name": name,
        "description": f"datatool split {name} (hash {split_hash}); "
        "label values renumbered 1..N in protocol order: "
        + ", ".join(f"{s.name} {s.value}->{consecutive[s.value]}" for s in protocol.structures),
    }


def _write_manifest(out: Path, cases) -> None:
    buf = io.StringIO()
    writer = csv_writer(buf)
    writer.writerow(["case", "image_id", "patient", "side", "subset", "fold", "image", "label"])
    for case, m, pseudonym, side in cases:
        writer.writerow(
            [
                case,
                image_name(m.image_id),
                pseudonym,
                side or "",
                m.subset,
                "" if m.fold is None else m.fold,
                f"images/{case}.png",
                f"labels/{case}.png",
            ]
        )
    write_text_atomic(out / "manifest.csv", buf.getvalue())


def _nnunet_target(
    out: Path,
    dataset_dir: Path,
    dataset_id: int,
    preprocessed: Path | None,
    splits_text: str,
    replace: bool,
) -> None:
    """Refuse, before anything is written, a target nnU-Net would misread."""
    if _nonempty(dataset_dir) and not replace:
        raise UsageError(
            f"{dataset_dir} is not empty (an earlier export?); pass --replace to rebuild "
            "it whole, or choose another --dataset-id/--dataset-name"
        )
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise UsageError(f"{dataset_dir} exists and is not a folder")
    for folder in (out, preprocessed):
        other = _other_dataset_with_id(folder, dataset_id, dataset_dir.name)
        if other is not None:
            raise UsageError(
                f"{other} already has dataset id {dataset_id}: nnU-Net needs one name per "
                "id; choose another --dataset-id"
            )
    if preprocessed is not None:
        target = preprocessed / dataset_dir.name / "splits_final.json"
        if target.exists() and not replace:
            try:
                same = target.read_text() == splits_text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                raise UsageError(
                    f"{target} holds other folds (an earlier export?); pass --replace to "
                    "overwrite it"
                )


def export_split(
    ws: Workspace,
    name: str,
    fmt: str,
    out_dir: Path,
    *,
    dataset_id: int | None = None,
    dataset_name: str | None = None,
    file_ending: str = FileEnding.nifti,
    preprocessed: Path | None = None,
    replace: bool = False,
) -> SplitExport:
    """An nnU-Net v2 raw dataset ``OUT/DatasetNNN_Name`` (imagesTr, labelsTr, imagesTs,
    labelsTs, dataset.json) with the split's frozen patient-level folds as
    ``splits_final.json`` in ``preprocessed/DatasetNNN_Name`` (where nnU-Net reads it) or,
    without ``preprocessed``, in the dataset folder with a note saying where it must go; or a
    CSV manifest with image and label PNGs in ``out_dir``.

    The dataset folder is built beside its place and renamed into it: a non-empty one is
    refused unless ``replace``, and then replaced whole, so no case of an earlier export
    stays in imagesTr (nnU-Net trains on every case there)."""
    fmt = choice(ExportFormat, fmt, "--format")
    ending = choice(FileEnding, file_ending, "--file-ending")
    if dataset_id is not None and not 1 <= dataset_id <= 999:
        raise UsageError(
            f"--dataset-id must be 1 .. 999 (nnU-Net's three digits), not {dataset_id}"
        )
    if dataset_name is not None and not DATASET_NAME_RE.match(dataset_name):
        raise UsageError(
            f"--dataset-name {dataset_name!r}: letters, digits, '_' or '-' (max 64), "
            "starting with a letter or digit"
        )
    protocol = load_protocol(ws.protocol_name)
    check = check_split(ws, name)
    with ws.session() as s:
        split = get_split(s, name)
        rows = _members(s, split)
        masks = mask_hashes(s, [m.annotation_id for m, *_ in rows if m.annotation_id])
        folds, split_hash = split.folds, split.content_hash
        mm_of = {
            i: (x, y)
            for i, x, y in s.execute(
                select(Image.id, Image.mm_per_px_x, Image.mm_per_px_y)
                .join(SplitMember, SplitMember.image_id == Image.id)
                .where(SplitMember.split_id == split.id)
            )
        }
    unlabelled = [m for m, *_ in rows if m.annotation_id is None]
    if unlabelled:
        raise DatatoolError(
            f"split {name!r}: {len(unlabelled)} image(s) have no reference "
            "label; 'datatool split check' lists them"
        )
    if not check.hash_ok:
        raise DatatoolError(f"split {name!r} was altered; refusing to export it")
    out = Path(out_dir)
    store = ws.store
    cases = [
        (f"{pseudonym}_{image_name(m.image_id)}", m, pseudonym, side)
        for m, pseudonym, _sex, side, _ in rows
    ]
    if fmt == ExportFormat.csv:
        for (case, m, _, _), (*_, store_hash) in zip(cases, rows):
            write_bytes_atomic(
                out / "images" / f"{case}.png", encode_png(store.get_array(store_hash))
            )
            mask = store.get_array(masks[m.annotation_id])
            write_bytes_atomic(out / "labels" / f"{case}.png", encode_png(mask))
        _write_manifest(out, cases)
        with ws.session() as s:
            audit(s, "split export", "export", name=name, format=fmt, images=len(cases))
        return SplitExport(
            name=name,
            format=fmt,
            out_dir=str(out),
            images=len(cases),
            test=sum(1 for _, m, _, _ in cases if m.subset == Subset.test),
        )

    ds_id = default_dataset_id(split_hash) if dataset_id is None else dataset_id
    ds_name = dataset_name_of(name) if dataset_name is None else dataset_name
    dataset_dir = out / f"Dataset{ds_id:03d}_{ds_name}"
    fold_list = nnunet_folds([(c, m.subset, m.fold) for c, m, _, _ in cases], folds)
    splits_text = json.dumps(fold_list, indent=2)
    pre = Path(preprocessed) if preprocessed else None
    _nnunet_target(out, dataset_dir, ds_id, pre, splits_text, replace)

    consecutive = {s.value: i + 1 for i, s in enumerate(protocol.structures)}
    lut = np.array([consecutive.get(v, 0) for v in range(256)], np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.new-", dir=out))
    try:
        for (case, m, _, _), (*_, store_hash) in zip(cases, rows):
            image = store.get_array(store_hash)
            label = lut[store.get_array(masks[m.annotation_id])]
            tr = "Ts" if m.subset == Subset.test else "Tr"
            image_path = build / f"images{tr}" / f"{case}_0000{ending}"
            label_path = build / f"labels{tr}" / f"{case}{ending}"
            if ending == FileEnding.png:
                write_bytes_atomic(image_path, encode_png(image))
                write_bytes_atomic(label_path, encode_png(label))
            else:
                write_image(image_path, image, spacing_mm(*mm_of[m.image_id]))
                write_segmentation(label_path, label, spacing_mm(*mm_of[m.image_id]))
        training = sum(1 for _, m, _, _ in cases if m.subset != Subset.test)
        write_text_atomic(
            build / "dataset.json",
            json.dumps(_dataset_json(name, split_hash, training, ending, protocol), indent=2),
        )
        if pre is None:
            write_text_atomic(build / "splits_final.json", splits_text)
        (build / "imagesTs").mkdir(exist_ok=True)  # nnU-Net's layout, also with no test set
        os.chmod(build, 0o777 & ~_umask())  # mkdtemp made it 0700
        replaced = _swap_in(build, dataset_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    notes = []
    if pre is not None:
        splits_file = pre / dataset_dir.name / "splits_final.json"
        write_text_atomic(splits_file, splits_text)
    else:
        splits_file = dataset_dir / "splits_final.json"
        notes.append(
            f"copy {splits_file} to $nnUNet_preprocessed/{dataset_dir.name}/splits_final.json "
            "before training: nnU-Net reads the folds only there (without it, it makes its "
            "own folds by image and one patient's images land in train and validation)"
        )
    if replaced:
        notes.append(
            f"replaced {dataset_dir} whole; run nnUNetv2_plan_and_preprocess again (data "
            "preprocessed from the earlier export is stale)"
        )
    if not folds:
        notes.append(
            f"split {name} has no folds: splits_final.json holds one fold (its train against "
            "its val set); train nnU-Net with fold 0"
        )
    uncalibrated = sum(1 for x, y in mm_of.values() if not (x and y))  # spacing_mm's 1 mm
    if ending == FileEnding.png:
        notes.append("PNG carries no pixel spacing: nnU-Net takes 1 mm pixels")
    elif uncalibrated:
        notes.append(
            f"{uncalibrated} image(s) have no calibration: written with 1.0 mm pixel spacing"
        )
    with ws.session() as s:
        audit(
            s,
            "split export",
            "export",
            name=name,
            format=fmt,
            images=len(cases),
            dataset=dataset_dir.name,
            file_ending=str(ending),
            splits_file=str(splits_file),
            replaced=replaced,
        )
    return SplitExport(
        name=name,
        format=fmt,
        out_dir=str(out),
        images=len(cases),
        test=sum(1 for _, m, _, _ in cases if m.subset == Subset.test),
        dataset_dir=str(dataset_dir),
        dataset_id=ds_id,
        dataset_name=ds_name,
        file_ending=str(ending),
        splits_file=str(splits_file),
        splits_in_preprocessed=pre is not None,
        folds=len(fold_list),
        replaced=replaced,
        uncalibrated=uncalibrated,
        notes=notes,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "SetCounts",
    "SplitCheck",
    "SplitExport",
    "SplitSummary",
    "check_split",
    "content_hash",
    "create_split",
    "deal",
    "default_dataset_id",
    "export_split",
    "get_split",
    "nnunet_folds",
    "parse_ratios",
    "show_split",
    "split_name_of",
]
