"""Images that need adjudication: two raters who drew one region under different names (a
swap of the two muscles) get no consensus label, while an ordinary disagreement is fused as
before. Label maps built by hand, so every expected share is worked out here."""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.analysis.consensus import (
    StructureConflict,
    fuse,
    make_consensus,
    quality_path,
    structure_conflicts,
)
from datatool.cli import app
from datatool.core.catalogue import Annotation
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom
from tests.handmade import box, write_us

SHAPE = (40, 50)
AM, NERVE, ST, ARTERY = 2, 3, 4, 6
NAMES = {1: "femur", AM: "adductor magnus", NERVE: "sciatic nerve", ST: "semitendinosus",
         ARTERY: "femoral artery"}  # fmt: skip
# rater A: adductor magnus rows 5-14, semitendinosus rows 20-29 (each 10 x 20 = 200 px)
A = box(SHAPE, {AM: (5, 15, 5, 25), ST: (20, 30, 5, 25), NERVE: (32, 36, 30, 34)})


def swapped() -> np.ndarray:
    """Rater B names A's adductor magnus semitendinosus and the other way round, and draws
    the upper muscle one row lower (rows 6-15): 180 of its 200 pixels on A's adductor
    magnus, 20 on A's background... (row 15 is background in A)."""
    b = np.zeros(SHAPE, np.uint8)
    b[6:16, 5:25] = ST
    b[20:30, 5:25] = AM
    b[32:36, 30:34] = NERVE
    return b


def test_a_swap_of_two_muscles_is_two_conflicts_with_known_shares():
    conflicts = structure_conflicts([A, swapped()], ["r1", "r2"], NAMES)
    assert conflicts == [
        # A's adductor magnus (200 px, rows 5-14): rows 6-14 (180 px) on B's semitendinosus;
        # B's semitendinosus (200 px, rows 6-15): the same 180 px on A's adductor magnus
        StructureConflict("r1", "adductor magnus", "r2", "semitendinosus", 0.9, 0.9),
        # the lower muscles coincide: all 200 px each way
        StructureConflict("r1", "semitendinosus", "r2", "adductor magnus", 1.0, 1.0),
    ]
    # and STAPLE, which cannot know, drops both muscles: the reason for the rule
    fused = fuse([A, swapped()], "staple")
    assert not np.isin(fused, [AM, ST]).any()


def test_ordinary_disagreements_are_no_conflict():
    b = box(SHAPE, {AM: (7, 17, 8, 28), ST: (20, 30, 5, 25)})  # shifted muscle, no nerve
    b[20:23, 5:8] = NERVE  # a few pixels of muscle called nerve
    b[10:13, 10:14] = 1  # a few pixels of muscle called femur
    assert structure_conflicts([A, b], ["r1", "r2"], NAMES) == []
    # one rater misses the artery: it lies on the other's muscle, but that muscle lies on
    # the first one's muscle, so it is one structure left out, not a region named twice
    a2 = A.copy()
    a2[8:11, 8:11] = ARTERY
    assert structure_conflicts([a2, A], ["r1", "r2"], NAMES) == []
    # a conflict needs three times as much on the other structure as on the same one
    half = A.copy()
    half[5:15, 15:25] = ST  # half of B's upper muscle is named semitendinosus
    assert structure_conflicts([A, half], ["r1", "r2"], NAMES) == []


def test_any_pair_of_three_raters_in_conflict_is_found():
    conflicts = structure_conflicts([A, A.copy(), swapped()], ["r1", "r2", "r3"], NAMES)
    assert [(c.rater_a, c.rater_b) for c in conflicts] == [("r1", "r3")] * 2 + [("r2", "r3")] * 2


