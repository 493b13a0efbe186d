"""The ITK-SNAP format adapter: NIfTI images and segmentations, workspaces, label maps read
back (datatool.labels.itksnap.formats)."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

from datatool.core.protocol import load_protocol
from datatool.labels.itksnap.formats import (
    geometry_notes,
    label_suffix,
    read_label_file,
    read_label_map,
    spacing_mm,
    strip_label_suffix,
    workspace_layers,
    write_image,
    write_segmentation,
    write_workspace,
)
from datatool.labels.masks import BadLabel

P = load_protocol()


def _mask(rows: int = 48, cols: int = 64) -> np.ndarray:
    """A label map whose rows and columns are all different, so any flip or transpose shows."""
    mask = np.zeros((rows, cols), np.uint8)
    mask[0, :5] = 1  # top row, left
    mask[5:12, 40:60] = 3
    mask[-1, -1] = 6  # bottom right corner
    mask[20:30, 2] = 4
    mask[33, 10:20] = 2
    return mask


def test_segmentation_round_trip_is_exact_and_row_0_is_the_top(tmp_path):
    mask = _mask()
    path = tmp_path / "a_seg.nii.gz"
    write_segmentation(path, mask, (0.1, 0.125))
    back = read_label_map(path)
    assert back.dtype == np.uint8 and back.shape == mask.shape
    np.testing.assert_array_equal(back, mask)
    image = sitk.ReadImage(str(path))  # what ITK-SNAP sees: x to the right, y down
    assert image.GetSize() == (64, 48)
    assert image.GetPixel(0, 0) == 1 and image.GetPixel(63, 47) == 6 and image.GetPixel(2, 25) == 4
    assert image.GetSpacing() == pytest.approx((0.1, 0.125))
    assert image.GetOrigin() == (0.0, 0.0)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 1.0)
    assert sitk.GetArrayFromImage(image).dtype == np.uint8


def test_itksnap_saves_2d_as_w_h_1_and_it_reads_back_the_same(tmp_path):
    mask = _mask()
    write_segmentation(tmp_path / "a.nii.gz", mask, (0.2, 0.2))
    as_saved = sitk.JoinSeries(sitk.ReadImage(str(tmp_path / "a.nii.gz")))  # W x H x 1
    assert as_saved.GetSize() == (64, 48, 1)
    sitk.WriteImage(as_saved, str(tmp_path / "b.nii.gz"), True)
    np.testing.assert_array_equal(read_label_map(tmp_path / "b.nii.gz"), mask)


def test_image_is_written_with_true_mm_size_and_same_bytes_each_time(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    write_image(tmp_path / "i.nii.gz", pixels, spacing_mm(0.21, 0.22))
    write_image(tmp_path / "j.nii.gz", pixels, spacing_mm(0.21, 0.22))
    image = sitk.ReadImage(str(tmp_path / "i.nii.gz"))
    assert image.GetSpacing() == pytest.approx((0.21, 0.22))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), pixels)
    assert (tmp_path / "i.nii.gz").read_bytes() == (tmp_path / "j.nii.gz").read_bytes()
    assert spacing_mm(None, None) == (1.0, 1.0) and spacing_mm(0.3, None) == (1.0, 1.0)
    with pytest.raises(ValueError):
        write_image(tmp_path / "f.nii.gz", pixels.astype(float), (1.0, 1.0))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("suffix", [".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd"])
def test_other_formats_read_back_exactly(tmp_path, suffix):
    mask = _mask()
    image = sitk.GetImageFromArray(mask)
    image.SetSpacing((0.3, 0.3))
    path = tmp_path / f"label{suffix}"
    sitk.WriteImage(image, str(path), True)
    np.testing.assert_array_equal(read_label_map(path), mask)


def test_label_suffixes():
    assert label_suffix("a.seg.nrrd") == ".seg.nrrd" and label_suffix("A.NII.GZ") == ".nii.gz"
    assert label_suffix("x.nrrd") == ".nrrd" and label_suffix("x.mhd") == ".mhd"
    assert label_suffix("x.png") is None and label_suffix(".nii.gz") is None
    assert strip_label_suffix("L_01.nii.gz") == "L_01" and strip_label_suffix("a.b.mha") == "a.b"


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected reason pattern)."""
    mask = _mask()
    good = tmp / "good.nii.gz"
    write_segmentation(good, mask, (1.0, 1.0))
    files = {}

    def add(name, data, pattern):
        (tmp / name).write_bytes(data)
        files[name] = (tmp / name, pattern)

    PILImage.fromarray(mask).save(tmp / "real.png")
    add("png.nii.gz", (tmp / "real.png").read_bytes(), "not a NIfTI file: it looks like a PNG")
    add("notes.nii.gz", b"rater notes, not a label map\n", "not a NIfTI file: it looks like a text")
    add("empty.nii.gz", b"", "empty file")
    data = good.read_bytes()
    add("cut.nii.gz", data[: len(data) // 2], "cut short")
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp / "plain.nii"))
    add("cut.nii", (tmp / "plain.nii").read_bytes()[:-100], "cut short")
    add("text.nrrd", b"hello\n", "not a NRRD file")
    add("text.mha", b"hello\n", "not a MetaImage file")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 9), np.uint8)), str(tmp / "vol.nii.gz"))
    files["vol.nii.gz"] = (tmp / "vol.nii.gz", r"9 x 8 x 3 volume; expected a 2D map")
    rgb = sitk.GetImageFromArray(np.zeros((8, 9, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp / "rgb.nii.gz"))
    files["rgb.nii.gz"] = (tmp / "rgb.nii.gz", "3 values per pixel")
    files["real.png"] = (tmp / "real.png", "not a label map file")
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp / "lost.mhd"))
    (tmp / "lost.raw").unlink()
    files["lost.mhd"] = (tmp / "lost.mhd", "not a readable MetaImage file")
    return files


