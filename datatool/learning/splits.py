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

import csv
import hashlib
import io
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    Image,
    Patient,
    Rater,
    Series,
    Split,
    SplitMember,
    Study,
    audit,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.store import encode_png
from datatool.core.workspace import Workspace
from datatool.labels.annotations import latest_annotations_query, mask_hashes
from datatool.labels.matching import image_name

SUBSETS = ("train", "val", "test")
SEED_MAX = 2**31 - 1  # the largest seed the catalogue stores (an INTEGER column)
STRATA = ("sex", "side")
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
        .where(Rater.kind == "consensus")
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


def content_hash(params: dict, members: list[tuple]) -> str:
    body = json.dumps(
        {"params": params, "members": sorted(members)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()


def create_split(
    ws: Workspace,
    name: str,
    ratios: str = "6:2:2",
    folds: int = 5,
    seed: int = 0,
    stratify: str | None = None,
    reference: str | None = None,
) -> dict:
    if not NAME_RE.match(name):
        raise UsageError(f"split name {name!r}: letters, digits, '.', '_' or '-' (max 64)")
    weights = parse_ratios(ratios)
    if folds < 0 or folds == 1:
        raise UsageError("--folds is 0 (none) or at least 2")
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed must be 0 .. {SEED_MAX}")
    if stratify is not None and stratify not in STRATA:
        raise UsageError(f"--stratify must be one of {', '.join(STRATA)}")
    with ws.session() as s:
        old = s.scalar(select(Split).where(Split.name == name))
        if old is not None:
            raise DatatoolError(
                f"split {name!r} exists (frozen since {old.created_at:%Y-%m-%d %H:%M}, hash "
                f"{old.content_hash[:12]}); splits never change: create a new one, e.g. "
                f"'datatool split create {name}-v2'"
            )
        ref = None
        if reference:
            ref = s.scalar(select(Rater).where(Rater.name == reference))
            if ref is None:
                raise DatatoolError(
                    f"no rater {reference!r} (reference labels come from "
                    "'datatool consensus' or a rater name)"
                )
        else:
            ref = default_reference(s)
        population = _population(s)
        if not population:
            raise DatatoolError("the catalogue has no images: run 'datatool ingest' first")
        labels = (
            {a.image_id: a for a in s.scalars(latest_annotations_query([ref.id]))}
            if ref is not None
            else {}
        )
        patients: dict[str, dict] = {}
        for _image_id, patient_id, pseudonym, sex, side, _ in population:
            p = patients.setdefault(
                pseudonym, {"id": patient_id, "sex": sex or "?", "sides": set(), "images": 0}
            )
            p["images"] += 1
            p["sides"].add(side or "?")
        strata: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for pseudonym, p in patients.items():
            key = {"sex": p["sex"], "side": "".join(sorted(p["sides"])), None: ""}[stratify]
            strata[key].append((pseudonym, p["images"]))
        subset_of: dict[str, int] = {}
        for key in sorted(strata):
            subset_of.update(deal(strata[key], list(weights), seed))
        outside_test = sum(1 for k in subset_of.values() if k != 2)
        if folds > outside_test:
            raise UsageError(
                f"--folds {folds}: only {outside_test} patient(s) outside the test set; "
                f"at most {outside_test} folds (or --folds 0)"
            )
        fold_of: dict[str, int] = {}
        if folds:
            for key in sorted(strata):
                rest = [u for u in strata[key] if subset_of[u[0]] != 2]
                fold_of.update(deal(rest, [1.0 / folds] * folds, seed))
        params = {
            "ratios": ratios,
            "folds": folds,
            "seed": seed,
            "stratify": stratify,
            "reference": ref.name if ref else None,
        }
        split = Split(
            name=name,
            content_hash="",
            seed=seed,
            ratios=ratios,
            folds=folds,
            stratify=stratify,
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
            hashed.append(
                (
                    store_hash,
                    pseudonym,
                    subset,
                    -1 if fold is None else fold,
                    ann.mask_hash if ann else "",
                )
            )
        split.content_hash = content_hash(params, hashed)
        audit(s, "split create", "split", name=name, hash=split.content_hash, **params)
    return show_split(ws, name)


def _members(session, split: Split):
    return session.execute(
        select(SplitMember, Patient.pseudonym, Patient.sex, Series.side, Image.store_hash)
        .join(Image, SplitMember.image_id == Image.id)
        .join(Series, Image.series_id == Series.id)
        .join(Patient, SplitMember.patient_id == Patient.id)
        .where(SplitMember.split_id == split.id)
        .order_by(SplitMember.image_id)
    ).all()


def _get(session, name: str) -> Split:
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


def show_split(ws: Workspace, name: str) -> dict:
    with ws.session() as s:
        split = _get(s, name)
        rows = _members(s, split)
        info = {
            "name": split.name,
            "hash": split.content_hash,
            "seed": split.seed,
            "ratios": split.ratios,
            "folds": split.folds,
            "stratify": split.stratify,
            "reference": split.reference,
            "created": split.created_at.isoformat(timespec="seconds"),
        }

    def summary(selected):
        patients = {pseudonym: sex for m, pseudonym, sex, _, _ in selected}
        sexes = Counter(patients.values())
        sides = Counter(side or "?" for _, _, _, side, _ in selected)
        return {
            "patients": len(patients),
            "images": len(selected),
            "female": sexes.get("F", 0),
            "male": sexes.get("M", 0),
            "left_images": sides.get("L", 0),
            "right_images": sides.get("R", 0),
            "with_reference": sum(1 for m, *_ in selected if m.annotation_id),
        }

    total = len(rows)
    info["subsets"] = {
        sub: {
            **summary([r for r in rows if r[0].subset == sub]),
            "share": (sum(1 for r in rows if r[0].subset == sub) / total) if total else 0.0,
        }
        for sub in SUBSETS
    }
    info["fold_sizes"] = (
        {str(k): summary([r for r in rows if r[0].fold == k]) for k in range(split.folds)}
        if split.folds
        else {}
    )
    info["total"] = summary(rows)
    return info


def check_split(ws: Workspace, name: str) -> dict:
    """Leakage and completeness: no patient in two sets or two folds (patients as the
    catalogue has them now, image -> series -> study -> patient, not as stored with the
    split), every image with a reference label whose mask is in the store and hashes to its
    name, the content hash still matches."""
    problems: list[str] = []
    with ws.session() as s:
        split = _get(s, name)
        rows = _members(s, split)
        mask_of = mask_hashes(s, [m.annotation_id for m, *_ in rows if m.annotation_id])
        params = {
            "ratios": split.ratios,
            "folds": split.folds,
            "seed": split.seed,
            "stratify": split.stratify,
            "reference": split.reference,
        }
        stored_hash = split.content_hash
        # membership as the catalogue says now: image -> series -> study -> patient
        owner = dict(
            s.execute(
                select(Image.id, Patient.pseudonym)
                .join(Series, Image.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .join(Patient, Study.patient_id == Patient.id)
                .where(
                    Image.id.in_(
                        select(SplitMember.image_id).where(SplitMember.split_id == split.id)
                    )
                )
            ).all()
        )
        extra = s.scalar(
            select(func.count(Image.id)).where(
                Image.id.not_in(
                    select(SplitMember.image_id).where(SplitMember.split_id == split.id)
                )
            )
        )
    moved = [
        f"{image_name(m.image_id)} now belongs to patient {owner.get(m.image_id)}, not "
        f"{pseudonym} as frozen (its series was moved)"
        for m, pseudonym, *_ in rows
        if owner.get(m.image_id) != pseudonym
    ]
    problems.extend(moved[:5])
    if len(moved) > 5:
        problems.append(f"... and {len(moved) - 5} more images moved to another patient")
    rows = [(m, owner.get(m.image_id, pseudonym), *rest) for m, pseudonym, *rest in rows]
    bad_masks = []
    for m, *_ in rows:
        digest = mask_of.get(m.annotation_id)
        if digest is None:
            continue
        try:
            intact = ws.store.verify(digest)
        except FileNotFoundError:
            bad_masks.append(
                f"{image_name(m.image_id)}: its reference mask {digest[:12]} is missing"
            )
            continue
        if not intact:
            bad_masks.append(
                f"{image_name(m.image_id)}: its reference mask {digest[:12]} no longer "
                "hashes to its name (changed in the store)"
            )
    problems.extend(bad_masks[:5])
    if len(bad_masks) > 5:
        problems.append(f"... and {len(bad_masks) - 5} more reference masks missing or changed")
    subsets, folds = defaultdict(set), defaultdict(set)
    for m, pseudonym, *_ in rows:
        subsets[pseudonym].add(m.subset)
        if m.fold is not None:
            folds[pseudonym].add(m.fold)
        if m.subset == "test" and m.fold is not None:
            problems.append(f"{image_name(m.image_id)}: a test image in fold {m.fold}")
    for pseudonym, sets in sorted(subsets.items()):
        if len(sets) > 1:
            problems.append(f"patient {pseudonym} is in {' and '.join(sorted(sets))}")
    for pseudonym, fs in sorted(folds.items()):
        if len(fs) > 1:
            problems.append(f"patient {pseudonym} is in folds {sorted(fs)}")
    missing = [image_name(m.image_id) for m, *_ in rows if m.annotation_id is None]
    if missing:
        problems.append(
            f"{len(missing)} image(s) have no reference label"
            f"{' from ' + params['reference'] if params['reference'] else ''}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            "(run 'datatool consensus', then create a new split)"
        )
    hashed = [
        (
            store_hash,
            pseudonym,
            m.subset,
            -1 if m.fold is None else m.fold,
            mask_of.get(m.annotation_id, ""),
        )
        for m, pseudonym, _, _, store_hash in rows
    ]
    if content_hash(params, hashed) != stored_hash:
        problems.append("the content hash no longer matches: the split was altered")
    notes = (
        [f"{extra} image(s) in the catalogue are not in this split (added after it)"]
        if extra
        else []
    )
    return {
        "name": name,
        "ok": not problems,
        "problems": problems,
        "notes": notes,
        "images": len(rows),
    }


def export_split(ws: Workspace, name: str, fmt: str, out_dir: Path) -> dict:
    """nnU-Net (v2) dataset folder, or a CSV manifest with image and label PNGs."""
    if fmt not in ("nnunet", "csv"):
        raise UsageError("--format must be nnunet or csv")
    protocol = load_protocol(ws.protocol_name)
    check = check_split(ws, name)
    with ws.session() as s:
        split = _get(s, name)
        rows = _members(s, split)
        masks = mask_hashes(s, [m.annotation_id for m, *_ in rows if m.annotation_id])
        folds = split.folds
    unlabelled = [m for m, *_ in rows if m.annotation_id is None]
    if unlabelled:
        raise DatatoolError(
            f"split {name!r}: {len(unlabelled)} image(s) have no reference "
            "label; 'datatool split check' lists them"
        )
    if "the content hash no longer matches" in " ".join(check["problems"]):
        raise DatatoolError(f"split {name!r} was altered; refusing to export it")
    out = Path(out_dir)
    store = ws.store
    consecutive = {s.value: i + 1 for i, s in enumerate(protocol.structures)}
    lut = np.array([consecutive.get(v, 0) for v in range(256)], np.uint8)
    cases = []
    for m, pseudonym, _sex, side, store_hash in rows:
        case = f"{pseudonym}_{image_name(m.image_id)}"
        cases.append((case, m, pseudonym, side))
        image = store.get_array(store_hash)
        mask = store.get_array(masks[m.annotation_id])
        if fmt == "nnunet":
            test = m.subset == "test"
            write_bytes_atomic(
                out / ("imagesTs" if test else "imagesTr") / f"{case}_0000.png", encode_png(image)
            )
            write_bytes_atomic(
                out / ("labelsTs" if test else "labelsTr") / f"{case}.png", encode_png(lut[mask])
            )
        else:
            write_bytes_atomic(out / "images" / f"{case}.png", encode_png(image))
            write_bytes_atomic(out / "labels" / f"{case}.png", encode_png(mask))
    if fmt == "nnunet":
        training = [c for c, m, _, _ in cases if m.subset != "test"]
        dataset = {
            "channel_names": {"0": "US"},
            "labels": {
                "background": 0,
                **{s.name: consecutive[s.value] for s in protocol.structures},
            },
            "numTraining": len(training),
            "file_ending": ".png",
            "name": name,
            "description": f"datatool split {name} (hash {split.content_hash}); "
            "label values renumbered 1..N in protocol order: "
            + ", ".join(f"{s.name} {s.value}->{consecutive[s.value]}" for s in protocol.structures),
        }
        if folds:
            fold_list = [
                {
                    "train": sorted(
                        c for c, m, _, _ in cases if m.subset != "test" and m.fold != k
                    ),
                    "val": sorted(c for c, m, _, _ in cases if m.subset != "test" and m.fold == k),
                }
                for k in range(folds)
            ]
        else:
            fold_list = [
                {
                    "train": sorted(c for c, m, _, _ in cases if m.subset == "train"),
                    "val": sorted(c for c, m, _, _ in cases if m.subset == "val"),
                }
            ]
        write_text_atomic(out / "dataset.json", json.dumps(dataset, indent=2))
        write_text_atomic(out / "splits_final.json", json.dumps(fold_list, indent=2))
    else:
        buf = io.StringIO()
        writer = csv.writer(buf)
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
    with ws.session() as s:
        audit(s, "split export", "export", name=name, format=fmt, images=len(cases))
    return {
        "name": name,
        "format": fmt,
        "out_dir": str(out),
        "images": len(cases),
        "test": sum(1 for _, m, _, _ in cases if m.subset == "test"),
    }
