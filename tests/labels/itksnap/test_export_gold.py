"""``export itksnap --gold N`` on a handmade study: gold images come out exactly like the
ordinary ones (same files, empty segmentation, nothing in the folder names them), and once the
rater's labels are synced back, ``datatool raters`` scores them against the reference."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from datatool.analysis.rater_quality import rater_quality
from datatool.cli import app
from datatool.labels.itksnap.export import export_itksnap
from datatool.labels.itksnap.formats import read_label_map, write_segmentation
from datatool.labels.itksnap.sync import sync_itksnap
from datatool.labels.matching import image_name
from tests.gold_util import femur_shifted, label, reference_mask, study


def _files(folder, name: str) -> dict[str, bytes]:
    """A folder's files, the image's name in their names and contents replaced by 'X'."""
    return {
        p.name.replace(name, "X"): p.read_bytes().replace(name.encode(), b"X")
        for p in sorted(folder.iterdir())
    }


def test_gold_images_look_like_any_other_and_are_scored_once_synced(ws, tmp_path):
    ids = study(ws, tmp_path, 8)
    for i in ids[:4]:
        label(ws, "EXP", i, reference_mask())
    out = tmp_path / "an1"
    result = export_itksnap(ws, "AN1", out, image_ids=ids[4:], gold=2, gold_reference="EXP",
                            gold_seed=3)  # fmt: skip
    handed = result.gold
    assert handed is not None and len(handed.gold) == 2 and set(handed.gold) <= set(ids[:4])
    assert result.images == 6 and handed.queue == sorted([*ids[4:], *handed.gold])
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [image_name(i) for i in handed.queue]
    # every folder holds the same files; the workspace files differ only by the name; every
    # segmentation is empty (the reference never leaves the catalogue)
    ordinary = image_name(ids[4])
    want = _files(out / ordinary, ordinary)
    for i in handed.queue:
        name = image_name(i)
        got = _files(out / name, name)
        assert set(got) == set(want) == {"X.nii.gz", "X_seg.nii.gz", "X.itksnap"}
        assert got["X.itksnap"] == want["X.itksnap"]
        assert not read_label_map(out / name / f"{name}_seg.nii.gz").any()
    # nothing beside the folders names the gold images
    for extra in (p for p in out.iterdir() if p.is_file()):
        text = extra.read_text()
        assert not any(image_name(i) in text for i in handed.gold), extra.name
    marker = json.loads((out / "datatool-export.json").read_text())
    assert set(marker) == {"format", "tool", "rater", "protocol"}

    # the rater labels everything; the gold ones with the femur 2 px off
    for i in handed.queue:
        name = image_name(i)
        mask = femur_shifted(2) if i in handed.gold else reference_mask()
        write_segmentation(out / name / f"{name}_seg.nii.gz", mask, (0.1, 0.1))
    synced = sync_itksnap(ws, out, "AN1")
    assert synced.new_versions == 6 and not synced.rejected
    (an1,) = rater_quality(ws).raters
    femur = next(g for g in an1.structures if g.structure == "femur")
    assert (an1.handed, an1.labelled, femur.images) == (2, 2, 2)
    assert femur.iou["mean"] == pytest.approx(2 / 3)


def test_the_export_command_takes_gold_and_a_rerun_hands_none(ws, tmp_path):
    ids = study(ws, tmp_path, 5)
    for i in ids[:3]:
        label(ws, "EXP", i, reference_mask())

    def export(gold: str = "2", reference: str = "EXP", *more: str):
        return CliRunner().invoke(
            app,
            ["export", "itksnap", "--rater", "AN1", "--out", str(tmp_path / "x"), "--gold", gold,
             "--gold-reference", reference, "--gold-seed", "4", "-w", str(ws.root), *more],
        )  # fmt: skip

    first = export("2", "EXP", "--json")
    assert first.exit_code == 0, first.output
    gold = json.loads(first.stdout)["gold"]
    assert (len(gold["gold"]), gold["new"], gold["reference"]) == (2, 2, "EXP")
    # without --images: the ordinary images are those the reference has not labelled
    assert gold["queue"] == sorted([*ids[3:], *gold["gold"]])
    again = export()
    assert again.exit_code == 0, again.output
    assert "2 of them gold-standard images against EXP (0 new" in again.stdout
    too_many = export("9")
    assert too_many.exit_code == 1 and "--gold 9: only 1 more images" in too_many.stderr
    bad_ref = export("2", "consensus:staple")
    assert bad_ref.exit_code == 2 and "run 'datatool consensus' first" in bad_ref.stderr