def test_bad_files_are_refused_with_one_line_each(tmp_path):
    for name, (path, pattern) in _bad_files(tmp_path).items():
        with pytest.raises(BadLabel, match=pattern) as info:
            read_label_map(path)
        assert "\n" not in str(info.value), name
    with pytest.raises(BadLabel, match="cannot read"):
        read_label_map(tmp_path / "missing.nii.gz")


def test_cut_gzip_with_an_odd_size_trailer_is_checked_in_full(tmp_path):
    """A valid file whose gzip trailer does not give the NIfTI size (a second gzip member) is
    still accepted, through the full decompression check."""
    mask = _mask()
    write_segmentation(tmp_path / "a.nii.gz", mask, (1.0, 1.0))
    import gzip

    with open(tmp_path / "a.nii.gz", "ab") as handle:
        handle.write(gzip.compress(b"x"))  # a second member: ITK ignores it
    np.testing.assert_array_equal(read_label_map(tmp_path / "a.nii.gz"), mask)


def _itksnap_resolves(workspace: Path) -> dict[str, Path]:
    """ITK-SNAP's own rule (IRISApplication::OpenProject) for finding a layer's file: when the
    workspace's folder is not its SaveLocation, take the part of the layer path below
    SaveLocation and look for it beside the workspace file."""
    root = ET.parse(workspace).getroot()
    saved = root.find("./entry[@key='SaveLocation']").get("value")
    folder = str(workspace.parent.resolve())
    found = {}
    for layer in root.iterfind("./folder[@key='Layers']/folder"):
        entries = {e.get("key"): e.get("value") for e in layer.iterfind("entry")}
        path = entries["AbsolutePath"]
        if saved != folder and path.startswith(saved):
            moved = Path(folder) / path[len(saved) :].lstrip("/")
            if moved.is_file():
                path = str(moved)
        found[entries["Role"]] = Path(path)
    return found


def test_workspace_lists_both_layers_relative_and_survives_a_move(tmp_path):
    folder = tmp_path / "img000007"
    write_image(folder / "img000007.nii.gz", np.zeros((48, 64), np.uint8), (0.2, 0.2))
    write_segmentation(folder / "img000007_seg.nii.gz", _mask(), (0.2, 0.2))
    ws_file = folder / "img000007.itksnap"
    write_workspace(
        ws_file, folder / "img000007.nii.gz", folder / "img000007_seg.nii.gz", (64, 48), P
    )
    text = ws_file.read_text()
    assert str(tmp_path) not in text  # nothing absolute
    root = ET.fromstring(text.split("]>", 1)[1])
    assert root.find("./entry[@key='Version']") is not None
    layers = root.findall("./folder[@key='Layers']/folder")
    roles = [{e.get("key"): e.get("value") for e in layer.iterfind("entry")} for layer in layers]
    assert [(r["Role"], r["AbsolutePath"]) for r in roles] == [
        ("MainRole", "./img000007.nii.gz"),
        ("SegmentationRole", "./img000007_seg.nii.gz"),
    ]
    table = layers[0].find(
        "./folder[@key='ProjectMetaData']/folder[@key='IRIS']/folder[@key='LabelTable']"
    )
    elements = [
        {e.get("key"): e.get("value") for e in el.iterfind("entry")}
        for el in table.iterfind("folder")
    ]
    assert [(int(e["Index"]), e["Label"]) for e in elements] == [
        (s.value, s.name) for s in P.structures
    ]
    assert elements[0]["Color"] == " ".join(map(str, P.structures[0].color))
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    for where in (folder, moved):
        ws_path = where / "img000007.itksnap"
        expected = {
            "MainRole": where / "img000007.nii.gz",
            "SegmentationRole": where / "img000007_seg.nii.gz",
        }
        assert {k: v.resolve() for k, v in _itksnap_resolves(ws_path).items()} == {
            k: v.resolve() for k, v in expected.items()
        }
        assert workspace_layers(ws_path) == expected
    with pytest.raises(ValueError, match="not in the workspace's folder"):
        write_workspace(
            ws_file, tmp_path / "x.nii.gz", folder / "img000007_seg.nii.gz", (64, 48), P
        )