def test_make_consensus_leaves_the_swapped_image_to_adjudication(ws, tmp_path):
    """Two images: on the first the raters swap the muscles, on the second they disagree in
    an ordinary way. The first gets no consensus label and is listed with its conflicts (in
    the typed result, consensus.json, --json and --csv); the second is fused as before; a
    re-run changes nothing."""
    files = [
        write_us(tmp_path / "d" / f"{k}.dcm", np.full(SHAPE, 90, np.uint8), patient_id=f"C{k}")
        for k in range(2)
    ]
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    add_rater(ws, "r1")
    add_rater(ws, "r2")
    ordinary = box(SHAPE, {AM: (6, 15, 5, 25), ST: (20, 30, 6, 25), NERVE: (32, 36, 30, 34)})
    with ws.session() as s:
        images = [image_for_dicom(s, ws.key, f) for f in files]
        ids = [i.id for i in images]
        for image, second in zip(images, (swapped(), ordinary)):
            for name, mask in (("r1", A), ("r2", second)):
                store_annotation(s, ws.store, image, get_rater(s, name), mask, "itksnap", None,
                                 protocol)  # fmt: skip
    for method in ("staple", "majority"):
        calls: list[tuple[int, int]] = []
        report = make_consensus(ws, method, progress=lambda *x, seen=calls: seen.append(x))
        assert (report.images, report.new_versions, report.needs_adjudication) == (1, 1, 1)
        assert calls == [(1, 2), (2, 2)]  # the image left to adjudication counts as done
        (adj,) = report.adjudication
        assert adj.image_id == ids[0] and not adj.earlier_consensus
        assert [(c.structure_a, c.structure_b) for c in adj.conflicts] == [
            ("adductor magnus", "semitendinosus"),
            ("semitendinosus", "adductor magnus"),
        ]
        with ws.session() as s:
            stored = s.scalars(
                select(Annotation).where(Annotation.rater.has(name=f"consensus:{method}"))
            ).all()
            assert [a.image_id for a in stored] == [ids[1]]
            fused = ws.store.get_array(stored[0].mask_hash)
        if method == "majority":  # two raters: their intersection
            assert (fused == AM).sum() == 9 * 20
        else:
            assert 9 * 20 <= (fused == AM).sum() <= 10 * 20
        text = quality_path(ws, method).read_text()
        saved = json.loads(text)
        assert text == json.dumps(saved, indent=2)  # for people to read: indented by 2
        assert saved["adjudication"][0]["image_id"] == ids[0]
        again = make_consensus(ws, method)
        assert (again.new_versions, again.unchanged, again.needs_adjudication) == (0, 1, 1)
        # the other image's consensus label is no earlier version of this one's
        assert not again.adjudication[0].earlier_consensus

    runner = CliRunner()
    ws_args = ["--workspace", str(ws.root)]
    result = runner.invoke(app, ["consensus", "--json", "--no-quality", *ws_args])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["adjudication"][0]["image_id"] == ids[0]
    result = runner.invoke(app, ["consensus", *ws_args])
    assert "1 image needs adjudication" in result.stdout
    assert "adductor magnus" in result.stdout
    csv_file = tmp_path / "c.csv"
    result = runner.invoke(app, ["consensus", "--csv", str(csv_file), *ws_args])
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("c*.csv"))
    text = "".join(p.read_text() for p in written)
    assert f"{ids[0]},r1,adductor magnus,r2,semitendinosus,0.9,0.9" in text


def test_an_image_that_was_fused_before_says_it_keeps_its_earlier_version(ws, tmp_path):
    path = write_us(tmp_path / "d" / "0.dcm", np.full(SHAPE, 90, np.uint8), patient_id="E0")
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    add_rater(ws, "r1")
    add_rater(ws, "r2")
    with ws.session() as s:
        image = image_for_dicom(s, ws.key, path)
        for name in ("r1", "r2"):
            store_annotation(s, ws.store, image, get_rater(s, name), A, "itksnap", None, protocol)
    assert make_consensus(ws, "staple", quality=False).new_versions == 1
    with ws.session() as s:
        image = image_for_dicom(s, ws.key, path)
        store_annotation(s, ws.store, image, get_rater(s, "r2"), swapped(), "itksnap", None,
                         protocol)  # fmt: skip
    report = make_consensus(ws, "staple", quality=False)
    assert report.needs_adjudication == 1 and report.adjudication[0].earlier_consensus


def test_a_region_mostly_on_the_others_structure_but_not_three_times_more_is_no_conflict():
    """A's adductor magnus (rows 5-14, 200 px): B names rows 5-10 of it semitendinosus (120
    px, share 0.6) and 44 px of the rest adductor magnus (share 0.22): 0.6 is at least half
    but under 3 x 0.22 = 0.66, so it is no swap, whichever rater comes first (B's
    semitendinosus lies wholly on A's adductor magnus, but that alone is not a conflict)."""
    b = np.zeros(SHAPE, np.uint8)
    b[5:11, 5:25] = ST  # 120 px
    b[11, 5:25] = AM  # 20 px
    b[12:14, 5:17] = AM  # 24 px
    assert (b == AM).sum() == 44 and (b[5:15, 5:25] == ST).sum() == 120
    assert structure_conflicts([A, b], ["r1", "r2"], NAMES) == []
    assert structure_conflicts([b, A], ["r2", "r1"], NAMES) == []


