"""Consensus labels against cases with a known answer, built by hand: three raters whose
mistakes never meet (every pixel has two raters right), a rater who paints a whole band
wrong beside two who agree, two raters who disagree (majority: their per-structure
intersection). The fused maps must be the truth, pixel for pixel, in ``fuse`` and through
``make_consensus`` into the catalogue."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from datatool.analysis.consensus import fuse, make_consensus
from datatool.core.catalogue import Annotation
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom
from tests.handmade import box, write_us

SHAPE = (30, 40)
TRUTH = box(SHAPE, {1: (5, 15, 5, 20), 3: (18, 26, 10, 30)})


def three_raters_who_err_apart(truth: np.ndarray) -> list[np.ndarray]:
    """Each rater gets a few pixels wrong (missed, added, or the wrong structure), no pixel
    wrong for two of them: the majority of every pixel is the truth."""
    a, b, c = truth.copy(), truth.copy(), truth.copy()
    a[5, 5:8] = 0  # misses three femur pixels
    a[26, 10:14] = 3  # adds four nerve pixels
    b[14, 17:20] = 0
    b[4, 5:9] = 1
    b[20, 10] = 1  # nerve labelled femur
    c[18:20, 28:30] = 0
    c[0:3, 0:3] = 3
    wrong = (a != truth).astype(int) + (b != truth) + (c != truth)
    assert wrong.max() == 1 and all((m != truth).sum() >= 5 for m in (a, b, c))
    return [a, b, c]


@pytest.mark.parametrize("method", ["staple", "majority"])
def test_three_raters_who_err_apart_give_the_truth(method):
    np.testing.assert_array_equal(fuse(three_raters_who_err_apart(TRUTH), method), TRUTH)


@pytest.mark.parametrize("method", ["staple", "majority"])
def test_one_rater_painting_a_band_wrong_is_outvoted(method):
    bad = TRUTH.copy()
    bad[:, 32:] = 3  # a whole band of "nerve" that the two others leave empty
    bad[5:15, 5:20] = 0  # and no femur at all
    np.testing.assert_array_equal(fuse([TRUTH, bad, TRUTH], method), TRUTH)


@pytest.mark.parametrize("method", ["staple", "majority"])
def test_two_raters_who_agree_are_the_consensus(method):
    a = three_raters_who_err_apart(TRUTH)[0]
    np.testing.assert_array_equal(fuse([a, a.copy()], method), a)


def test_two_raters_majority_is_their_intersection_structure_by_structure():
    a = box(SHAPE, {1: (5, 15, 5, 20), 3: (18, 26, 10, 30)})
    b = box(SHAPE, {1: (7, 17, 8, 22), 3: (18, 26, 14, 34)})
    b[10, 10] = 3  # where a says femur and b nerve: a tie, background
    want = np.zeros(SHAPE, np.uint8)
    want[7:15, 8:20] = 1  # rows 7-14, columns 8-19: inside both femurs
    want[18:26, 14:30] = 3
    want[10, 10] = 0
    np.testing.assert_array_equal(fuse([a, b], "majority"), want)


def test_make_consensus_stores_the_truth_for_every_image(ws, tmp_path):
    """Three images, three raters erring apart (the truth and an artery of each image's
    own): the stored
    consensus of both methods is the truth of each image; rater:NAME is that rater's map."""
    truths = []
    for k in (0, 3, 6):  # each image also has an artery of its own, where nobody errs
        truth = TRUTH.copy()
        truth[2:8, 25 + k : 31 + k] = 6
        truths.append(truth)
    files = [
        write_us(tmp_path / "d" / f"{k}.dcm", np.full(SHAPE, 90, np.uint8), patient_id=f"C{k}")
        for k in range(3)
    ]
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    for name in ("r1", "r2", "r3"):
        add_rater(ws, name)
    image_of = {}
    with ws.session() as s:
        for path, truth in zip(files, truths):
            image = image_for_dicom(s, ws.key, path)
            image_of[image.id] = truth
            for name, mask in zip(("r1", "r2", "r3"), three_raters_who_err_apart(truth)):
                store_annotation(s, ws.store, image, get_rater(s, name), mask, "itksnap", None,
                                 protocol)  # fmt: skip
    for method in ("staple", "majority"):
        report = make_consensus(ws, method)
        assert (report.images, report.new_versions, report.raters) == (3, 3, ["r1", "r2", "r3"])
        with ws.session() as s:
            stored = s.scalars(
                select(Annotation).where(Annotation.rater.has(name=f"consensus:{method}"))
            ).all()
            assert len(stored) == 3
            for ann in stored:
                np.testing.assert_array_equal(
                    ws.store.get_array(ann.mask_hash), image_of[ann.image_id]
                )
    make_consensus(ws, "rater:r2")
    with ws.session() as s:
        for ann in s.scalars(
            select(Annotation).where(Annotation.rater.has(name="consensus:rater:r2"))
        ):
            want = three_raters_who_err_apart(image_of[ann.image_id])[1]
            np.testing.assert_array_equal(ws.store.get_array(ann.mask_hash), want)