# --------------------------------------------------------------------------- hostile headers


def _secret(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "secret.raw"
    secret.write_bytes(bytes([7, 9, 11, 13]) * (size // 4))
    return secret


@pytest.mark.parametrize("form", ["relative", "absolute", "list"])
def test_a_detached_nrrd_header_pointing_outside_the_folder_is_refused(tmp_path, form):
    secret = _secret(tmp_path / "outside", 64 * 48)
    labels = tmp_path / "labels"
    labels.mkdir()
    where = {
        "relative": "data file: ../outside/secret.raw\n",
        "absolute": f"data file: {secret}\n",
        "list": f"data file: LIST\n\n{secret}\n",
    }[form]
    header = labels / "x.nrrd"
    header.write_text(
        "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 48\nencoding: raw\n" + where + "\n"
    )
    with pytest.raises(BadLabel, match="outside") as exc:
        read_label_map(header, within=labels)
    # none of the outside file's byte values is echoed (the paths, which may hold digits, aside)
    said = str(exc.value).replace(str(tmp_path), "TMP")
    assert not re.search(r"\b(7|9|11|13)\b", said), said


def test_a_metaimage_whose_data_file_lies_outside_is_refused_inside_is_read(tmp_path):
    secret = _secret(tmp_path / "outside", 64 * 48)
    labels = tmp_path / "labels"
    labels.mkdir()
    head = "ObjectType = Image\nNDims = 2\nDimSize = 64 48\nElementType = MET_UCHAR\n"
    (labels / "out.mhd").write_text(head + f"ElementDataFile = {secret}\n")
    with pytest.raises(BadLabel, match="outside"):
        read_label_map(labels / "out.mhd", within=labels)
    (labels / "also.mha").write_text(head + "ElementDataFile = ../outside/secret.raw\n")
    with pytest.raises(BadLabel, match="outside"):
        read_label_map(labels / "also.mha", within=labels)
    (labels / "sub").mkdir()
    (labels / "sub" / "in.raw").write_bytes(_mask().tobytes())
    (labels / "sub" / "in.mhd").write_text(head + "ElementDataFile = in.raw\n")
    np.testing.assert_array_equal(read_label_map(labels / "sub" / "in.mhd", within=labels), _mask())
    (labels / "pattern.mhd").write_text(head + "ElementDataFile = slice%03d.raw 1 2 1\n")
    with pytest.raises(BadLabel, match="pattern"):
        read_label_map(labels / "pattern.mhd", within=labels)


def _write_oriented(path: Path, array: np.ndarray, direction, origin=(0.0, 0.0), spacing=(1, 1)):
    image = sitk.GetImageFromArray(array)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), True)


def test_a_flipped_direction_is_turned_back_to_the_images_orientation(tmp_path):
    mask = _mask()
    cols = mask.shape[1]
    # the same label map stored flipped along x: index 0 is the right edge
    _write_oriented(
        tmp_path / "fx.nrrd", np.flip(mask, axis=1).copy(), (-1, 0, 0, 1), (cols - 1.0, 0.0)
    )
    label = read_label_file(tmp_path / "fx.nrrd")
    np.testing.assert_array_equal(label.array, mask)
    assert label.reoriented == ["flipped along x"] and label.origin == (0.0, 0.0)
    assert geometry_notes(label, (1.0, 1.0)) == [
        "its direction differs from the image's (flipped along x): turned back to the "
        "image's orientation"
    ]
    # flipped along y and stored with swapped axes
    _write_oriented(tmp_path / "t.nrrd", np.flip(mask, axis=0).T.copy(), (0, 1, -1, 0))
    label = read_label_file(tmp_path / "t.nrrd")
    np.testing.assert_array_equal(label.array, mask)
    assert label.reoriented == ["its axes were swapped", "flipped along y"]


def test_a_rotated_direction_is_refused(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    _write_oriented(tmp_path / "r.nrrd", _mask(), (c, -s, s, c))
    with pytest.raises(BadLabel, match="rotated"):
        read_label_map(tmp_path / "r.nrrd")


def test_spacing_and_origin_that_disagree_are_noted_beyond_a_tolerance(tmp_path):
    write_segmentation(tmp_path / "a.nii.gz", _mask(), (0.2, 0.2))
    label = read_label_file(tmp_path / "a.nii.gz")
    assert geometry_notes(label, (0.2, 0.2)) == []
    assert geometry_notes(label, (0.20001, 0.2)) == []  # within the tolerance
    (spacing,) = geometry_notes(label, (0.3, 0.3))
    assert "spacing 0.2 x 0.2 mm differs from the image's 0.3 x 0.3 mm" in spacing
    _write_oriented(tmp_path / "o.nrrd", _mask(), (1, 0, 0, 1), (5.0, 0.05), (0.2, 0.2))
    (origin,) = geometry_notes(read_label_file(tmp_path / "o.nrrd"), (0.2, 0.2))
    assert "origin (5, 0.05) mm" in origin


def test_a_cines_stack_is_written_and_read_slice_first_and_turned_back_when_flipped(tmp_path):
    from datatool.labels.itksnap.formats import SliceCount, write_volume

    rng = np.random.default_rng(3)
    stack = rng.integers(0, 5, size=(4, 6, 7), dtype=np.uint8)
    path = tmp_path / "cine_seg.nii.gz"
    write_volume(path, stack, (0.2, 0.3))
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (7, 6, 4) and image.GetSpacing() == pytest.approx((0.2, 0.3, 1))
    label = read_label_file(path, shape=(6, 7), slices=(4, 1))
    np.testing.assert_array_equal(label.array, stack)
    assert label.spacing == pytest.approx((0.2, 0.3)) and label.reoriented == []
    # a stack saved with its slices backwards and flipped along x reads back in order
    flipped = sitk.GetImageFromArray(stack[::-1, :, ::-1].copy())
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    back = read_label_file(tmp_path / "flipped.nii.gz", shape=(6, 7), slices=(4,))
    np.testing.assert_array_equal(back.array, stack)
    assert back.reoriented == ["flipped along x", "its slices ran backwards"]
    # the slice count is checked from the header; a 2D read refuses the stack as before
    with pytest.raises(SliceCount) as caught:
        read_label_file(path, shape=(6, 7), slices=(8, 1))
    assert (caught.value.count, caught.value.expected) == (4, (8, 1))
    with pytest.raises(BadLabel, match=r"7 x 6 x 4 volume; expected a 2D map \(W x H, or"):
        read_label_file(path, shape=(6, 7))
    write_volume(tmp_path / "one.nii.gz", stack[:1], (1.0, 1.0))
    assert read_label_file(tmp_path / "one.nii.gz", slices=(4, 1)).array.shape == (1, 6, 7)


def test_a_plain_nifti_headers_size_is_read_without_itk(tmp_path):
    """Issue 26: a plain scalar NIfTI map's size comes from the header datatool parses
    anyway (ITK does not read the header a second time); anything else goes to ITK."""
    import gzip

    from datatool.labels.itksnap.formats import _nifti_plain_size

    def header(image: sitk.Image, name: str) -> bytes:
        path = tmp_path / name
        sitk.WriteImage(image, str(path), True)
        return gzip.decompress(path.read_bytes())[:1024]

    flat = np.zeros((1, 30, 40), np.uint8)
    assert _nifti_plain_size(header(sitk.GetImageFromArray(flat), "a.nii.gz")) == (40, 30, 1)
    wide = sitk.GetImageFromArray(np.zeros((30, 40), np.uint16))
    assert _nifti_plain_size(header(wide, "b.nii.gz")) == (40, 30)
    rgb = sitk.GetImageFromArray(np.zeros((30, 40, 3), np.uint8), isVector=True)
    assert _nifti_plain_size(header(rgb, "c.nii.gz")) is None
    four = sitk.GetImageFromArray(np.zeros((2, 1, 30, 40), np.uint8))
    assert _nifti_plain_size(header(four, "d.nii.gz")) is None
    assert _nifti_plain_size(b"\0" * 400) is None
    # read through the parsed size: the map, and a size mismatch refused before decoding
    sitk.WriteImage(sitk.GetImageFromArray(flat + 2), str(tmp_path / "e.nii.gz"), True)
    got = read_label_file(tmp_path / "e.nii.gz", shape=(30, 40))
    assert got.array.shape == (30, 40) and int(got.array.max()) == 2
    with pytest.raises(BadLabel, match="size mismatch"):
        read_label_file(tmp_path / "e.nii.gz", shape=(40, 30 + 1))
