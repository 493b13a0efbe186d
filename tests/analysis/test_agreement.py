"""Agreement on the demo raters, saved samples, errors; consensus; CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from datatool.analysis.agreement import run_agreement
from datatool.analysis.consensus import fuse, make_consensus
from datatool.cli import app
from datatool.core.catalogue import Annotation, Image
from datatool.core.errors import DatatoolError
from datatool.core.protocol import load_protocol
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from tests.labels_util import ingest_demo_with_labels


@pytest.fixture()
def labelled(ws, demo_dir):
    ingest_demo_with_labels(ws, demo_dir)
    return ws


def test_agreement_reports_every_structure_and_saves_the_sample(labelled, tmp_path):
    ws = labelled
    report = run_agreement(ws, sample=8, seed=3, out_dir=tmp_path / "r")
    assert report.sample.images == 8 and not report.sample.reused
    assert report.measure == "area_mm2" and report.raters == ["rater1", "rater2"]
    names = [r.structure for r in report.structures]
    assert names == [s.name for s in load_protocol().structures]
    for r in report.structures:  # the numbers themselves: test_agreement_numbers.py
        assert r.icc.df1 == 7 and r.icc.n_targets == 8 and 0.5 < r.dice["mean"] <= 1
        # image by image IoU = Dice / (2 - Dice), an increasing map: the extremes correspond
        for end in ("min", "max"):
            assert r.iou[end] == pytest.approx(r.dice[end] / (2 - r.dice[end]), rel=1e-12)
    assert (tmp_path / "r" / "bland_altman_sciatic_nerve.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "r" / "agreement.json").read_text())
    assert saved["structures"][0]["icc"] == report.structures[0].icc.as_dict()
    # the same command again: the same sample and numbers, even after a new label version
    with ws.session() as s:
        ann = s.scalars(select(Annotation)).first()
        image = s.get(Image, ann.image_id)
        mask = ws.store.get_array(ann.mask_hash).copy()
        mask[mask == 3] = 0
        store_annotation(s, ws.store, image, ann.rater, mask, "itksnap", "edit", load_protocol())
    again = run_agreement(ws, sample=8, seed=3, out_dir=tmp_path / "r2", plots=False)
    assert again.sample.reused and again.sample.id == report.sample.id
    assert again.structures == report.structures
    other = run_agreement(ws, sample=8, seed=4, plots=False)
    assert other.sample.id != report.sample.id


def test_dice_matches_a_whole_image_computation(labelled):
    ws = labelled
    report = run_agreement(ws, plots=False)  # all 12 doubly labelled images
    value = load_protocol().by_label("sciatic nerve").value
    dices = []
    with ws.session() as s:
        latest = {}
        for ann in s.scalars(select(Annotation).order_by(Annotation.version)):
            latest[(ann.image_id, ann.rater.name)] = ann.mask_hash
    for image_id in sorted({i for i, _ in latest}):
        a = ws.store.get_array(latest[(image_id, "rater1")]) == value
        b = ws.store.get_array(latest[(image_id, "rater2")]) == value
        if a.any() or b.any():
            dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    nerve = next(r for r in report.structures if r.structure == "sciatic nerve")
    assert nerve.dice["mean"] == pytest.approx(np.mean(dices))
    assert report.sample.images == 12


def test_agreement_errors(ws, labelled):
    with pytest.raises(DatatoolError, match="more than the 12 images"):
        run_agreement(labelled, sample=300)
    with pytest.raises(DatatoolError, match="rater add NOBODY"):
        run_agreement(labelled, raters=["rater1", "NOBODY"])
    with pytest.raises(DatatoolError, match="tibia"):
        run_agreement(labelled, structures=["tibia"])


def test_agreement_needs_two_raters_and_labelled_structures(ws, demo_dir):
    ingest_demo_with_labels(ws, demo_dir, raters=("rater1",))
    with pytest.raises(DatatoolError, match="two raters"):
        run_agreement(ws)
    add_rater(ws, "copy")
    protocol = load_protocol()
    with ws.session() as s:  # a second rater who labelled only the femur
        rater = get_rater(s, "copy")
        for ann in s.scalars(select(Annotation)).all():
            mask = ws.store.get_array(ann.mask_hash)
            store_annotation(
                s,
                ws.store,
                s.get(Image, ann.image_id),
                rater,
                np.where(mask == 1, 1, 0).astype(np.uint8),
                "itksnap",
                "x",
                protocol,
            )
    with ws.session() as s:  # and nobody labels the artery
        for ann in s.scalars(select(Annotation).where(Annotation.rater_id != rater.id)).all():
            mask = ws.store.get_array(ann.mask_hash)
            store_annotation(
                s,
                ws.store,
                s.get(Image, ann.image_id),
                ann.rater,
                np.where(mask == 6, 0, mask).astype(np.uint8),
                "itksnap",
                "y",
                protocol,
            )
    report = run_agreement(ws, raters=["rater1", "copy"], plots=False)
    assert any("femoral artery" in n for n in report.notes)
    with pytest.raises(DatatoolError, match="neither rater labelled it"):
        run_agreement(ws, raters=["rater1", "copy"], structures=["femoral artery"], plots=False)


def test_fusion_methods():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[0:2, 0:3] = 3
    b[0:2, 1:4] = 3
    np.testing.assert_array_equal(fuse([a, b], "majority"), np.where((a == 3) & (b == 3), 3, 0))
    assert set(np.unique(fuse([a, b], "staple"))) <= {0, 3}
    np.testing.assert_array_equal(fuse([a, a, b], "majority"), a)


def test_consensus_is_versioned_and_idempotent(labelled):
    ws = labelled
    first = make_consensus(ws, "staple")
    assert first.images == 12 and first.new_versions == 12
    assert make_consensus(ws, "staple").unchanged == 12
    copied = make_consensus(ws, "rater:rater1")
    assert copied.images == 12 and copied.reference_rater == "consensus:rater:rater1"
    with ws.session() as s:
        ref = {
            a.image_id: a.mask_hash
            for a in s.scalars(
                select(Annotation).where(Annotation.rater.has(name="consensus:rater:rater1"))
            )
        }
        own = {
            a.image_id: a.mask_hash
            for a in s.scalars(select(Annotation).where(Annotation.rater.has(name="rater1")))
        }
    assert ref == own


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["agreement", *args], env={"COLUMNS": "200"})


def test_cli_agreement_json(labelled):
    ws = ["--workspace", str(labelled.root)]
    res = _cli("--sample", "5", "--json", *ws)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sample"]["images"] == 5
    table = _cli("--sample", "5", *ws)
    assert table.exit_code == 0, table.output
    assert "ICC(2,1)" in table.stdout and "saved, reused" in table.stdout


def test_a_reused_sample_reports_the_seed_it_was_drawn_with(labelled):
    """Every doubly labelled image (no --sample) is one saved sample whatever the seed: run
    again with another seed, it is reused and reports the seed it was drawn with."""
    first = run_agreement(labelled, seed=3, plots=False)
    assert not first.sample.reused and first.sample.seed == 3
    again = run_agreement(labelled, seed=11, plots=False)
    assert again.sample.reused and again.sample.id == first.sample.id
    assert again.sample.seed == 3
    res = _cli("--seed", "11", "-w", str(labelled.root))
    assert res.exit_code == 0, res.output
    assert "seed 3" in res.stdout and "seed 11" not in res.stdout


def test_a_new_sample_of_every_image_says_why(labelled):
    """Agreement over every doubly labelled image reuses its sample until a label changes;
    then the new sample says how the labels changed since (API and terminal), and
    --resample says so."""
    ws = labelled
    first = run_agreement(ws, plots=False)
    assert not first.sample.reused and first.sample.why_new is None  # the first: no why
    again = run_agreement(ws, plots=False)
    assert again.sample.reused and again.sample.why_new is None
    with ws.session() as s:
        ann = s.scalars(select(Annotation).order_by(Annotation.id)).first()
        mask = ws.store.get_array(ann.mask_hash).copy()
        mask[mask == 3] = 0
        store_annotation(
            s, ws.store, s.get(Image, ann.image_id), ann.rater, mask, "itksnap", "edit",
            load_protocol(),
        )  # fmt: skip
    result = CliRunner().invoke(app, ["agreement", "--workspace", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert (
        f"new sample: the labels changed since sample {first.sample.id}: 1 image with a new "
        "label version (the earlier sample stays saved)"
    ) in " ".join(result.stdout.split())
    resampled = run_agreement(ws, plots=False, resample=True)
    assert resampled.sample.why_new == "--resample"
