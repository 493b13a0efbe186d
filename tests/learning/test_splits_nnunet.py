"""`split export --format nnunet` checked by nnU-Net v2's own code: its dataset integrity check,
its SimpleITK reader's spacing, and the folds its trainer's do_split takes from
splits_final.json (planned and preprocessed on the CPU). nnU-Net reads its folders from
environment variables when it is imported, so it runs in a subprocess with them set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.analysis.consensus import make_consensus
from datatool.cli import app
from datatool.core.catalogue import Image, Patient, Series, SplitMember, Study
from datatool.labels.matching import image_name
from datatool.learning.split_export import default_dataset_id, export_split
from datatool.learning.splits import create_split
from tests.ci import require
from tests.labels_util import ingest_demo_with_labels

# in CI nnU-Net is part of the test extra: a missing one is a failure (tests/ci.py)
require("nnunetv2", "nnunetv2 is not installed (pip install -e '.[test]')")

runner = CliRunner()

NNUNET = r"""
import json, os, sys
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprints, plan_experiments, preprocess)
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.paths import nnUNet_raw
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

dataset_id = int(sys.argv[1])
name = maybe_convert_to_dataset_name(dataset_id)  # nnU-Net finds the dataset by its id
raw = join(nnUNet_raw, name)
verify_dataset_integrity(raw, num_processes=1)
first = sorted(os.listdir(join(raw, "imagesTr")))[0]
_, props = SimpleITKIO().read_images([join(raw, "imagesTr", first)])
out = {"name": name, "first": first, "spacing": [float(s) for s in props["spacing"]], "folds": []}
extract_fingerprints([dataset_id], num_processes=1, verbose=False, show_progress_bar=False)
plan_experiments([dataset_id])
preprocess([dataset_id], configurations=("2d",), num_processes=(1,), show_progress_bar=False)
for fold in range(int(sys.argv[2])):  # as nnUNetv2_train DATASET_ID 2d FOLD sets it up
    trainer = get_trainer_from_args(str(dataset_id), "2d", fold, device=torch.device("cpu"))
    tr, val = trainer.do_split()
    out["folds"].append({"train": sorted(tr), "val": sorted(val)})
