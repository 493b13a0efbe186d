"""3D Slicer segmentations (labels.itksnap.slicer): .seg.nrrd files written by slicerio itself,
read by segment name into the protocol's values, layered or not; the colour table export
writes; and sync of such files on the demo study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from sqlalchemy import func, select

from datatool.core.catalogue import Annotation
from datatool.core.protocol import Protocol, Structure, load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.export import export_itksnap
from datatool.labels.itksnap.formats import read_label_file
from datatool.labels.itksnap.slicer import SLICER_COLORS_FILE, color_table, read_segments
from datatool.labels.itksnap.sync import sync_itksnap
from datatool.labels.masks import BadLabel
from datatool.labels.matching import image_for_dicom

PROTOCOL = load_protocol("anterior_sciatic")
W, H = 10, 7


def _write(path: Path, segments: list[tuple[str, np.ndarray]], spacing=(0.2, 0.3)) -> Path:
    """A .seg.nrrd written by slicerio: one segment per (name, H x W bool mask), in the given
    order; slicerio puts overlapping segments in further layers (4-D), as Slicer does."""
    seg = slicerio.create_segmentation(
        (segments[0][1].shape[1], segments[0][1].shape[0], 1),
        np.diag([spacing[0], spacing[1], 1.0, 1.0]),
    )
    for name, mask in segments:
        slicerio.add_segment(seg, mask.T[:, :, np.newaxis], {"name": name})
    slicerio.write_segmentation(str(path), seg)
    return path


def _box(r0, r1, c0, c1, shape=(H, W)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def test_segments_in_another_order_map_to_the_protocols_values_by_name(tmp_path):
    """Slicer numbers segments 1, 2, 3 in the order they were made; the map holds the
    protocol's values (artery 6, nerve 3, femur 1) at each segment's pixels, whatever the
    names' case or separators."""
    artery, nerve, femur = _box(0, 2, 0, 3), _box(3, 5, 4, 7), _box(5, 7, 0, 2)
    path = _write(
        tmp_path / "a.seg.nrrd",
        [("Femoral Artery", artery), ("sciatic_nerve", nerve), ("FEMUR", femur)],
    )
    header = path.read_bytes()[:2000].decode("latin-1")
    assert "Segment0_LabelValue:=1" in header and "Segment2_LabelValue:=3" in header
    assert "dimension: 3" in header  # no overlap: one layer
    label = read_label_file(path, shape=(H, W), protocol=PROTOCOL)
    expected = np.zeros((H, W), np.uint8)
    expected[artery], expected[nerve], expected[femur] = 6, 3, 1
    assert np.array_equal(label.array, expected)
    assert label.spacing == pytest.approx((0.2, 0.3)) and label.notes == []
    # the same file without a protocol is a plain NRRD of Slicer's values (1, 2, 3)
    plain = read_label_file(path, shape=(H, W)).array
    assert plain[artery].tolist() == [1] * artery.sum() and plain[femur].max() == 3


@pytest.mark.parametrize("order", ["nerve first", "muscle first"])
def test_a_layered_file_is_painted_in_the_protocols_order_whichever_segment_came_first(
    tmp_path, order
):
    muscle, nerve, artery = _box(1, 6, 1, 8), _box(2, 4, 2, 5), _box(3, 5, 4, 6)
    segments = [("adductor magnus muscle", muscle), ("Nerve", nerve), ("FA", artery)]
    if order == "nerve first":
        segments = segments[::-1]
    path = _write(tmp_path / "layered.seg.nrrd", segments)
    assert "dimension: 4" in path.read_bytes()[:400].decode("latin-1")  # overlaps: layers
    label = read_label_file(path, shape=(H, W), protocol=PROTOCOL)
    # paint order: adductor magnus, ..., sciatic nerve, femoral artery (the last wins)
    expected = np.zeros((H, W), np.uint8)
    expected[muscle] = 2
    expected[nerve] = 3
    expected[artery] = 6
    assert np.array_equal(label.array, expected)
    nerve_under_artery = int((nerve & artery).sum())
    muscle_under_artery = int(artery.sum()) - nerve_under_artery
    assert sorted(label.notes) == sorted(
        [
            f"adductor magnus and sciatic nerve overlap on {int(nerve.sum())} px: sciatic "
            "nerve wins (painted later in the protocol's paint order)",
            f"adductor magnus and femoral artery overlap on {muscle_under_artery} px: "
            "femoral artery wins (painted later in the protocol's paint order)",
            f"sciatic nerve and femoral artery overlap on {nerve_under_artery} px: femoral "
            "artery wins (painted later in the protocol's paint order)",
        ]
    )


def test_a_protocols_paint_order_decides_and_defaults_to_its_listing(tmp_path):
    a, b = _box(0, 4, 0, 5), _box(2, 6, 3, 8)
    path = _write(tmp_path / "ab.seg.nrrd", [("first", a), ("second", b)])
    listed = Protocol(
        "t", "", (Structure("first", 1, (1, 1, 1)), Structure("second", 2, (2, 2, 2)))
    )
    assert read_label_file(path, protocol=listed).array[a & b].tolist() == [2] * (a & b).sum()
    reversed_ = Protocol("t", "", listed.structures, paint_order=("second", "first"))
    assert read_label_file(path, protocol=reversed_).array[a & b].tolist() == [1] * (a & b).sum()


