"""Matching label files to images by their DICOM files (labels.itksnap.locate): a DICOM file
byte for byte as ingested is known by its SHA-256 in the catalogue, with no DICOM parsing
(issue 26); any other file is read for its SOP Instance UID as before."""

from __future__ import annotations

import shutil

import pytest

import datatool.labels.itksnap.locate as locate
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.sync import sync_itksnap

N = 12  # the demo fixture: 3 patients x 2 sides x 2 images


@pytest.fixture()
def parsed(monkeypatch):
    """The DICOM files whose SOP Instance UID is parsed (counted, still read)."""
    seen: list[str] = []
    real = locate.read_sop_instance_uid

    def counted(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(locate, "read_sop_instance_uid", counted)
    return seen


def test_ingested_dicom_files_are_matched_by_their_hash(ws, demo_dir, tmp_path, parsed):
    dicom = tmp_path / "dicom"
    shutil.copytree(demo_dir / "dicom", dicom)
    assert ingest(ws, [dicom], workers=0).images_added == N
    add_rater(ws, "rater1")
    report = sync_itksnap(ws, demo_dir / "labels" / "rater1", "rater1", dicom_root=dicom)
    assert (report.new_versions, report.rejected) == (N, [])
    assert parsed == []  # every DICOM file known by its bytes


def test_a_dicom_file_changed_since_ingest_is_read_and_still_matched(
    ws, demo_dir, tmp_path, parsed
):
    dicom = tmp_path / "dicom"
    shutil.copytree(demo_dir / "dicom", dicom)
    assert ingest(ws, [dicom], workers=0).images_added == N
    changed = sorted(dicom.rglob("*.dcm"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0\0")  # other bytes, the same SOP UID
    add_rater(ws, "rater1")
    report = sync_itksnap(ws, demo_dir / "labels" / "rater1", "rater1", dicom_root=dicom)
    assert (report.new_versions, report.rejected) == (N, [])
    assert parsed == [changed.name]
