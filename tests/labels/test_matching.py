"""Which image a label belongs to (datatool/labels/matching.py): image ids people type, SOP
Instance UIDs of original DICOM files."""

from __future__ import annotations

import pydicom
import pytest

from datatool.core.errors import UsageError
from datatool.ingest.pipeline import ingest
from datatool.labels.matching import (
    NoImage,
    image_for_dicom,
    parse_image_ids,
    read_sop_instance_uid,
)


@pytest.mark.parametrize(
    ("given", "ids"),
    [
        ("12", [12]),
        ("12,img000015, IMG17,", [12, 15, 17]),
        (["img000001", 2, "3"], [1, 2, 3]),
        ((7,), [7]),
    ],
)
def test_parse_image_ids(given, ids):
    assert parse_image_ids(given) == ids


@pytest.mark.parametrize("given", ["one", "12,x", "img", "-3", ["img000001.png"], [""], ",", []])
def test_parse_image_ids_refuses_what_is_no_id(given):
    with pytest.raises(UsageError, match="image id"):
        parse_image_ids(given)


def test_read_sop_instance_uid_reads_only_that(ws, us_file, tmp_path):
    path = us_file("OBXXXX1A.dcm")
    expected = str(pydicom.dcmread(path).SOPInstanceUID)
    assert read_sop_instance_uid(path) == expected
    with pytest.raises(NoImage, match="no DICOM file"):
        read_sop_instance_uid(tmp_path / "missing.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    with pytest.raises(NoImage, match="not a readable DICOM file with a SOP Instance UID"):
        read_sop_instance_uid(tmp_path / "notes.txt")
    with pytest.raises(NoImage, match="never ingested"), ws.session() as s:
        image_for_dicom(s, ws.key, path)
    ingest(ws, [path], workers=0)
    with ws.session() as s:
        assert image_for_dicom(s, ws.key, path).id == 1


def test_the_uid_of_a_deflate_bomb_is_read_without_inflating_it(tmp_path):
    """sync itksnap --dicom-root reads each original's SOP Instance UID: a 300 MB deflate
    bomb among the originals once took the sync to a 1.4 GB peak (pydicom inflates a
    deflated file whole); now only its header is inflated."""
    import tracemalloc

    from tests.badfiles import deflate_bomb

    bomb = deflate_bomb(tmp_path / "bomb.dcm", 300 * 1024**2)
    tracemalloc.start()
    try:
        uid = read_sop_instance_uid(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert uid == pydicom.filereader.read_file_meta_info(bomb).MediaStorageSOPInstanceUID
    assert peak < 48 * 1024**2, peak / 1024**2


def test_cine_frame_names_frames_as_people_count_them():
    from datatool.labels.matching import check_cine_frame, cine_frame_index, frame_label

    assert [cine_frame_index(v, 8) for v in ("first", "MIDDLE", "1", "3", " 8")] == [0, 4, 0, 2, 7]
    assert cine_frame_index("middle", 3) == 1  # the frame 'ingest --frames middle' takes
    with pytest.raises(NoImage, match="--cine-frame 9 is past the end of the cine: it has 8"):
        cine_frame_index("9", 8)
    for bad in ("0", "last", "-1", "1.5", ""):
        with pytest.raises(UsageError, match="first, middle, or a frame number counted from 1"):
            check_cine_frame(bad)
    assert (
        frame_label(123, 2, 8, "/data/MRN0042/R_cine.dcm") == "img000123 (R_cine.dcm, frame 3 of 8)"
    )
    assert frame_label(None, 0, 8) == "frame 1 of 8"


def test_a_cines_dicom_file_matches_the_cine_not_one_image(ws, tmp_path):
    from datatool.labels.matching import Cine, match_dicom
    from tests.badfiles import long_cine

    (tmp_path / "in").mkdir()
    path = long_cine(tmp_path / "in" / "R_cine.dcm", 5, 32, 40)
    ingest(ws, [path], workers=0, frames="all")
    with ws.session() as s:
        cine = match_dicom(s, ws.key, path)
        assert isinstance(cine, Cine)
        assert (cine.n_frames, sorted(cine.frames), cine.first.frame_index) == (
            5,
            [0, 1, 2, 3, 4],
            0,
        )
        assert [cine.frames[k].id for k in range(5)] == [1, 2, 3, 4, 5]
        with pytest.raises(NoImage, match="a cine of 5 frames, not one image"):
            image_for_dicom(s, ws.key, path)
