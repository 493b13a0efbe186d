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
