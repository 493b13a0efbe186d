"""Label maps, per-structure statistics and versioned annotations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select

from datatool.core.catalogue import Annotation, Image, RaterKind
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import (
    RaterAdded,
    StructureCount,
    add_rater,
    get_rater,
    label_coverage,
    list_raters,
    store_annotation,
)
from datatool.labels.masks import BadLabel, structure_stats, validate_mask

P = load_protocol()


def test_validate_mask():
    ok = np.zeros((4, 6), np.uint8)
    ok[1, 1] = 3
    assert validate_mask(ok[None], P, (4, 6)).shape == (4, 6)  # W x H x 1 is fine
    with pytest.raises(BadLabel, match="size mismatch"):
        validate_mask(ok, P, (6, 4))
    bad = ok.copy()
    bad[0, 0] = 5  # ITK-SNAP's label 5 is not in this protocol
    with pytest.raises(BadLabel, match=r"unknown label value\(s\) \[5\]"):
        validate_mask(bad, P, (4, 6))
    with pytest.raises(BadLabel, match="empty"):
        validate_mask(np.zeros((4, 6)), P, (4, 6))
    assert not validate_mask(np.zeros((4, 6)), P, (4, 6), allow_empty=True).any()


def test_structure_stats_area_components_bbox():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:7] = 1  # 12 px
    mask[10:12, 20:22] = 3  # two nerve blobs, 4 + 1 px
    mask[15, 25] = 3
    stats = {r["structure"]: r for r in structure_stats(mask, P, 0.2, 0.25)}
    assert stats["femur"]["area_px"] == 12 and stats["femur"]["area_mm2"] == pytest.approx(0.6)
    assert (
        stats["femur"]["x0"],
        stats["femur"]["y0"],
        stats["femur"]["x1"],
        stats["femur"]["y1"],
    ) == (3, 2, 6, 4)
    assert stats["sciatic nerve"]["components"] == 2 and stats["sciatic nerve"]["area_px"] == 5
    assert stats["femoral artery"]["area_px"] == 0 and stats["femoral artery"]["x0"] is None
    assert structure_stats(mask, P, None, None)[0]["area_mm2"] is None


def test_versions_chain_and_no_op(ws, us_file):
    ingest(ws, [us_file("OBXXXX1A.dcm")], workers=0)
    add_rater(ws, "AN1")
    with ws.session() as s:
        image = s.scalar(select(Image))
        mask = np.zeros((image.rows, image.cols), np.uint8)
        mask[100:150, 200:260] = 3
        rater = get_rater(s, "AN1")
        first = store_annotation(s, ws.store, image, rater, mask, "itksnap", "a.nii.gz", P)
        same = store_annotation(s, ws.store, image, rater, mask.copy(), "labelstudio", "t1", P)
        mask[160:170, 200:210] = 1
        second = store_annotation(s, ws.store, image, rater, mask, "itksnap", "a.nii.gz", P)
    assert first.created and not same.created and second.created
    assert (first.version, second.version) == (1, 2)
    assert same.annotation_id == first.annotation_id
    with ws.session() as s:
        assert len(s.scalars(select(Annotation)).all()) == 2
    np.testing.assert_array_equal(ws.store.get_array(second.mask_hash), mask)
    cov = label_coverage(ws).raters[0]
    assert (cov.rater, cov.kind, cov.images_labelled, cov.versions) == ("AN1", "human", 1, 2)
    assert cov.structures["femur"] == StructureCount(present=1, absent=0)
    assert cov.structures["femoral artery"] == StructureCount(present=0, absent=1)
    assert cov.sources == {"itksnap": 1}
    light = label_coverage(ws, per_structure=False).raters[0]  # the same but the structures
    assert light.structures == {} and replace(light, structures=cov.structures) == cov


def test_raters(ws):
    first, again = add_rater(ws, "AN2"), add_rater(ws, "AN2")
    assert first == RaterAdded("AN2", RaterKind.human, True)
    assert again == RaterAdded("AN2", RaterKind.human, False)
    assert add_rater(ws, "consensus:x", "consensus").kind is RaterKind.consensus
    with pytest.raises(UsageError):
        add_rater(ws, "a/b")
    with pytest.raises(UsageError, match="rater kind must be one of human, consensus, model"):
        add_rater(ws, "AN3", "robot")
    with ws.session() as s, pytest.raises(UsageError, match="run 'datatool rater add NOBODY'"):
        get_rater(s, "NOBODY")
    rows = list_raters(ws)
    assert [(r.name, r.kind, r.images_labelled) for r in rows] == [
        ("AN2", RaterKind.human, 0),
        ("consensus:x", RaterKind.consensus, 0),
    ]


def test_a_rejection_names_a_few_unknown_values_never_the_whole_content():
    noise = np.arange(256, dtype=np.uint8).repeat(4).reshape(32, 32)
    with pytest.raises(BadLabel) as exc:
        validate_mask(noise, P, (32, 32))
    message = str(exc.value)
    assert "[5, 7, 8, 9, 10, ...] (250 distinct)" in message and "255" not in message


def _handmade_images(ws, tmp_path, n: int = 1, **kwargs) -> list[int]:
    """n hand-made 20 x 30 images ingested; their ids."""
    from tests.handmade import write_us

    for k in range(n):
        write_us(tmp_path / "d" / f"{k}.dcm", np.full((20, 30), 80, np.uint8),
                 patient_id=f"H{k}", **kwargs)  # fmt: skip
    ingest(ws, [tmp_path / "d"], workers=0)
    with ws.session() as s:
        return sorted(s.scalars(select(Image.id)))


@pytest.mark.parametrize(
    "value,why", [(255, r"\[255\]"), (5, r"\[5\]"), (7, r"\[7\]"), (None, "size mismatch")]
)
def test_the_store_refuses_a_label_map_outside_the_protocol(ws, tmp_path, value, why):
    """Whoever calls it (sync, consensus, a model's drafts): a map holding a value that is
    no label of the protocol (255, STAPLE's usual mark for undecided pixels; 5 and 7, next
    to the protocol's 1-4 and 6), or not of the image's size, is refused before anything is
    stored; a good map in the same batch is not stored either."""
    from datatool.labels.annotations import store_annotations

    first, second = _handmade_images(ws, tmp_path, 2)
    add_rater(ws, "AN1")
    objects = sorted(p.name for p in ws.store.root.rglob("*") if p.is_file())
    with ws.session() as s:
        image, other = s.get(Image, first), s.get(Image, second)
        good = np.zeros((20, 30), np.uint8)
        good[2:5, 3:9] = 1
        bad = good.copy()
        if value is None:
            bad = np.zeros((30, 20), np.uint8)
        else:
            bad[10, 10] = value
        rater = get_rater(s, "AN1")
        with pytest.raises(BadLabel, match=why):
            store_annotation(s, ws.store, image, rater, bad, "consensus", None, P)
        with pytest.raises(BadLabel, match=why):
            store_annotations(
                s, ws.store, rater, [(other, good, "itksnap", None), (image, bad, "itksnap", None)],
                P,
            )  # fmt: skip
    with ws.session() as s:
        assert s.scalars(select(Annotation)).all() == []
    assert sorted(p.name for p in ws.store.root.rglob("*") if p.is_file()) == objects


def test_areas_in_mm2_of_a_pixel_that_is_not_square(ws, tmp_path):
    """PhysicalDeltaX 0.01 cm and PhysicalDeltaY 0.025 cm: a pixel is 0.1 mm wide and
    0.25 mm tall, 0.025 mm². A femur of 3 x 4 = 12 pixels is 0.3 mm², 3 rows tall (0.75 mm)
    and 4 columns wide (0.4 mm); with the y spacing read from X it would be 0.12 mm²."""
    from datatool.core.catalogue import StructureStats

    (image_id,) = _handmade_images(ws, tmp_path, mm_per_px=0.1, mm_per_px_y=0.25)
    add_rater(ws, "AN1")
    with ws.session() as s:
        image = s.get(Image, image_id)
        assert (image.mm_per_px_x, image.mm_per_px_y) == pytest.approx((0.1, 0.25), rel=1e-12)
        mask = np.zeros((20, 30), np.uint8)
        mask[2:5, 10:14] = 1  # rows 2-4, columns 10-13
        stored = store_annotation(s, ws.store, image, get_rater(s, "AN1"), mask, "itksnap",
                                  None, P)  # fmt: skip
    with ws.session() as s:
        femur = s.scalar(
            select(StructureStats).where(
                StructureStats.annotation_id == stored.annotation_id,
                StructureStats.structure == "femur",
            )
        )
        assert femur.area_px == 12
        assert femur.area_mm2 == pytest.approx(0.3, rel=1e-12)


# ---------------------------------------------------------------- word for word (issue 28)


def _refusal(mask, shape, **kwargs) -> str:
    with pytest.raises(BadLabel) as caught:
        validate_mask(mask, P, shape, **kwargs)
    return str(caught.value)


KNOWS = "(protocol anterior_sciatic knows [1, 2, 3, 4, 6])"


def test_every_refusal_of_a_label_map_word_for_word():
    ok = np.zeros((4, 6), np.uint8)
    ok[1, 1] = 3
    assert _refusal(np.zeros((2, 4, 6), np.uint8), (4, 6)) == (
        "label map is 3-D (2, 4, 6), expected a 2D map"
    )
    assert _refusal(ok, (6, 4)) == (
        "size mismatch: label map is 6x4, the image is 4x6 (width x height)"
    )
    assert _refusal(ok.astype(float) + 0.5, (4, 6)) == (
        "label map holds fractional values, not labels"
    )
    assert _refusal(np.zeros((4, 6)), (4, 6)) == (
        "label map is empty (nothing labelled); pass --allow-empty to keep it"
    )
    negative = ok.astype(np.int16)
    negative[0, 0] = -1
    assert _refusal(negative, (4, 6)) == f"unknown label value(s) [-1] {KNOWS}"
    big = ok.astype(np.int16)
    big[0, 0] = 300
    assert _refusal(big, (4, 6)) == f"unknown label value(s) [300] {KNOWS}"
    # every run of values the protocol lacks: 5, 7..255 (and their edges 7 and 255)
    for value in (5, 7, 8, 100, 254, 255):
        bad = ok.copy()
        bad[0, 0] = value
        assert _refusal(bad, (4, 6)) == f"unknown label value(s) [{value}] {KNOWS}", value
    # six unknown values: five named, then how many there are
    six = np.zeros((4, 6), np.uint8)
    six[0, :6] = [5, 7, 8, 9, 10, 11]
    assert _refusal(six, (4, 6)) == (
        f"unknown label value(s) [5, 7, 8, 9, 10, ...] (6 distinct) {KNOWS}"
    )
    five = np.zeros((4, 6), np.uint8)
    five[0, :5] = [5, 7, 8, 9, 10]
    assert _refusal(five, (4, 6)) == f"unknown label value(s) [5, 7, 8, 9, 10] {KNOWS}"


def test_what_a_label_map_may_be():
    """W x H x 1 and 1 x W x H become 2D; whole floats and wider integers become uint8;
    every protocol value passes (the edges of the runs of unknown values: 4 and 6 beside 5)."""
    every = np.array([[0, 1, 2], [3, 4, 6]], np.uint8)
    for mask in (every, every[None], every[:, :, None], every.astype(float), every.astype(int)):
        got = validate_mask(mask, P, (2, 3))
        assert got.dtype == np.uint8 and got.shape == (2, 3)
        np.testing.assert_array_equal(got, every)


def test_a_map_one_pixel_tall_or_small_is_never_a_traceback():
    """A 2D map of a one-row image is already 2D; a 1 x 1 x 1 map is either taken or
    refused with a BadLabel line, never a crash."""
    row = np.array([[0, 1, 3, 0, 6]], np.uint8)
    np.testing.assert_array_equal(validate_mask(row, P, (1, 5)), row)
    np.testing.assert_array_equal(validate_mask(row.T, P, (5, 1)), row.T)
    try:
        out = validate_mask(np.ones((1, 1, 1), np.uint8), P, (1, 1))
    except BadLabel:
        pass
    else:
        assert out.shape == (1, 1) and out[0, 0] == 1


def test_the_edges_of_the_values_a_protocol_knows():
    """A protocol without label 1 refuses a 1; one with label 255 takes a 255 (also from a
    wider integer map); 256 in a wider map is refused, never wrapped round to 0."""
    from datatool.core.protocol import Protocol, Structure

    no_one = Protocol(name="p2", title="two", structures=(Structure("b", 2, (0, 0, 255)),))
    with pytest.raises(BadLabel) as caught:
        validate_mask(np.array([[1, 2]], np.uint8), no_one, (1, 2))
    assert str(caught.value) == "unknown label value(s) [1] (protocol p2 knows [2])"
    top = Protocol(name="p255", title="top", structures=(Structure("t", 255, (9, 9, 9)),))
    for dtype in (np.uint8, np.int16, np.float32):
        got = validate_mask(np.array([[0, 255]], dtype), top, (1, 2))
        assert got.dtype == np.uint8 and got.tolist() == [[0, 255]], dtype
    wide = np.array([[1, 256]], np.int16)
    assert _refusal(wide, (1, 2)) == f"unknown label value(s) [256] {KNOWS}"


def test_structure_stats_of_every_structure_written_out():
    """Each row in full, areas in mm² from a pixel of 0.5 x 0.2 mm (0.1 mm²); a structure
    whose blobs touch only at a corner is one 8-connected component."""
    mask = np.zeros((8, 10), np.uint8)
    mask[1:3, 2:5] = 2  # 6 px
    mask[3, 5] = 2  # touches (2, 4) at a corner: still one component
    mask[6, 0] = 4
    mask[7, 9] = 4  # two components far apart
    rows = structure_stats(mask, P, 0.5, 0.2)
    empty = {"area_px": 0, "area_mm2": 0.0, "components": 0,
             "x0": None, "y0": None, "x1": None, "y1": None}  # fmt: skip
    assert rows[0] == {"structure": "femur", "value": 1, **empty}
    assert rows[1] == {"structure": "adductor magnus", "value": 2, "area_px": 7,
                       "area_mm2": pytest.approx(0.7), "components": 1,
                       "x0": 2, "y0": 1, "x1": 5, "y1": 3}  # fmt: skip
    assert rows[3] == {"structure": "semitendinosus", "value": 4, "area_px": 2,
                       "area_mm2": pytest.approx(0.2), "components": 2,
                       "x0": 0, "y0": 6, "x1": 9, "y1": 7}  # fmt: skip
    assert [r["structure"] for r in rows] == [s.name for s in P.structures]
    # a spacing missing on either side: no mm² at all, not 0
    for x, y in ((None, 0.2), (0.5, None), (0.0, 0.2)):
        rows = structure_stats(mask, P, x, y)
        assert rows[0]["area_mm2"] is None and rows[1]["area_mm2"] is None
