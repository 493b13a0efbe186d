"""Reading DICOM within bounds (datatool.ingest.dicom): deflated files inflated no further than
their header declares, large files decoded from disk frame by frame; peak memory measured
on the command, in a subprocess."""

from __future__ import annotations

import io
import shutil
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import select

from datatool.core.catalogue import Image, SourceFile
from datatool.core.workspace import init_workspace, open_workspace
from datatool.ingest import pipeline
from datatool.ingest.dicom import (
    INFLATE_SLACK,
    BadDicom,
    _short,
    decode_frame,
    read_dataset,
    read_dataset_from,
    read_header,
)
from datatool.ingest.pipeline import ingest
from tests.badfiles import deflate_bomb, deflated_parts, long_cine
from tests.conftest import PYDICOM_DATA_US
from tests.handmade import us_dataset
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
    src = us_file("OBXXXX1A.dcm")
    twin = tmp_path / "deflated.dcm"
    twin.write_bytes(_deflated(src))
    plain = read_header(src, specific_tags=["SOPInstanceUID"])
    assert read_header(twin, specific_tags=["SOPInstanceUID"]).SOPInstanceUID == (
        plain.SOPInstanceUID
    )
    for path in (src, twin):  # the tags asked for only; all the header, never the pixels
        assert "Rows" not in read_header(path, specific_tags=["SOPInstanceUID"])
        assert "PixelData" not in read_header(path) and "Rows" in read_header(path)
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
    data = bomb.read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(BadDicom, match="inflates beyond the 4096 bytes of pixel data"):
            read_dataset(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # inflated no further than the header, the 4 KB declared and 1 MiB of slack (the bytes
    # joined once more on the way): nowhere near the stream's 64 MiB
    assert peak < 8 * MiB, peak / MiB
    data = bomb.read_bytes()
    with pytest.raises(BadDicom, match=r"does not inflate|inflates beyond"):
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
    with pytest.raises(BadDicom) as caught:
        read_dataset_from(cut)
    assert str(caught.value) == "truncated file: it ends inside the pixel data"


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


# --------------------------------------------------------------------------- word for word


def _image(rows: int = 3, cols: int = 4):
    return us_dataset(np.arange(rows * cols, dtype=np.uint8).reshape(rows, cols))


def _file(ds, preamble: bool = True, implicit: bool = False) -> bytes:
    """The dataset's file: with the 128-byte preamble and file meta, or the bare dataset
    (old files), Explicit or Implicit VR Little Endian."""
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=implicit, little_endian=True)
    return buf.getvalue()


def _refusal(data: bytes) -> str:
    with pytest.raises(BadDicom) as caught:
        read_dataset(data)
    return str(caught.value)


def _changed(**elements):
    ds = _image()
    for keyword, value in elements.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return _file(ds)


