"""A re-run of ``consensus`` reads no mask of an image whose labels did not change
(``analysis/consensus_cache.py``), and gives the same report as the first run: the same new
versions (none), the same images left to adjudication with the same conflicts, and the same
rater quality, to the last digit. An image whose label changed is worked out again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datatool.analysis import consensus_cache
from datatool.analysis.consensus import make_consensus
from datatool.core.jsonable import to_jsonable
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom
from tests.handmade import box, write_us

SHAPE = (40, 50)
FEMUR, AM, NERVE, ST = 1, 2, 3, 4
R1 = box(SHAPE, {FEMUR: (10, 20, 10, 30), NERVE: (24, 30, 5, 15)})
R2 = box(SHAPE, {FEMUR: (10, 16, 10, 30), NERVE: (24, 30, 5, 15)})  # 120 of r1's 200 px
MUSCLES = box(SHAPE, {AM: (6, 15, 5, 25), ST: (20, 30, 5, 25)})
SWAPPED = box(SHAPE, {ST: (6, 15, 5, 25), AM: (20, 30, 5, 25)})


@pytest.fixture()
def three_images(ws, tmp_path):
    """Images 0 and 1 labelled alike-ish by r1 and r2; on image 2 they swap the muscles."""
    files = [
        write_us(tmp_path / "d" / f"{k}.dcm", np.full(SHAPE, 90, np.uint8), patient_id=f"K{k}")
        for k in range(3)
    ]
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    add_rater(ws, "r1")
    add_rater(ws, "r2")
    with ws.session() as s:
        images = [image_for_dicom(s, ws.key, f) for f in files]
        pairs = [(R1, R2), (R2, R1), (MUSCLES, SWAPPED)]
        for image, masks in zip(images, pairs):
            for name, mask in zip(("r1", "r2"), masks):
                rater = get_rater(s, name)
                store_annotation(s, ws.store, image, rater, mask, "itksnap", None, protocol)
        ids = [i.id for i in images]
    return ws, ids, files


def _as_dict(report) -> dict:
    data = to_jsonable(report)
    data.pop("quality_file")
    return data


@pytest.mark.parametrize("method", ["staple", "majority"])
def test_a_rerun_reads_no_mask_and_says_the_same(three_images, counted, method):
    ws, ids, _ = three_images
    first = make_consensus(ws, method)
    assert (first.new_versions, first.needs_adjudication) == (2, 1)
    assert len(counted) == 6  # every rater's mask once
    counted.clear()
    again = make_consensus(ws, method)
    assert counted == []
    assert (again.new_versions, again.unchanged, again.needs_adjudication) == (0, 2, 1)
    expected = _as_dict(first)
    expected["new_versions"], expected["unchanged"] = 0, 2
    assert _as_dict(again) == expected  # the quality figures and conflicts as computed
    assert [a.image_id for a in again.adjudication] == [ids[2]]
    cache = ws.meta_dir / "cache" / f"consensus-{method}.json"
    text = cache.read_text()
    assert "r1" in text and "femur" in text and "MRN" not in text and "K0" not in text


def test_a_changed_label_is_worked_out_again_alone(three_images, counted):
    ws, _, files = three_images
    make_consensus(ws, "majority")
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        image = image_for_dicom(s, ws.key, files[0])
        store_annotation(s, ws.store, image, get_rater(s, "r2"), R1, "itksnap", None, protocol)
    counted.clear()
    report = make_consensus(ws, "majority")
    assert len(counted) == 2  # image 0's two labels, nobody else's
    assert (report.new_versions, report.unchanged, report.needs_adjudication) == (1, 1, 1)
    # the figures are those of a run without the cache
    (ws.meta_dir / "cache" / "consensus-majority.json").unlink()
    counted.clear()
    cold = make_consensus(ws, "majority")
    assert len(counted) == 6 and (cold.new_versions, cold.unchanged) == (0, 2)
    # STAPLE's sums run on several threads, in the order they finish: on the swapped image
    # (a poor fit) a fresh run was seen 2e-4 away under load, on the others in the 8th decimal
    assert [(q.rater, q.structure, q.images) for q in cold.quality] == [
        (q.rater, q.structure, q.images) for q in report.quality
    ]
    for q_cold, q_warm in zip(cold.quality, report.quality):
        for field in ("sensitivity", "specificity"):
            assert getattr(q_cold, field) == pytest.approx(getattr(q_warm, field), abs=1e-3)
    assert to_jsonable(cold.adjudication) == to_jsonable(report.adjudication)
    r2 = {q.structure: q for q in report.quality if q.rater == "r2"}
    assert r2["femur"].images == 2  # image 0 (now as r1's) and image 1


def test_a_cache_for_other_structures_or_broken_is_an_empty_one(three_images, counted):
    ws, _, _ = three_images
    make_consensus(ws, "staple")
    path = ws.meta_dir / "cache" / "consensus-staple.json"
    data = json.loads(path.read_text())
    data["structures"][0][1] = "thigh bone"  # the protocol renamed a structure
    path.write_text(json.dumps(data))
    counted.clear()
    make_consensus(ws, "staple")
    assert len(counted) == 6
    make_consensus(ws, "staple")  # written again, then made under another swap ratio
    data = json.loads(path.read_text())
    assert data["structures"][-1][0] == "settings"
    data["structures"][-1][1][1] += 1.0
    path.write_text(json.dumps(data))
    counted.clear()
    make_consensus(ws, "staple")
    assert len(counted) == 6
    path.write_text("{not json")
    counted.clear()
    assert make_consensus(ws, "staple").unchanged == 2
    assert len(counted) == 6


def test_no_quality_first_then_quality_is_computed(three_images, counted):
    ws, _, _ = three_images
    assert make_consensus(ws, "staple", quality=False).quality == []
    counted.clear()
    report = make_consensus(ws, "staple")
    assert len(counted) == 6 and report.quality  # the cache held no figures to give
    counted.clear()
    assert make_consensus(ws, "staple", quality=False).quality == []
    assert counted == []


def test_one_rater_as_the_reference_reads_nothing_again(three_images, counted):
    ws, _, _ = three_images
    assert make_consensus(ws, "rater:r1").new_versions == 3
    counted.clear()
    again = make_consensus(ws, "rater:r1")
    assert (again.new_versions, again.unchanged) == (0, 3) and counted == []
    assert not list((ws.meta_dir / "cache").glob("consensus-rater*"))


def test_the_cache_forgets_labels_nobody_holds_any_more(tmp_path):
    cache = consensus_cache.ConsensusCache(tmp_path, "majority", {1: "femur"})
    worked = consensus_cache.Worked([], {"1": [[1.0], [1.0]]}, "ab")
    cache.put("a", worked)
    cache.put("b", worked)
    cache.save()
    again = consensus_cache.ConsensusCache(tmp_path, "majority", {1: "femur"})
    assert again.get("a", quality=True) == worked
    again.keep_only({"b"})
    again.save()
    third = consensus_cache.ConsensusCache(tmp_path, "majority", {1: "femur"})
    assert third.get("a", quality=True) is None and third.get("b", quality=True) == worked