print("RESULT " + json.dumps(out))
"""


@pytest.fixture()
def ready(ws, demo_dir):
    ingest_demo_with_labels(ws, demo_dir)
    make_consensus(ws, "staple")
    return ws


def run_nnunet(raw: Path, pre: Path, results: Path, dataset_id: int, folds: int) -> dict:
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(pre),
        "nnUNet_results": str(results),
        "nnUNet_def_n_proc": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", NNUNET, str(dataset_id), str(folds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verify_dataset_integrity Done" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def split_cases(ws, name: str) -> dict[str, tuple[str, str, int | None, tuple]]:
    """case -> (patient, subset, fold, (mm x, mm y)) as the catalogue has them."""
    with ws.session() as s:
        rows = s.execute(
            select(
                SplitMember.image_id,
                Patient.pseudonym,
                SplitMember.subset,
                SplitMember.fold,
                Image.mm_per_px_x,
                Image.mm_per_px_y,
            )
            .join(Image, SplitMember.image_id == Image.id)
            .join(Series, Image.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id)
            .where(SplitMember.split.has(name=name))
        ).all()
    return {f"{p}_{image_name(i)}": (p, subset, fold, (x, y)) for i, p, subset, fold, x, y in rows}


def test_nnunet_accepts_the_export_and_trains_on_the_split_folds(ready, tmp_path):
    ws = ready
    info = create_split(ws, "study.v1", folds=2, seed=3)
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    result = export_split(ws, "study.v1", "nnunet", raw, dataset_id=612, preprocessed=pre)
    dataset_dir = raw / "Dataset612_study-v1"  # the split name made into a dataset name
    assert result.dataset_dir == str(dataset_dir) and result.splits_in_preprocessed
    assert result.splits_file == str(pre / dataset_dir.name / "splits_final.json")
    assert not (dataset_dir / "splits_final.json").exists()  # one copy, where nnU-Net reads it
    assert sorted(p.name for p in dataset_dir.iterdir()) == [
        "dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs",
    ]  # fmt: skip
    dataset = json.loads((dataset_dir / "dataset.json").read_text())
    assert dataset["file_ending"] == ".nii.gz"
    cases = split_cases(ws, "study.v1")
    test = {c for c, v in cases.items() if v[1] == "test"}
    assert info.subsets["test"].images == len(test) > 0
    assert {p.name.removesuffix("_0000.nii.gz") for p in (dataset_dir / "imagesTs").iterdir()} == (
        test
    )
    assert {p.name.removesuffix("_0000.nii.gz") for p in (dataset_dir / "imagesTr").iterdir()} == (
        set(cases) - test
    )

    nn = run_nnunet(raw, pre, tmp_path / "results", 612, folds=2)
    assert nn["name"] == dataset_dir.name
    mm_x, mm_y = cases[nn["first"].removesuffix("_0000.nii.gz")][3]
    assert mm_x and mm_y  # the demo images are calibrated
    assert nn["spacing"][1:] == pytest.approx([mm_y, mm_x])  # (999, y, x): the real mm
    for k, fold in enumerate(nn["folds"]):  # exactly the split's frozen folds
        outside = {c: v for c, v in cases.items() if v[1] != "test"}
        assert fold["val"] == sorted(c for c, v in outside.items() if v[2] == k)
        assert fold["train"] == sorted(c for c, v in outside.items() if v[2] != k)
        patients = [{cases[c][0] for c in fold[side]} for side in ("train", "val")]
        assert patients[0] and patients[1] and not patients[0] & patients[1]
        assert not set(fold["train"] + fold["val"]) & test


def test_png_export_and_a_split_without_folds(ready, tmp_path):
    ws = ready
    create_split(ws, "nofolds", folds=0, ratios="1:1:1")
    raw = tmp_path / "raw"
    result = export_split(ws, "nofolds", "nnunet", raw, file_ending=".png")
    dataset_dir = raw / f"Dataset{default_dataset_id(result_hash(ws, 'nofolds')):03d}_nofolds"
    assert result.dataset_dir == str(dataset_dir) and 500 <= result.dataset_id <= 999
    assert json.loads((dataset_dir / "dataset.json").read_text())["file_ending"] == ".png"
    assert all(p.suffix == ".png" for p in (dataset_dir / "imagesTr").iterdir())
    folds = json.loads((dataset_dir / "splits_final.json").read_text())
    cases = split_cases(ws, "nofolds")
    assert folds == [
        {
            "train": sorted(c for c, v in cases.items() if v[1] == "train"),
            "val": sorted(c for c, v in cases.items() if v[1] == "val"),
        }
    ]
    assert any("copy " in n and "$nnUNet_preprocessed/" in n for n in result.notes)
    assert any("no folds" in n and "fold 0" in n for n in result.notes)
    assert any("PNG carries no pixel spacing" in n for n in result.notes)


def result_hash(ws, name: str) -> str:
    from datatool.learning.splits import show_split

    return show_split(ws, name).hash


def test_a_second_split_replaces_the_first_whole_and_is_refused_without_replace(ready, tmp_path):
    ws = ready
    create_split(ws, "a", folds=2, seed=1)
    create_split(ws, "b", folds=0, seed=2, ratios="1:1:1")
    raw = tmp_path / "raw"
    args = ["--workspace", str(ws.root), "--out", str(raw), "--dataset-name", "US"]
    env = {"nnUNet_preprocessed": None}
    res = runner.invoke(app, ["split", "export", "a", "--dataset-id", "501", *args], env=env)
    assert res.exit_code == 0, res.output
    assert "Dataset501_US" in res.stdout and "2 fold(s)" in res.stdout
    assert "copy " in res.stderr and "Dataset501_US/splits_final.json" in res.stderr
    dataset_dir = raw / "Dataset501_US"
    stray = dataset_dir / "imagesTr" / "old_case_0000.nii.gz"
    stray.write_bytes(b"left over")
    before = sorted(p.name for p in dataset_dir.rglob("*"))

    res = runner.invoke(app, ["split", "export", "b", "--dataset-id", "501", *args], env=env)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0] and "--replace" in lines[0]
    assert sorted(p.name for p in dataset_dir.rglob("*")) == before  # untouched

    res = runner.invoke(
        app, ["split", "export", "b", "--dataset-id", "501", "--replace", "--json", *args], env=env
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["replaced"] is True and out["folds"] == 1 and out["name"] == "b"
    cases_b = split_cases(ws, "b")
    written = {
        p.name.removesuffix("_0000.nii.gz")
        for sub in ("imagesTr", "imagesTs")
        for p in (dataset_dir / sub).iterdir()
    }
    assert written == set(cases_b)  # only split b's cases: nothing of a survives
    assert not stray.exists()
    train_b = {c for c, v in cases_b.items() if v[1] != "test"}
    assert {p.name.removesuffix("_0000.nii.gz") for p in (dataset_dir / "imagesTr").iterdir()} == (
        train_b
    )
    dataset = json.loads((dataset_dir / "dataset.json").read_text())
    assert dataset["numTraining"] == len(train_b) and "split b" in dataset["description"]
    assert [p.name for p in raw.iterdir()] == ["Dataset501_US"]  # no temp folder left

    # another dataset name with the same id: nnU-Net could not tell them apart
    res = runner.invoke(
        app, ["split", "export", "a", "--dataset-id", "501", "--dataset-name", "Other",
              "--workspace", str(ws.root), "--out", str(raw)], env=env,
    )  # fmt: skip
    assert res.exit_code == 2 and "already has dataset id 501" in res.stderr
    for bad in (["--dataset-id", "1000"], ["--dataset-name", "a b"], ["--file-ending", ".tif"]):
        res = runner.invoke(
            app, ["split", "export", "a", *bad, "--workspace", str(ws.root), "--out",
                  str(tmp_path / "x")], env=env,
        )  # fmt: skip
        assert res.exit_code == 2, (bad, res.output)


def test_preprocessed_folds_of_another_split_are_not_overwritten_silently(ready, tmp_path):
    ws = ready
    create_split(ws, "a", folds=2, seed=1)
    # no folds: one fold in splits_final.json, never a's two (two 2-fold splits of the demo's
    # 3 patients drew the same folds about once in 6 workspaces, each with its own key)
    create_split(ws, "b", folds=0, seed=2, ratios="1:1:1")
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    export_split(ws, "a", "nnunet", raw, dataset_id=502, dataset_name="X", preprocessed=pre)
    splits = pre / "Dataset502_X" / "splits_final.json"
    first = splits.read_text()
    res = runner.invoke(
        app, ["split", "export", "b", "--dataset-id", "502", "--dataset-name", "X",
              "--workspace", str(ws.root), "--out", str(tmp_path / "raw2")],
        env={"nnUNet_preprocessed": str(pre)},
    )  # fmt: skip
    assert res.exit_code == 2 and "holds other folds" in res.stderr
    assert splits.read_text() == first
    res = runner.invoke(
        app, ["split", "export", "b", "--dataset-id", "502", "--dataset-name", "X", "--replace",
              "--workspace", str(ws.root), "--out", str(tmp_path / "raw2")],
        env={"nnUNet_preprocessed": str(pre)},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "where nnU-Net reads them" in res.stdout and splits.read_text() != first


def test_uncalibrated_images_get_1_mm_and_a_note(ready, tmp_path):
    import SimpleITK as sitk

    ws = ready
    create_split(ws, "s", folds=2)
    with ws.session() as s:
        image = s.scalars(select(Image).order_by(Image.id)).first()
        calibrated = s.scalars(select(Image).order_by(Image.id.desc())).first()
        image.mm_per_px_x = image.mm_per_px_y = None
        first, other = image.id, (calibrated.id, calibrated.mm_per_px_x, calibrated.mm_per_px_y)
    result = export_split(ws, "s", "nnunet", tmp_path / "raw", preprocessed=tmp_path / "pre")
    assert result.uncalibrated == 1
    assert any("1 image(s) have no calibration" in n for n in result.notes)

    def spacings(image_id: int) -> set[tuple[float, ...]]:  # of its image and its label
        files = Path(result.dataset_dir).rglob(f"*_{image_name(image_id)}*.nii.gz")
        return {sitk.ReadImage(str(p)).GetSpacing() for p in files}

    assert spacings(first) == {(1.0, 1.0)}
    (found,) = spacings(other[0])
    assert found == pytest.approx(other[1:]) and found != (1.0, 1.0)