def test_every_refusal_of_a_plain_file_word_for_word():
    """3 x 4 pixels of 8 bits: 12 bytes. 8193 x 8192 is one row over the 8192 x 8192 pixels
    a frame may have; 4096 x 4096 x 257 frames of 8 bits is 257 x 16 MiB, over 4 GiB."""
    refusals = {
        "missing SOPClassUID (truncated header?)": _changed(SOPClassUID=None),
        "missing SOPInstanceUID (truncated header?)": _changed(SOPInstanceUID=""),
        "not an image (Segmentation Storage)": _changed(SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4"),
        "not an image (Raw Data Storage)": _changed(SOPClassUID="1.2.840.10008.5.1.4.1.1.66"),
        "no pixel data (not an image, or the file is truncated)": _changed(PixelData=None),
        "missing or invalid Rows/Columns/BitsAllocated": _changed(Rows=None),
        "absurd image size 0x4x1, 1 frame(s), 8 bits": _changed(Rows=0),
        "absurd image size 3x0x1, 1 frame(s), 8 bits": _changed(Columns=0),
        "absurd image size 3x4x1, -1 frame(s), 8 bits": _changed(NumberOfFrames=-1),
        "absurd image size 3x4x2, 1 frame(s), 8 bits": _changed(SamplesPerPixel=2),
        "absurd image size 3x4x1, 1 frame(s), 12 bits": _changed(BitsAllocated=12),
        "absurd image size 8193x8192x1, 1 frame(s) (over the 4 GiB limit)": _changed(
            Rows=8193, Columns=8192
        ),
        "absurd image size 4096x4096x1, 257 frame(s) (over the 4 GiB limit)": _changed(
            Rows=4096, Columns=4096, NumberOfFrames=257
        ),
        "pixel data too short: 12 bytes for 16 expected (truncated file?)": _changed(Rows=4),
        # 97 x 1 pixels of one bit: 12 bytes and a bit, 13
        "pixel data too short: 12 bytes for 13 expected (truncated file?)": _changed(
            Rows=97, Columns=1, BitsAllocated=1
        ),
        "pixel data too short: 11 bytes for 12 expected (truncated file?)": _file(_image())[:-1],
        "no readable DICOM elements (truncated or corrupt file)": _file(_image())[:200],
        "not a DICOM file (no DICM preamble, no SOP Class/Instance UID)": b"x" * 300,
    }
    for want, data in refusals.items():
        assert _refusal(data) == want, want


def test_every_size_a_plain_file_may_have():
    """One row; RGB (3 samples; 4 are refused); 1, 8, 16 and 32 bits; SamplesPerPixel
    missing or empty (one sample). Over 4 GiB: RGB 4096 x 4096 x 3 x 86 frames = 4328521728
    bytes. 1419 x 281 pixels of one bit x 86171 frames is 2^35 + 1 bits: 4 GiB (2^32 bytes)
    and one bit, within the limit in whole bytes, and one byte more than 4 GiB to hold."""
    one_row = us_dataset(np.arange(4, dtype=np.uint8).reshape(1, 4))
    assert read_dataset(_file(one_row)).Rows == 1
    rgb = _image()
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.PixelData = bytes(range(36))
    assert read_dataset(_file(rgb)).SamplesPerPixel == 3
    for bits in (1, 16, 32):
        ds = _image()
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelData = bytes(12 * bits // 8 + (bits == 1) * 2)
        assert read_dataset(_file(ds)).BitsAllocated == bits
    for samples in ("missing", None):
        ds = _image()
        if samples == "missing":
            del ds.SamplesPerPixel
        else:
            ds.SamplesPerPixel = None
        assert "PixelData" in read_dataset(_file(ds))
    assert "PixelData" in read_dataset(_changed(Rows=96, Columns=1, BitsAllocated=1))  # 12 B
    assert _refusal(_changed(SamplesPerPixel=4)) == "absurd image size 3x4x4, 1 frame(s), 8 bits"
    rgb.Rows, rgb.Columns, rgb.NumberOfFrames = 4096, 4096, 86
    assert _refusal(_file(rgb)) == (
        "absurd image size 4096x4096x3, 86 frame(s) (over the 4 GiB limit)"
    )
    assert 1419 * 281 * 86171 == 2**35 + 1
    assert _refusal(_changed(Rows=1419, Columns=281, NumberOfFrames=86171, BitsAllocated=1)) == (
        "pixel data too short: 12 bytes for 4294967297 expected (truncated file?)"
    )


def test_what_reading_accepts_at_the_edges():
    """Files without the preamble (old ones) are read when they hold an image: Implicit or
    Explicit VR, the transfer syntax told by the data; without SOP Class and Instance UIDs
    they are not taken for DICOM. A frame of exactly 8192 x 8192 pixels and exactly 4 GiB
    of pixel data are within the limits (then these headers' 12 bytes are too few)."""
    for implicit, syntax in ((True, "1.2.840.10008.1.2"), (False, "1.2.840.10008.1.2.1")):
        ds = read_dataset(_file(_image(), preamble=False, implicit=implicit))
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert decode_frame(ds, 0).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        ds = _image()
        delattr(ds, keyword)
        assert _refusal(_file(ds, preamble=False, implicit=True)) == (
            "not a DICOM file (no DICM preamble, no SOP Class/Instance UID)"
        )
    assert _refusal(_changed(Rows=8192, Columns=8192)) == (
        "pixel data too short: 12 bytes for 67108864 expected (truncated file?)"
    )
    assert _refusal(_changed(Rows=4096, Columns=4096, NumberOfFrames=256)) == (
        "pixel data too short: 12 bytes for 4294967296 expected (truncated file?)"
    )
    # an encapsulated (JPEG 2000) file cut in half: its pixel data never ends
    j2k = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()
    assert _refusal(j2k[: len(j2k) // 2]) == "truncated file: it ends inside the pixel data"
    # a transfer syntax UID that is no transfer syntax
    ds = _image()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    assert _refusal(buf.getvalue()) == "invalid header (ValueError: UID is not a transfer syntax.)"


def test_a_frame_that_does_not_decode_names_the_transfer_syntax():
    ds = read_dataset(Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes())
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x13" * 60])
    with pytest.raises(BadDicom) as caught:
        decode_frame(ds, 0)
    # the decoder's exception: its type and its words (pydicom's and OpenJPEG's own)
    head, kind, words = str(caught.value).split(": ", 2)
    assert head == "cannot decode pixel data (JPEG 2000 Image Compression (Lossless Only))"
    assert kind.endswith(("Error", "Exception")) and len(words) > 10 and words != "None"


def test_frames_are_read_from_the_source_given(tmp_path):
    """A 2-frame cine from its file on disk (with and without preamble) and from another
    dataset holding other pixels: the frame asked for, of the source given."""

    def cine():
        ds = us_dataset(np.zeros((3, 4), np.uint8))
        ds.NumberOfFrames, ds.PixelData = 2, bytes(range(24))
        return ds

    first = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    second = [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]
    other = us_dataset(np.full((3, 4), 7, np.uint8))
    assert decode_frame(other, 0, cine()).tolist() == first
    for preamble in (True, False):
        path = tmp_path / f"cine-{preamble}.dcm"
        path.write_bytes(_file(cine(), preamble=preamble, implicit=True))
        assert decode_frame(read_dataset_from(path), 1, path).tolist() == second


def test_a_file_that_only_names_the_deflated_syntax_is_not_inflated():
    """A file without preamble whose comments quote the Deflated transfer syntax's UID is
    read as it is."""
    ds = _image()
    ds.ImageComments = str(DeflatedExplicitVRLittleEndian)
    read = read_dataset(_file(ds, preamble=False, implicit=True))
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert decode_frame(read, 0).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_read_header_reads_a_large_deflated_file_no_further_than_16_mib(tmp_path):
    """A deflated file of 48 MB on disk (incompressible pixels): its header is read from
    the first 16 MiB only (held twice, and 16 MiB inflated: about 64 MiB whatever the
    file's size; the whole file would be over 100)."""
    image = us_dataset(np.zeros((1000, 1000), np.uint8))
    image.NumberOfFrames, image.PixelData = 48, np.random.default_rng(0).bytes(48_000_000)
    path = tmp_path / "deflated.dcm"
    path.write_bytes(_deflated_file(image, level=1))
    del image
    assert path.stat().st_size > 48_000_000
    tracemalloc.start()
    try:
        assert read_header(path, specific_tags=["Rows"]).Rows == 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * MiB, peak / MiB


def test_read_header_never_reads_the_pixels_of_a_plain_file(tmp_path):
    cine = us_dataset(np.zeros((1000, 1000), np.uint8))
    cine.NumberOfFrames, cine.PixelData = 40, bytes(40_000_000)
    path = tmp_path / "cine.dcm"
    path.write_bytes(_file(cine))
    del cine
    tracemalloc.start()
    try:
        assert read_header(path).NumberOfFrames == 40
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak / MiB


def _deflated_file(ds, after_pixels: bytes = b"", cut: int | None = None, level: int = 9) -> bytes:
    """The dataset as a Deflated Explicit VR Little Endian file, written here (pydicom's
    writer, zlib's raw deflate): ``after_pixels`` appended to the dataset before deflating,
    the deflated stream cut to ``cut`` bytes."""
    import zlib

    head, body = deflated_parts(ds, enforce_standard=False)
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = packer.compress(body + after_pixels) + packer.flush()
    return head + stream[:cut]


def _padding(size: int) -> bytes:
    """A Data Set Trailing Padding element (FFFC,FFFC) OB: 12 bytes of header, ``size`` of
    value."""
    import struct

    return struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, size) + bytes(size)


def test_deflated_files_at_the_bounds_word_for_word():
    """A 4 x 4 image (16 bytes of pixels) may be followed by INFLATE_SLACK bytes after its
    pixel data element (12 bytes of header + 16), not one more. A header of 100 KB is
    inflated round by round; one of 17 MiB is refused at 16 MiB."""
    image = us_dataset(np.arange(16, dtype=np.uint8).reshape(4, 4))
    pixels = np.arange(16).reshape(4, 4).tolist()
    ds = read_dataset(_deflated_file(image, _padding(INFLATE_SLACK - 12)))
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert decode_frame(ds, 0).tolist() == pixels
    assert _refusal(_deflated_file(image, _padding(INFLATE_SLACK - 12 + 1))) == (
        "deflated data inflates beyond the 16 bytes of pixel data its header declares: "
        "refused (a decompression bomb?)"
    )
    for size, refusal in ((100_000, None), (17 << 20, "larger")):
        big = us_dataset(np.arange(16, dtype=np.uint8).reshape(4, 4))
        big.add_new(0x00091010, "LO", "TEST")
        big.add_new(0x00091001, "OB", bytes(size))
        if refusal is None:
            assert decode_frame(read_dataset(_deflated_file(big)), 0).tolist() == pixels
        else:
            assert _refusal(_deflated_file(big)) == (
                "deflated header larger than 16 MiB before the pixel data: refused"
            )
    # a file meta without the Media Storage SOP Class UID (a careless writer's): read all
    # the same, the meta written back as it was
    sloppy = us_dataset(np.arange(16, dtype=np.uint8).reshape(4, 4))
    del sloppy.file_meta.MediaStorageSOPClassUID
    ds = read_dataset(_deflated_file(sloppy))
    assert "MediaStorageSOPClassUID" not in ds.file_meta
    assert decode_frame(ds, 0).tolist() == pixels
    no_rows = us_dataset(np.zeros((4, 4), np.uint8))
    del no_rows.Rows
    assert _refusal(_deflated_file(no_rows)) == "missing or invalid Rows/Columns/BitsAllocated"
    # 4096 x 4096 x 257 frames: 257 x 16 MiB = 4311744512 bytes; 256 frames is 4 GiB exactly
    huge = us_dataset(np.zeros((4, 4), np.uint8))
    huge.Rows, huge.Columns, huge.NumberOfFrames = 4096, 4096, 257
    assert _refusal(_deflated_file(huge)) == (
        "absurd image size: 4311744512 bytes of pixel data declared (over the 4 GiB limit)"
    )
    huge.NumberOfFrames = 256
    assert _refusal(_deflated_file(huge)) == (
        "pixel data too short: 16 bytes for 4294967296 expected (truncated file?)"
    )
    whole = _deflated_file(us_dataset(np.zeros((4, 4), np.uint8)))
    head = len(_deflated_file(us_dataset(np.zeros((4, 4), np.uint8)), cut=0))  # meta only
    # the stream cut before its end (before the pixel data): what was inflated is read
    assert _refusal(whole[: head + 100]) == "no pixel data (not an image, or the file is truncated)"
    assert _refusal(whole[: head + 4] + b"\xff" * 40) == (
        "deflated data does not inflate (corrupt file)"
    )


def test_reading_from_disk_refuses_and_accepts_like_reading_bytes(tmp_path):
    """read_dataset_from (pixels left on disk) against read_dataset: a deflated file and a
    file without preamble read the same; a file cut inside a sequence of undefined length is
    unreadable at the byte where it ends; a file of 320 x 320 pixels (102400 bytes, more
    than the 64 KiB that stay on disk) cut 5000 bytes short ends inside its pixel data,
    with or without preamble."""
    image = us_dataset(np.arange(12, dtype=np.uint8).reshape(3, 4))
    path = tmp_path / "deflated.dcm"
    path.write_bytes(_deflated_file(image))
    ds = read_dataset_from(path)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert decode_frame(ds, 0).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    path = tmp_path / "bare.dcm"
    path.write_bytes(_file(_image(), preamble=False, implicit=True))
    ds = read_dataset_from(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert decode_frame(ds, 0, path).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    bare = _image()
    del bare.SOPInstanceUID
    path.write_bytes(_file(bare, preamble=False, implicit=True))
    with pytest.raises(BadDicom) as caught:
        read_dataset_from(path)
    assert str(caught.value) == "not a DICOM file (no DICM preamble, no SOP Class/Instance UID)"

    regions = _image()
    regions["SequenceOfUltrasoundRegions"].is_undefined_length = True
    data = _file(regions)
    cut = data.index(b"\x18\x00\x11\x60") + 16  # (0018,6011): its header and 4 bytes more
    path.write_bytes(data[:cut])
    want = f"unreadable DICOM (OSError: No tag to read at file position {cut:X})"
    assert _refusal(data[:cut]) == want
    with pytest.raises(BadDicom) as caught:
        read_dataset_from(path)
    assert str(caught.value) == want

    # the same cut in a file without preamble: not taken for DICOM (the reason's type only)
    data = _file(regions, preamble=False, implicit=True)
    cut = data.index(b"\x18\x00\x11\x60") + 12
    assert _refusal(data[:cut]) == "not a DICOM file (OSError)"
    path.write_bytes(data[:cut])
    with pytest.raises(BadDicom) as caught:
        read_dataset_from(path)
    assert str(caught.value) == "not a DICOM file (OSError)"

    # a small file's pixels are read at once: one cut short is too short
    path.write_bytes(_file(_image())[:-1])
    with pytest.raises(BadDicom) as caught:
        read_dataset_from(path)
    assert str(caught.value) == "pixel data too short: 11 bytes for 12 expected (truncated file?)"
    # encapsulated pixel data (undefined length) of 70 KB, left on disk: not cut
    jpeg = us_dataset(np.zeros((3, 4), np.uint8))
    jpeg.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    jpeg.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(70_000) + b"\xff\xd9"])
    jpeg["PixelData"].is_undefined_length = True
    path.write_bytes(_file(jpeg))
    assert read_dataset_from(path).file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit

    large = us_dataset(np.zeros((320, 320), np.uint8))
    path.write_bytes(_file(large))  # whole: its pixel data ends where the file does
    assert read_dataset_from(path).Rows == 320
    # a cine of 40 MB, with or without preamble: its pixel data is never read to be checked
    for preamble in (True, False):
        cine = us_dataset(np.zeros((1000, 1000), np.uint8))
        cine.NumberOfFrames, cine.PixelData = 40, bytes(40_000_000)
        path.write_bytes(_file(cine, preamble=preamble, implicit=True))
        del cine
        tracemalloc.start()
        try:
            assert read_dataset_from(path).NumberOfFrames == 40
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * MiB, (preamble, peak / MiB)
    for preamble in (True, False):
        path.write_bytes(_file(large, preamble=preamble, implicit=True)[:-5000])
        with pytest.raises(BadDicom) as caught:
            read_dataset_from(path)
        assert str(caught.value) == "truncated file: it ends inside the pixel data"


def test_reasons_quoted_in_a_message_are_one_line_of_at_most_120_characters():
    assert _short(ValueError("a  value\n  that\tspans lines")) == "a value that spans lines"
    exactly = "x" * 120
    assert _short(ValueError(exactly)) == exactly
    longer = "y" * 60 + " " + "z" * 60  # 121 characters
    assert _short(ValueError(longer)) == "y" * 60 + " " + "z" * 58 + "…"
    assert len(_short(ValueError(longer))) == 120
    assert _short(ValueError("abcdef"), limit=4) == "abc…"