def two_raters_staple_cannot_decide() -> tuple[list[np.ndarray], np.ndarray]:
    """Two raters who agree everywhere but on a 2x3 block that one calls femur and the other
    nerve: two equally reliable raters, one vote each, so STAPLE has no way to choose (its
    posteriors tie: an undecided pixel). The answer by hand: the block is background."""
    a = TRUTH.copy()
    b = TRUTH.copy()
    b[8:10, 10:13] = 3  # inside a's femur (rows 5-14, columns 5-19)
    want = TRUTH.copy()
    want[8:10, 10:13] = 0
    return [a, b], want


def test_staple_leaves_pixels_undecided_between_two_raters_and_they_are_background():
    import SimpleITK as sitk

    masks, want = two_raters_staple_cannot_decide()
    # the case is what it says: SimpleITK's STAPLE, asked to mark undecided pixels 255,
    # marks exactly the six pixels of the block
    marked = sitk.GetArrayFromImage(
        sitk.MultiLabelSTAPLE([sitk.GetImageFromArray(m) for m in masks], 255)
    )
    assert int((marked == 255).sum()) == 6 and (marked[8:10, 10:13] == 255).all()
    fused = fuse(masks, "staple")
    np.testing.assert_array_equal(fused, want)
    assert set(np.unique(fused).tolist()) == {0, 1, 3}


def test_make_consensus_stores_staples_undecided_pixels_as_background(ws, tmp_path):
    write_us(tmp_path / "d" / "u.dcm", np.full(SHAPE, 90, np.uint8), patient_id="U1")
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    masks, want = two_raters_staple_cannot_decide()
    for name in ("r1", "r2"):
        add_rater(ws, name)
    with ws.session() as s:
        image = image_for_dicom(s, ws.key, tmp_path / "d" / "u.dcm")
        for name, mask in zip(("r1", "r2"), masks):
            store_annotation(s, ws.store, image, get_rater(s, name), mask, "itksnap", None,
                             protocol)  # fmt: skip
    assert make_consensus(ws, "staple").new_versions == 1
    with ws.session() as s:
        (ann,) = s.scalars(
            select(Annotation).where(Annotation.rater.has(name="consensus:staple"))
        ).all()
        np.testing.assert_array_equal(ws.store.get_array(ann.mask_hash), want)


def test_the_consensus_names_and_what_it_was_made_from_word_for_word():
    from types import SimpleNamespace

    from datatool.analysis.consensus import _fused_ref, consensus_rater_name, fused_annotation_ids

    assert consensus_rater_name("staple") == "consensus:staple"
    anns = [SimpleNamespace(id=3, version=1), SimpleNamespace(id=12, version=2)]
    ref = _fused_ref("majority", anns)  # type: ignore[arg-type]
    assert ref == "majority of annotation 3 (v1), annotation 12 (v2)"
    assert fused_annotation_ids(ref) == [3, 12]
    assert fused_annotation_ids(None) == [] and fused_annotation_ids("itksnap: a.nii.gz") == []


