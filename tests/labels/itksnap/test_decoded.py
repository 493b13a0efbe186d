"""A re-sync does not decode label files whose bytes decoded before to the rater's latest
label (labels.itksnap.decoded, used by sync_itksnap): unchanged files are counted without
reading their pixels, a changed file or a file back at an older version is decoded and
stored, an empty map and a damaged cache change nothing."""

from __future__ import annotations

import shutil

import pytest
import SimpleITK as sitk

import datatool.labels.itksnap.sync as sync_module
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.decoded import CACHE_NAME, Decoded
from datatool.labels.itksnap.sync import sync_itksnap

N = 12  # the demo fixture: 3 patients x 2 sides x 2 images


@pytest.fixture()
def rated(ws, demo_dir, tmp_path):
    """The demo study ingested, rater1's labels copied to a folder the test may change."""
    assert ingest(ws, [demo_dir / "dicom"], workers=0).images_added == N
    add_rater(ws, "rater1")
    labels = tmp_path / "labels"
    shutil.copytree(demo_dir / "labels" / "rater1", labels)
    return ws, labels, demo_dir / "dicom"


@pytest.fixture()
def reads(monkeypatch):
    """The label files sync decodes (read_label_file, counted, still run)."""
    seen: list[str] = []
    real = sync_module.read_label_file

    def counted(path, *args, **kwargs):
        seen.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sync_module, "read_label_file", counted)
    return seen


def _rewrite(path, change) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    change(array)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), True)


def counts(report) -> tuple[int, int, int]:
    return report.new_versions, report.unchanged, len(report.rejected)


def test_unchanged_files_are_not_decoded_again(rated, reads):
    ws, labels, dicom = rated
    assert counts(sync_itksnap(ws, labels, "rater1", dicom_root=dicom)) == (N, 0, 0)
    assert len(reads) == N
    assert (ws.meta_dir / "cache" / CACHE_NAME).is_file()
    reads.clear()
    assert counts(sync_itksnap(ws, labels, "rater1", dicom_root=dicom)) == (0, N, 0)
    assert reads == []  # every file known by its bytes: none decoded


def test_a_changed_file_is_decoded_and_an_old_version_again_is_a_new_version(rated, reads):
    ws, labels, dicom = rated
    sync_itksnap(ws, labels, "rater1", dicom_root=dicom)
    path = sorted(labels.rglob("*.nii.gz"))[0]
    first = path.read_bytes()

    def grow(a):
        a[0:5, 0:5] = 2

    _rewrite(path, grow)
    reads.clear()
    assert counts(sync_itksnap(ws, labels, "rater1", dicom_root=dicom)) == (1, N - 1, 0)
    assert reads == [path.name]
    # back to the first bytes: the cache knows them, but they are not the latest label now
    path.write_bytes(first)
    reads.clear()
    assert counts(sync_itksnap(ws, labels, "rater1", dicom_root=dicom)) == (1, N - 1, 0)
    assert reads == [path.name]


def test_a_damaged_cache_is_an_empty_one(rated, reads):
    ws, labels, dicom = rated
    sync_itksnap(ws, labels, "rater1", dicom_root=dicom)
    cache = ws.meta_dir / "cache" / CACHE_NAME
    cache.write_text('{"format": 1, "entries": {"x": 3}', encoding="utf-8")  # cut short
    reads.clear()
    assert counts(sync_itksnap(ws, labels, "rater1", dicom_root=dicom)) == (0, N, 0)
    assert len(reads) == N  # decoded as always, and the cache written anew
    reads.clear()
    assert counts(sync_itksnap(ws, labels, "rater1", dicom_root=dicom)) == (0, N, 0)
    assert reads == []


def test_an_entry_needs_the_same_bytes_size_and_protocol(tmp_path):
    from datatool.core.protocol import load_protocol
    from datatool.labels.itksnap.decoded import cacheable, entry_key

    protocol = load_protocol("anterior_sciatic")
    key = entry_key("ab" * 32, (480, 640), protocol)
    assert key != entry_key("ab" * 32, (640, 480), protocol)
    assert key != entry_key("cd" * 32, (480, 640), protocol)
    assert key.endswith(":anterior_sciatic:1,2,3,4,6")
    assert cacheable(tmp_path / "a.nii.gz") and cacheable(tmp_path / "a.NII")
    assert not cacheable(tmp_path / "a.nrrd") and not cacheable(tmp_path / "a.mhd")
    cache = Decoded.load(tmp_path)
    assert cache.get(key) is None
    cache.put(key, "ef" * 32, ["a note"])
    cache.save()
    again = Decoded.load(tmp_path)
    assert again.get(key) == ("ef" * 32, ["a note"])
    assert not again.changed