def test_an_unknown_segment_name_refuses_the_file_in_one_line_naming_it(tmp_path):
    path = _write(
        tmp_path / "u.seg.nrrd",
        [("sciatic nerve", _box(0, 2, 0, 2)), ("Segment_2", _box(3, 5, 3, 5))],
    )
    with pytest.raises(BadLabel) as caught:
        read_label_file(path, shape=(H, W), protocol=PROTOCOL)
    text = str(caught.value)
    assert "'Segment_2'" in text and "not in protocol anterior_sciatic" in text
    assert "file not stored" in text and "\n" not in text and "'sciatic nerve'" not in text


def test_a_segment_of_another_size_or_a_cine_volume_is_refused_from_the_header(tmp_path):
    path = _write(tmp_path / "s.seg.nrrd", [("femur", _box(0, 2, 0, 2))])
    with pytest.raises(BadLabel, match="size mismatch: label map is 10x7, the image is 8x7"):
        read_label_file(path, shape=(H, 8), protocol=PROTOCOL)
    seg = slicerio.create_segmentation((W, H, 3), np.eye(4))
    slicerio.add_segment(seg, np.ones((W, H, 3), bool), {"name": "femur"})
    slicerio.write_segmentation(str(tmp_path / "v.seg.nrrd"), seg)
    with pytest.raises(BadLabel, match="10 x 7 x 3 volume"):
        read_label_file(tmp_path / "v.seg.nrrd", protocol=PROTOCOL)


def test_read_segments_paints_every_slice_of_a_volume(tmp_path):
    """A cine's segmentation (W x H x N, layered): each slice painted on its own, in paint
    order (the label map reader above takes one slice; this is the part a cine reuses)."""
    muscle = np.zeros((W, H, 3), bool)
    nerve = np.zeros((W, H, 3), bool)
    muscle[1:8, 1:6, :] = True
    nerve[2:4, 2:4, 1] = True  # the nerve only in the middle slice
    seg = slicerio.create_segmentation((W, H, 3), np.eye(4))
    slicerio.add_segment(seg, nerve, {"name": "sciatic nerve"})
    slicerio.add_segment(seg, muscle, {"name": "adductor magnus"})
    slicerio.write_segmentation(str(tmp_path / "c.seg.nrrd"), seg)
    painted = read_segments(tmp_path / "c.seg.nrrd", PROTOCOL)
    expected = np.where(muscle, 2, 0).astype(np.uint8)
    expected[nerve] = 3
    assert np.array_equal(painted.array, expected)
    assert painted.notes == [
        "adductor magnus and sciatic nerve overlap on 4 px: sciatic nerve wins (painted "
        "later in the protocol's paint order)"
    ]


def test_voxels_no_segment_claims_and_unreadable_headers_are_one_line(tmp_path):
    path = _write(tmp_path / "x.seg.nrrd", [("femur", _box(0, 2, 0, 2))])
    seg = slicerio.read_segmentation(str(path))
    seg["voxels"][5, 5, 0] = 7  # a value no segment's header claims
    slicerio.write_segmentation(str(path), seg)
    with pytest.raises(BadLabel, match=r"layer 0 holds value\(s\) 7 that no segment"):
        read_label_file(path, protocol=PROTOCOL)
    broken = tmp_path / "b.seg.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2\nSegment0_Name:=x\n\n")
    with pytest.raises(BadLabel) as caught:
        read_label_file(broken, protocol=PROTOCOL)
    assert "\n" not in str(caught.value)