def test_fusing_one_map_copies_it_and_an_unknown_method_is_refused():
    from datatool.core.errors import UsageError

    one = TRUTH.copy()
    fused = fuse([one], "staple")
    np.testing.assert_array_equal(fused, TRUTH)
    fused[0, 0] = 6
    assert one[0, 0] == 0  # a copy, not the rater's own map
    wide = [TRUTH.astype(np.int64), TRUTH.astype(np.int64)]
    out = fuse(wide, "majority")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, TRUTH)
    with pytest.raises(UsageError) as caught:
        fuse([TRUTH, TRUTH], "mean")
    assert str(caught.value) == "unknown fusion method 'mean'"


def test_which_labels_are_fused_counted_and_recorded_by_hand(ws, tmp_path):
    """Three images. Image 0: r1, r2 and r3 (erring apart). Image 1: r1 alone. Image 2: r1,
    and r2 on a gold-standard task (left out unless asked). By majority of every human
    rater: image 0 fused (1 image, 1 new version), images 1 and 2 have one label each (2
    skipped), 1 gold label left out; progress after each image fused, (1, 1). With the gold
    label: images 0 and 2 fused, image 1 skipped. The raters asked for alone (r1, r2): their
    majority of image 0 is their intersection, made from their two annotations; r3 is not
    named. The run is audited with its counts; a model rater is never a source. The raters
    are registered r2, r3, r1 and reported by name."""
    from datatool.core.catalogue import AuditEntry, GoldTask, Rater
    from datatool.core.errors import DatatoolError, UsageError

    files = [
        write_us(tmp_path / "d" / f"{k}.dcm", np.full(SHAPE, 90, np.uint8), patient_id=f"G{k}")
        for k in range(3)
    ]
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    for name in ("r2", "r3", "r1"):  # registered out of order: reported by name
        add_rater(ws, name)
    add_rater(ws, "model:x", kind="model")
    a, b, c = three_raters_who_err_apart(TRUTH)
    with ws.session() as s:
        images = [image_for_dicom(s, ws.key, f) for f in files]
        ids = [i.id for i in images]

        def put(image, name, mask):
            rater = get_rater(s, name)
            return store_annotation(s, ws.store, image, rater, mask, "itksnap", None, protocol)

        for name, mask in (("r1", a), ("r2", b), ("r3", c), ("model:x", TRUTH)):
            put(images[0], name, mask)
        put(images[1], "r1", a)
        put(images[1], "model:x", a)
        reference = put(images[2], "r1", a)
        put(images[2], "r2", b)
        s.add(GoldTask(rater_id=get_rater(s, "r2").id, image_id=ids[2], tool="itksnap", seed=1,
                       reference_annotation_id=reference.annotation_id))  # fmt: skip
    calls = []
    report = make_consensus(ws, "majority", progress=lambda *x: calls.append(x), quality=False)
    assert (report.method, report.reference_rater, report.raters) == (
        "majority", "consensus:majority", ["r1", "r2", "r3"])  # fmt: skip
    assert (report.images, report.new_versions, report.unchanged) == (1, 1, 0)
    assert (report.skipped_too_few_raters, report.gold_left_out) == (2, 1)
    assert calls == [(1, 1)]
    with ws.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.command == "consensus")).one()
        assert (entry.action, entry.details) == ("consensus", {
            "method": "majority", "images": 1, "new_versions": 1, "unchanged": 0,
            "needs_adjudication": [], "raters": ["r1", "r2", "r3"]})  # fmt: skip
        target = s.scalars(select(Rater).where(Rater.name == "consensus:majority")).one()
        assert target.kind == "consensus"
    calls.clear()
    report = make_consensus(ws, "majority", progress=lambda *x: calls.append(x),
                            include_gold=True, quality=False)  # fmt: skip
    assert (report.images, report.new_versions, report.unchanged) == (2, 1, 1)
    assert (report.skipped_too_few_raters, report.gold_left_out) == (1, 0)
    assert calls == [(1, 2), (2, 2)]
    with ws.session() as s:
        ann = s.scalars(
            select(Annotation).where(
                Annotation.rater.has(name="consensus:majority"), Annotation.image_id == ids[2]
            )
        ).one()
        want = np.where(a == b, a, 0)  # two raters: a pixel they disagree on is background
        np.testing.assert_array_equal(ws.store.get_array(ann.mask_hash), want)
    pair = make_consensus(ws, "staple", raters=["r2", "r1"])
    assert pair.raters == ["r2", "r1"] and (pair.images, pair.skipped_too_few_raters) == (1, 2)
    # their quality: by structure in the protocol's order, then by rater name
    assert [(q.structure, q.rater, q.images) for q in pair.quality] == [
        ("femur", "r1", 1), ("femur", "r2", 1), ("sciatic nerve", "r1", 1),
        ("sciatic nerve", "r2", 1)]  # fmt: skip
    with ws.session() as s:
        (ann,) = s.scalars(
            select(Annotation).where(Annotation.rater.has(name="consensus:staple"))
        ).all()
        r1, r2 = (
            s.scalars(
                select(Annotation).where(
                    Annotation.rater.has(name=n), Annotation.image_id == ids[0]
                )
            ).one()
            for n in ("r1", "r2")
        )
        assert (ann.image_id, ann.source) == (ids[0], "consensus")
        # the annotations in the order their raters were registered (r2 first)
        assert ann.source_ref == f"staple of annotation {r2.id} (v1), annotation {r1.id} (v1)"
    # a rater whose name holds a colon, as a name may: rater:NAME is all after the first
    add_rater(ws, "dr:x")
    with ws.session() as s:
        put = store_annotation(s, ws.store, s.get(type(images[1]), ids[1]), get_rater(s, "dr:x"),
                               c, "itksnap", None, protocol)  # fmt: skip
    single = make_consensus(ws, "rater:dr:x")
    assert (single.raters, single.images, single.new_versions) == (["dr:x"], 1, 1)
    with ws.session() as s:
        (ann,) = s.scalars(
            select(Annotation).where(Annotation.rater.has(name="consensus:rater:dr:x"))
        ).all()
        assert (
            ann.image_id == ids[1]
            and ann.source_ref == f"rater:dr:x of annotation {put.annotation_id} (v1)"
        )
        np.testing.assert_array_equal(ws.store.get_array(ann.mask_hash), c)
    with pytest.raises(UsageError) as caught:
        make_consensus(ws, "mean")
    assert str(caught.value) == "--method must be staple, majority or rater:NAME, not 'mean'"
    with pytest.raises(DatatoolError) as caught:
        make_consensus(ws, "staple", raters=["r3"])
    assert str(caught.value) == (
        "consensus by staple needs labels of at least 2 raters; 1 registered (datatool rater add)"
    )