def test_the_ratio_given_is_the_one_used():
    """A as above; B names rows 5-10 of A's adductor magnus semitendinosus (120 px) and the
    rest (rows 11-14, 80 px) adductor magnus, and draws adductor magnus over A's
    semitendinosus too (rows 20-29, 200 px; B's adductor magnus: 280 px). A's adductor
    magnus: 0.6 on B's semitendinosus, 0.4 on B's own; B's adductor magnus: 200 / 280 =
    0.7143 on A's semitendinosus, 80 / 280 = 0.2857 on A's own. At the usual ratio 3 neither
    is a swap; at ratio 1 both are, each with its way back (B's semitendinosus wholly on
    A's adductor magnus, A's semitendinosus wholly on B's adductor magnus)."""
    b = np.zeros(SHAPE, np.uint8)
    b[5:11, 5:25] = ST
    b[11:15, 5:25] = AM
    b[20:30, 5:25] = AM
    b[32:36, 30:34] = NERVE
    assert structure_conflicts([A, b], ["r1", "r2"], NAMES) == []
    assert structure_conflicts([A, b], ["r1", "r2"], NAMES, ratio=1.0) == [
        StructureConflict("r1", "adductor magnus", "r2", "semitendinosus", 0.6, 1.0),
        StructureConflict("r1", "semitendinosus", "r2", "adductor magnus", 1.0, 0.7143),
    ]


def test_a_swap_with_a_little_of_each_on_its_own_name_is_found():
    """A's adductor magnus (rows 5-14) and semitendinosus (rows 15-24) touch; B swaps their
    names and draws both one row lower: B's semitendinosus (rows 6-15) holds 180 px of A's
    adductor magnus and 20 of A's semitendinosus (row 15); B's adductor magnus (rows 16-25)
    180 of A's semitendinosus. Each way 180 / 200 = 0.9 on the other name against 0.1 or
    0 on the same: two conflicts, 0.9 and 0.9 each."""
    a = box(SHAPE, {AM: (5, 15, 5, 25), ST: (15, 25, 5, 25)})
    b = box(SHAPE, {ST: (6, 16, 5, 25), AM: (16, 26, 5, 25)})
    assert structure_conflicts([a, b], ["r1", "r2"], NAMES) == [
        StructureConflict("r1", "adductor magnus", "r2", "semitendinosus", 0.9, 0.9),
        StructureConflict("r1", "semitendinosus", "r2", "adductor magnus", 0.9, 0.9),
    ]


def test_a_region_mostly_on_the_others_nerve_is_no_conflict():
    """B names 120 px of A's adductor magnus (rows 5-10) sciatic nerve and leaves 80 as
    adductor magnus: 0.6 on the nerve against 0.4 on the same name, under 3 x 0.4: no
    conflict, though B's nerve lies mostly (120 of 136 px) on A's adductor magnus."""
    b = A.copy()
    b[5:11, 5:25] = NERVE
    assert structure_conflicts([A, b], ["r1", "r2"], NAMES) == []


def test_a_swap_round_a_few_pixels_of_nerve_with_shares_to_four_decimals():
    """As the swap above, but A calls 2 pixels inside its adductor magnus (row 8) nerve, and
    B adds one pixel of semitendinosus below its own (row 16). A's adductor magnus (198 px)
    holds 178 px of B's semitendinosus (rows 6-14 less the 2): 178 / 198 = 0.89899, shown
    0.899; B's semitendinosus (201 px) lies 178 on A's adductor magnus, 2 on A's nerve:
    178 / 201 = 0.88557, shown 0.8856. The lower muscles coincide."""
    a = A.copy()
    a[8, 8:10] = NERVE
    b = swapped()
    b[16, 5] = ST
    assert structure_conflicts([a, b], ["r1", "r2"], NAMES) == [
        StructureConflict("r1", "adductor magnus", "r2", "semitendinosus", 0.899, 0.8856),
        StructureConflict("r1", "semitendinosus", "r2", "adductor magnus", 1.0, 1.0),
    ]


def test_a_structure_without_a_way_back_does_not_end_the_search():
    """B draws semitendinosus over both of A's muscles (400 px): A's adductor magnus lies
    wholly on it, but it lies as much on A's semitendinosus, its own name: no conflict.
    The structures after it are still compared: B swaps A's nerve and artery (16 px each,
    each wholly on the other's): two conflicts."""
    a = box(SHAPE, {AM: (5, 15, 5, 25), ST: (20, 30, 5, 25), NERVE: (32, 36, 30, 34),
                    ARTERY: (32, 36, 40, 44)})  # fmt: skip
    b = box(SHAPE, {ST: (5, 30, 5, 25), ARTERY: (32, 36, 30, 34), NERVE: (32, 36, 40, 44)})
    b[15:20, 5:25] = 0  # the gap between A's muscles stays background
    assert structure_conflicts([a, b], ["r1", "r2"], NAMES) == [
        StructureConflict("r1", "sciatic nerve", "r2", "femoral artery", 1.0, 1.0),
        StructureConflict("r1", "femoral artery", "r2", "sciatic nerve", 1.0, 1.0),
    ]