def test_a_flipped_slicer_segmentation_is_turned_to_the_images_orientation(tmp_path):
    """Slicer stores what it was given; a segmentation whose i axis runs right to left
    (negative x direction) comes back in the orientation datatool writes."""
    nerve = _box(1, 3, 0, 2)  # top left in the image
    seg = slicerio.create_segmentation(
        (W, H, 1), np.array([[-1.0, 0, 0, W - 1.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    )
    slicerio.add_segment(seg, nerve[:, ::-1].T[:, :, None], {"name": "sciatic nerve"})
    slicerio.write_segmentation(str(tmp_path / "f.seg.nrrd"), seg)
    label = read_label_file(tmp_path / "f.seg.nrrd", shape=(H, W), protocol=PROTOCOL)
    assert np.array_equal(label.array == 3, nerve) and label.reoriented == ["flipped along x"]


def test_color_table_is_slicers_ctbl_format():
    text = color_table(PROTOCOL)
    lines = text.splitlines()
    assert lines[0] == f"# Color table file {SLICER_COLORS_FILE}"
    assert lines[1] == f"# {len(PROTOCOL.structures) + 1} values"
    rows = [line.split() for line in lines[2:]]
    assert rows[0] == ["0", "Background", "0", "0", "0", "0"]
    assert all(len(r) == 6 for r in rows)  # value name R G B A: names have no spaces
    by_value = {int(r[0]): r for r in rows[1:]}
    for s in PROTOCOL.structures:
        assert by_value[s.value][1] == s.name.replace(" ", "_")
        assert [int(c) for c in by_value[s.value][2:]] == [*s.color, 255]
        # a segment named as the table names it reads back as that structure
        assert PROTOCOL.by_segment_name(by_value[s.value][1]) is s


# --------------------------------------------------------------------------- sync


def test_sync_reads_slicer_files_by_segment_name_and_refuses_unknown_names(ws, demo_dir, tmp_path):
    """Each demo label map written as a slicerio segmentation, segments in reverse protocol
    order under aliases, mirroring the DICOM tree (matched as NIfTI files are): stored masks
    equal the demo's own. One file with an unknown segment: one line naming file and
    segment, nothing stored for its image. A re-run is a no-op."""
    ingest(ws, [demo_dir / "dicom"], workers=0)
    add_rater(ws, "rater1")
    names = {1: "Femur", 2: "AM", 3: "Sciatic-Nerve", 4: "semitendinosus muscle", 6: "artery"}
    out = tmp_path / "slicer"
    expected = {}
    label_files = sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))
    bad_rel = None
    for k, f in enumerate(label_files):
        rel = f.relative_to(demo_dir / "labels" / "rater1")
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.uint8)
        mask = mask.reshape(mask.shape[-2:])
        target = out / str(rel).replace(".nii.gz", ".seg.nrrd")
        target.parent.mkdir(parents=True, exist_ok=True)
        segments = [(names[v], mask == v) for v in sorted(np.unique(mask), reverse=True) if v]
        if k == 0:
            segments.append(("tumour", np.zeros_like(mask, bool)))
            bad_rel = target
        _write(target, segments, spacing=(1.0, 1.0))
        with ws.session() as s:
            dicom = demo_dir / "dicom" / str(rel).replace(".nii.gz", ".dcm")
            expected[image_for_dicom(s, ws.key, dicom).id] = (mask, k == 0)
    report = sync_itksnap(ws, out, "rater1", dicom_root=demo_dir / "dicom")
    assert report.rejected == [
        (
            str(bad_rel),
            "segment 'tumour' is not in protocol anterior_sciatic (it knows femur, adductor "
            "magnus, sciatic nerve, semitendinosus, femoral artery and their aliases, in any "
            "case): file not stored; rename the segment in Slicer",
        )
    ]
    assert report.new_versions == len(label_files) - 1
    with ws.session() as s:
        stored = {a.image_id: a for a in s.scalars(select(Annotation))}
        for image_id, (mask, bad) in expected.items():
            if bad:
                assert image_id not in stored
            else:
                assert np.array_equal(ws.store.get_array(stored[image_id].mask_hash), mask)
    again = sync_itksnap(ws, out, "rater1", dicom_root=demo_dir / "dicom")
    assert (again.new_versions, again.unchanged) == (0, len(label_files) - 1)
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Annotation)) == len(label_files) - 1


def test_export_writes_the_colour_table_and_sync_of_a_slicer_file_in_it_notes_overlaps(
    ws, demo_dir, tmp_path
):
    ingest(ws, [demo_dir / "dicom"], workers=0)
    add_rater(ws, "rater1")
    out = tmp_path / "export"
    result = export_itksnap(ws, "rater1", out)
    assert result.colors_file == out / SLICER_COLORS_FILE
    assert (out / SLICER_COLORS_FILE).read_text() == color_table(PROTOCOL)
    folder = sorted(p for p in out.iterdir() if p.is_dir())[0]
    image = sitk.ReadImage(str(folder / f"{folder.name}.nii.gz"))
    width, height = image.GetSize()[:2]
    muscle = _box(100, 200, 100, 300, (height, width))
    nerve = _box(150, 170, 150, 180, (height, width))
    seg_file = folder / f"{folder.name}_seg.nii.gz"
    seg_file.unlink()  # the rater saved the segmentation from Slicer instead
    _write(
        folder / f"{folder.name}_seg.seg.nrrd",
        [("Sciatic Nerve", nerve), ("Adductor Magnus", muscle)],
        spacing=image.GetSpacing()[:2],
    )
    report = sync_itksnap(ws, out, "rater1")
    assert report.rejected == [] and report.new_versions == 1
    notes = [n for _, n in report.notes]
    assert any(
        f"adductor magnus and sciatic nerve overlap on {int(nerve.sum())} px: sciatic nerve" in n
        for n in notes
    )
    assert not any(".ctbl" in n for n in notes)  # the colour table is no stray file
    with ws.session() as s:
        ann = s.scalar(select(Annotation))
        mask = ws.store.get_array(ann.mask_hash)
    assert (mask == 3).sum() == nerve.sum() and (mask == 2).sum() == muscle.sum() - nerve.sum()