def test_majority_counts_votes_where_staple_weighs_the_raters(ws, tmp_path):
    """r1 labels the femur alone (150 px); r2 and r3 also label the same 8 px below it (Z)
    and each a band of 150 px nobody else labels. Majority: Z has 2 votes of 3, so the
    femur and Z (158 px); the bands, 1 vote each, are background. STAPLE estimates r2 and r3
    as the less specific raters and r1's sensitivity as 1, so a pixel r1 leaves out is
    background to it even where the other two agree: the femur alone."""
    femur = box((40, 50), {1: (5, 15, 5, 20)})
    r2, r3 = femur.copy(), femur.copy()
    for m in (r2, r3):
        m[20:22, 25:29] = 1  # Z
    r2[25:40, 0:10] = 1
    r3[25:40, 30:40] = 1
    with_z = femur.copy()
    with_z[20:22, 25:29] = 1
    path = write_us(tmp_path / "d" / "v.dcm", np.full((40, 50), 90, np.uint8), patient_id="V1")
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    for name in ("r1", "r2", "r3"):
        add_rater(ws, name)
    with ws.session() as s:
        image = image_for_dicom(s, ws.key, path)
        for name, mask in (("r1", femur), ("r2", r2), ("r3", r3)):
            store_annotation(s, ws.store, image, get_rater(s, name), mask, "itksnap", None,
                             protocol)  # fmt: skip
    for method, want in (("majority", with_z), ("staple", femur)):
        assert make_consensus(ws, method, quality=False).new_versions == 1
        with ws.session() as s:
            (ann,) = s.scalars(
                select(Annotation).where(Annotation.rater.has(name=f"consensus:{method}"))
            ).all()
            np.testing.assert_array_equal(ws.store.get_array(ann.mask_hash), want)
