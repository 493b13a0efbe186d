"""Reading DICOM within bounds (datatool.ingest.dicom): deflated files inflated no further than
their header declares, large files decoded from disk frame by frame; peak memory measured
on the command, in a subprocess."""

from __future__ import annotations

import io
import shutil
import sys

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import select

from datatool.core.catalogue import Image, SourceFile
from datatool.core.workspace import init_workspace, open_workspace
from datatool.ingest import pipeline
from datatool.ingest.dicom import (
    BadDicom,
    decode_frame,
    read_dataset,
    read_dataset_from,
    read_header,
)
from datatool.ingest.pipeline import ingest
from tests.badfiles import deflate_bomb, long_cine
from tests.conftest import PYDICOM_DATA_US
from tests.memory import run_measured

MiB = 1024**2


def _deflated(src) -> bytes:
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_deflated_file_decodes_like_its_plain_twin(us_file, ws, tmp_path):
    src = us_file("OBXXXX1A.dcm")
    data = _deflated(src)
    ds = read_dataset(data)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    plain = read_dataset(src.read_bytes())
    assert (decode_frame(ds, 0) == decode_frame(plain, 0)).all()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "deflated.dcm").write_bytes(data)
    assert ingest(ws, [tmp_path / "d"], workers=0).ingested == 1
    with ws.session() as s:
        assert s.scalar(select(SourceFile.transfer_syntax)) == DeflatedExplicitVRLittleEndian


def test_read_header_inflates_a_deflated_file_only_as_far_as_its_header(us_file, tmp_path):
    """What matching reads of an original DICOM file (its SOP Instance UID): a deflated
    file gives the same as its plain twin, and a bomb is not inflated whole (pydicom's own
    dcmread, stop_before_pixels or not, inflates the whole stream first)."""
    import tracemalloc

    src = us_file("OBXXXX1A.dcm")
    twin = tmp_path / "deflated.dcm"
    twin.write_bytes(_deflated(src))
    plain = read_header(src, specific_tags=["SOPInstanceUID"])
    assert read_header(twin, specific_tags=["SOPInstanceUID"]).SOPInstanceUID == (
        plain.SOPInstanceUID
    )
    assert "PixelData" not in read_header(twin) and "Rows" in read_header(twin)
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 300 * MiB)
    tracemalloc.start()
    try:
        uid = read_header(bomb, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    meta = pydicom.filereader.read_file_meta_info(bomb)  # the maker wrote the same UID there
    assert uid == meta.MediaStorageSOPInstanceUID
    assert peak < 48 * MiB, peak / MiB  # at most 16 MiB read and 16 MiB inflated


def test_a_deflate_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 64 * MiB)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(BadDicom, match="inflates beyond the 4096 bytes of pixel data"):
        read_dataset(bomb.read_bytes())
    data = bomb.read_bytes()
    with pytest.raises(BadDicom, match=r"does not inflate|no readable header|inflates beyond"):
        read_dataset(data[: len(data) // 2] + b"\x13" * 64)  # cut, then garbage


def test_large_files_decoded_from_disk_give_the_same_images(pydicom_data, tmp_path, monkeypatch):
    """Every real vendor file read the way files over STREAM_BYTES are (pixels left on disk,
    one frame read at a time) gives exactly the images of the in-memory way."""
    folder = tmp_path / "us"
    folder.mkdir()
    for name in PYDICOM_DATA_US:
        shutil.copy(pydicom_data / name, folder / name)
    hashes = []
    for stream_bytes in (pipeline.STREAM_BYTES, 0):
        monkeypatch.setattr(pipeline, "STREAM_BYTES", stream_bytes)
        root = init_workspace(tmp_path / f"ws{stream_bytes}").root
        ws = open_workspace(root)
        report = ingest(ws, [folder], workers=0, allow_burned_in=True)
        assert not report.rejected, report.rejected
        with ws.session() as s:
            aside = [h for a in s.scalars(select(SourceFile.aside)) if a for h in a]
            hashes.append(sorted([*s.scalars(select(Image.store_hash)), *aside]))
        ws.close()
    # one hash per file (the conflicts' frames are kept aside), two of the 2-frame file
    assert hashes[0] == hashes[1] and len(hashes[0]) == len(PYDICOM_DATA_US) + 1


def test_a_file_cut_inside_deferred_pixel_data_is_refused(us_file, tmp_path):
    src = us_file("OBXXXX1A.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[:-5000])
    with pytest.raises(BadDicom, match="truncated"):
        read_dataset_from(cut)


# --------------------------------------------------------------------------- peak memory


@pytest.fixture()
def measured_ingest(tmp_path, cli_env):
    """Run 'datatool ingest PATH -j 0' (all in one process) in a fresh workspace; returns
    its exit code, output and peak RSS."""

    def run(path, *options):
        root = tmp_path / f"ws-{path.stem}"
        init_workspace(root)
        cmd = [sys.executable, "-m", "datatool", "ingest", str(path), "-j", "0", *options]
        return run_measured([*cmd, "--workspace", str(root)], cli_env)

    return run


def test_peak_memory_of_a_deflate_bomb_is_bounded_by_the_declared_image(
    measured_ingest, us_file, tmp_path
):
    baseline = measured_ingest(us_file("OBXXXX1A.dcm"))
    assert baseline.returncode == 0, baseline.stderr
    bomb = deflate_bomb(tmp_path / "bomb" / "bomb.dcm", 300 * MiB)  # 64 x 64 declared
    res = measured_ingest(bomb)
    assert res.returncode == 1 and "decompression bomb" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # the declared image is 4 KB: whatever ingest holds beyond the baseline is its own
    # working memory, far from the 300 MB the stream would inflate to
    assert res.peak_mib < baseline.peak_mib + 48, (res.peak_mib, baseline.peak_mib)


def test_peak_memory_of_a_long_cine_stays_near_one_frame(measured_ingest, us_file, tmp_path):
    frames, rows, cols = 400, 512, 512  # 105 MB of pixels, 256 KB a frame
    cine = long_cine(tmp_path / "cine" / "cine.dcm", frames, rows, cols)
    assert cine.stat().st_size > pipeline.STREAM_BYTES
    baseline = measured_ingest(us_file("OBXXXX1A.dcm"))
    res = measured_ingest(cine, "--frames", "all")
    assert res.returncode == 0, res.stderr
    frame_mib = rows * cols / MiB
    # a bound tied to the frame: a few frames' worth of decoding buffers and the PNG
    # encoder, not the 105 MB (let alone twice that) of the whole cine
    assert res.peak_mib < baseline.peak_mib + 16 * frame_mib + 24, (
        res.peak_mib,
        baseline.peak_mib,
    )
