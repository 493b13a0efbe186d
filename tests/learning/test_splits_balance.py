"""Stratified splits: the balance each set actually gets, counted here from the catalogue's
rows (patients' sex, series' side, split members), on catalogues built so that a perfectly
balanced split exists, over ten seeds; and the counts ``split show`` reports against ours.
These catalogues have no labels: the splits keep every image (``all_images``)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from sqlalchemy import select

from datatool.core.catalogue import Image, Patient, Series, Split, SplitMember
from datatool.ingest.pipeline import ingest
from datatool.learning.splits import create_split
from tests.handmade import workspace_with_key, write_us

SEEDS = range(10)


def _catalogue(ws, tmp_path, patients: list[tuple[str, str, list[str]]]) -> None:
    """patients: (id, sex, sides of its images)."""
    for pid, sex, sides in patients:
        for k, side in enumerate(sides):
            write_us(
                tmp_path / "d" / pid / f"{k}.dcm",
                np.full((16, 16), 50 + k, np.uint8),
                patient_id=pid,
                sex=sex,
                side=side,
            )
    report = ingest(ws, [tmp_path / "d"], workers=0)
    assert report.ingested == sum(len(s) for _, _, s in patients)


def _members(ws, name: str) -> list[tuple[str, int | None, str, str, str]]:
    """(set, fold, patient pseudonym, sex, side) of each image of the split."""
    with ws.session() as s:
        return [
            tuple(r)
            for r in s.execute(
                select(
                    SplitMember.subset,
                    SplitMember.fold,
                    Patient.pseudonym,
                    Patient.sex,
                    Series.side,
                )
                .join(Split, Split.id == SplitMember.split_id)
                .join(Patient, Patient.id == SplitMember.patient_id)
                .join(Image, Image.id == SplitMember.image_id)
                .join(Series, Series.id == Image.series_id)
                .where(Split.name == name)
            )
        ]


def _patients_by(members, key_index: int, group_index: int) -> dict[str, Counter]:
    """Per group (set or fold): patients counted by the value at ``key_index``."""
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for row in members:
        seen[row[group_index]][row[2]] = row[key_index]
    return {g: Counter(p.values()) for g, p in seen.items()}


@pytest.fixture()
def ws(tmp_path):
    """A fixed pseudonym key: the order patients are dealt in is the same on every run."""
    workspace = workspace_with_key(tmp_path / "ws")
    yield workspace
    workspace.close()


@pytest.fixture()
def six_women_six_men(ws, tmp_path):
    _catalogue(
        ws,
        tmp_path,
        [(f"F{k}", "F", ["L", "L"]) for k in range(6)]
        + [(f"M{k}", "M", ["L", "L"]) for k in range(6)],
    )
    return ws


def test_stratified_by_sex_every_set_and_fold_gets_its_share_of_each_sex(six_women_six_men):
    ws = six_women_six_men
    unbalanced = 0
    for seed in SEEDS:
        info = create_split(
            ws, f"sex{seed}", ratios="1:1:1", folds=2, seed=seed, stratify="sex", all_images=True
        )
        members = _members(ws, f"sex{seed}")
        by_set = _patients_by(members, 3, 0)
        assert by_set == {s: Counter({"F": 2, "M": 2}) for s in ("train", "val", "test")}
        non_test = [m for m in members if m[0] != "test"]
        by_fold = _patients_by(non_test, 3, 1)
        assert by_fold == {0: Counter({"F": 2, "M": 2}), 1: Counter({"F": 2, "M": 2})}
        for name, counts in info.subsets.items():  # what split create reports
            assert (counts.female, counts.male, counts.images) == (2, 2, 8), name
        plain = create_split(
            ws, f"plain{seed}", ratios="1:1:1", folds=0, seed=seed, all_images=True
        )
        by_set = _patients_by(_members(ws, f"plain{seed}"), 3, 0)
        unbalanced += any(c != Counter({"F": 2, "M": 2}) for c in by_set.values())
        assert sum(c.images for c in plain.subsets.values()) == 24
    assert unbalanced > 0  # without stratifying, chance alone does not balance them


def test_stratified_by_side_every_set_gets_each_kind_of_patient(ws, tmp_path):
    """Four patients imaged on the left only, four on the right only, four on both; ratios
    2:1:1 give train two of each kind and val and test one of each."""
    _catalogue(
        ws,
        tmp_path,
        [(f"L{k}", "F", ["L", "L"]) for k in range(4)]
        + [(f"R{k}", "M", ["R", "R"]) for k in range(4)]
        + [(f"B{k}", "F", ["L", "R"]) for k in range(4)],
    )
    for seed in SEEDS:
        info = create_split(
            ws, f"side{seed}", ratios="2:1:1", folds=0, seed=seed, stratify="side", all_images=True
        )
        members = _members(ws, f"side{seed}")
        sides: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        images = defaultdict(Counter)
        for subset, _, patient, _, side in members:
            sides[subset][patient].add(side)
            images[subset][side] += 1
        kinds = {s: Counter("".join(sorted(v)) for v in p.values()) for s, p in sides.items()}
        assert kinds == {
            "train": Counter({"L": 2, "R": 2, "LR": 2}),
            "val": Counter({"L": 1, "R": 1, "LR": 1}),
            "test": Counter({"L": 1, "R": 1, "LR": 1}),
        }
        assert images == {"train": Counter(L=6, R=6), "val": Counter(L=3, R=3),
                          "test": Counter(L=3, R=3)}  # fmt: skip
        for name, counts in info.subsets.items():
            assert (counts.left_images, counts.right_images) == (
                images[name]["L"],
                images[name]["R"],
            )
