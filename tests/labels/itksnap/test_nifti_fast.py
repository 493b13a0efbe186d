"""Plain NIfTI maps decoded without ITK once ITK has read one with the same header
(``itksnap.nifti``): the same array, geometry and notes as ITK's read, and ITK for anything
the fast path does not know."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from datatool.labels.itksnap import nifti
from datatool.labels.itksnap.formats import read_label_file
from datatool.labels.masks import BadLabel


@pytest.fixture(autouse=True)
def _fresh():
    nifti.forget()
    yield
    nifti.forget()


def _write(path, array, direction=None, spacing=(0.2, 0.3, 1.0), origin=(1.5, -2.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    dim = image.GetDimension()
    image.SetSpacing(spacing[:dim])
    image.SetOrigin(origin[:dim])
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def _maps(rng, dtype, shape, n=2):
    out = []
    for _ in range(n):
        a = np.zeros(shape, dtype)
        a[..., 3:9, 4:15] = rng.integers(1, 6)
        a[..., 10:12, 2:5] = rng.integers(1, 6)
        out.append(a)
    return out


def _by_itk(path, **kwargs):
    saved = dict(nifti._known)
    nifti.forget()
    try:
        return read_label_file(path, **kwargs)
    finally:
        nifti._known.update(saved)


FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SWAP = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "dtype,shape,direction,suffix",
    [
        (np.uint8, (1, 16, 20), None, ".nii.gz"),  # W x H x 1, as ITK-SNAP saves a map
        (np.uint8, (16, 20), None, ".nii.gz"),  # a 2D map
        (np.int16, (1, 16, 20), FLIP_X, ".nii.gz"),
        (np.uint16, (1, 16, 20), SWAP, ".nii"),
        (np.int32, (1, 16, 20), None, ".nii"),
    ],
)
def test_a_second_map_of_the_same_header_reads_as_itk_reads_it(
    tmp_path, dtype, shape, direction, suffix
):
    rng = np.random.default_rng(7)
    first, second = (
        _write(tmp_path / f"{k}{suffix}", a, direction)
        for k, a in enumerate(_maps(rng, dtype, shape))
    )
    assert nifti.fast_read(second) is None  # nothing known yet
    read_label_file(first)  # ITK reads it, and its header is remembered
    fast = nifti.fast_read(second)
    assert fast is not None
    got, want = read_label_file(second), _by_itk(second)
    assert got.array.dtype == want.array.dtype
    np.testing.assert_array_equal(got.array, want.array)
    assert (got.spacing, got.origin, got.notes) == (want.spacing, want.origin, want.notes)
    assert not np.array_equal(got.array, read_label_file(first).array)  # its own voxels


def test_a_cine_stack_reads_the_same_fast(tmp_path):
    rng = np.random.default_rng(3)
    first, second = (
        _write(tmp_path / f"{k}.nii.gz", a) for k, a in enumerate(_maps(rng, np.uint8, (4, 16, 20)))
    )
    read_label_file(first, slices=(4,))
    assert nifti.fast_read(second) is not None
    got, want = read_label_file(second, slices=(4,)), _by_itk(second, slices=(4,))
    np.testing.assert_array_equal(got.array, want.array)
    assert got.array.shape == (4, 16, 20)


def _plain_copy(src, dst, **patch):
    """An uncompressed copy of a .nii.gz with header fields patched (offset: struct format,
    value)."""
    data = bytearray(gzip.decompress(src.read_bytes()))
    for offset, (fmt, value) in patch.items():
        struct.pack_into(fmt, data, int(offset), value)
    dst.write_bytes(bytes(data))
    return dst


def test_what_the_fast_path_does_not_know_goes_to_itk(tmp_path):
    rng = np.random.default_rng(5)
    first, second = (
        _write(tmp_path / f"{k}.nii.gz", a) for k, a in enumerate(_maps(rng, np.uint8, (1, 16, 20)))
    )
    read_label_file(first)
    # scaled values (scl_slope 2): ITK scales them; not decoded here
    scaled = _plain_copy(second, tmp_path / "scaled.nii", **{"112": ("<f", 2.0)})
    assert nifti.fast_read(scaled) is None
    # floating-point voxels: another header, never remembered
    floats = _write(tmp_path / "f.nii.gz", np.zeros((1, 16, 20), np.float32))
    read_label_file(floats)
    assert nifti.fast_read(_write(tmp_path / "g.nii.gz", np.ones((1, 16, 20), np.float32))) is None
    # two gzip members (ITK reads on into the second): ITK's
    raw = second.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(raw + gzip.compress(b"\0" * 10))
    assert nifti.fast_read(two) is None
    # a header ITK read before, over data cut short: not decoded here, and refused
    short = tmp_path / "short.nii"
    short.write_bytes(gzip.decompress(raw)[:-40])
    plain = tmp_path / "plain.nii"
    plain.write_bytes(gzip.decompress(first.read_bytes()))
    read_label_file(plain)
    assert nifti.fast_read(short) is None
    with pytest.raises(BadLabel, match="cut short"):
        read_label_file(short)


def test_corrupt_gzip_data_is_refused_as_before(tmp_path):
    rng = np.random.default_rng(9)
    first, second = (
        _write(tmp_path / f"{k}.nii.gz", a) for k, a in enumerate(_maps(rng, np.uint8, (1, 16, 20)))
    )
    read_label_file(first)
    raw = bytearray(second.read_bytes())
    raw[len(raw) // 2 :] = b"\xff" * (len(raw) - len(raw) // 2)
    second.write_bytes(bytes(raw))
    assert nifti.fast_read(second) is None
    with pytest.raises(BadLabel):
        read_label_file(second)


def _header(order="<", size=348, magic=b"n+1\x00", dims=(3, 20, 16, 1), datatype=2, bitpix=8,
            offset=352.0, slope=1.0, inter=0.0) -> bytes:  # fmt: skip
    """A NIfTI-1 header by hand (no qform or sform: ITK's fallback geometry)."""
    h = bytearray(348)
    struct.pack_into(order + "i", h, 0, size)
    padded = (list(dims) + [1] * 8)[:8]
    struct.pack_into(order + "8h", h, 40, *padded)
    struct.pack_into(order + "hh", h, 70, datatype, bitpix)
    struct.pack_into(order + "8f", h, 76, 1.0, 0.5, 0.25, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into(order + "f", h, 108, offset)
    struct.pack_into(order + "2f", h, 112, slope, inter)
    h[344:348] = magic
    return bytes(h)


def _nifti(path, header: bytes, values: np.ndarray) -> Path:
    path.write_bytes(header + b"\0" * 4 + values.tobytes())
    return path


@pytest.mark.parametrize(
    "changes,decoded",
    [
        ({}, True),
        ({"slope": 0.0}, True),  # 0: no scaling, as ITK reads it
        ({"order": ">"}, True),  # big-endian
        ({"dims": (2, 20, 16, 7)}, True),  # dims past dim[0] do not count
        ({"size": 540}, False),
        ({"magic": b"ni1\x00"}, False),  # a .hdr/.img pair
        ({"slope": 2.0}, False),
        ({"inter": 0.5}, False),
        ({"dims": (4, 20, 16, 1, 1)}, False),
        ({"dims": (1, 20)}, False),
        ({"dims": (3, 20, 0, 1)}, False),
        ({"datatype": 16, "bitpix": 32}, False),  # float32
        ({"offset": 352.5}, False),
        ({"offset": 348.0}, False),  # inside the header's extender: readers differ
        ({"offset": 0.0}, False),
    ],
)
def test_which_headers_are_decoded_here(changes, decoded):
    layout = nifti._layout(_header(**changes))
    assert (layout is not None) == decoded
    if decoded:
        order = changes.get("order", "<")
        assert layout == nifti._Layout(352, 320, order + "u1")


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_hand_made_map_of_either_byte_order_reads_as_itk_reads_it(tmp_path, order):
    rng = np.random.default_rng(11)
    header = _header(order=order, datatype=4, bitpix=16)  # int16
    dtype = np.dtype(order + "i2")
    first, second = (
        _nifti(tmp_path / f"{k}.nii", header, rng.integers(0, 6, (16, 20)).astype(dtype))
        for k in range(2)
    )
    read_label_file(first)
    fast = nifti.fast_read(second)
    assert fast is not None
    array, geometry = fast
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(second)))
    assert array.shape == want.shape and array.dtype == want.dtype
    np.testing.assert_array_equal(array, want)
    assert geometry.spacing == pytest.approx((0.5, 0.25, 1.0))
    got, itk = read_label_file(second), _by_itk(second)
    np.testing.assert_array_equal(got.array, itk.array)
    assert (got.spacing, got.origin) == (itk.spacing, itk.origin)
    # int16 data two bytes short: not decoded here
    short = tmp_path / "short.nii"
    short.write_bytes(second.read_bytes()[:-2])
    assert nifti.fast_read(short) is None


def test_an_unknown_header_and_files_that_are_not_nifti_are_not_decoded(tmp_path):
    rng = np.random.default_rng(2)
    first = _write(tmp_path / "a.nii.gz", _maps(rng, np.int16, (1, 16, 20), 1)[0])
    read_label_file(first)  # an int16 header is known
    other = _write(tmp_path / "b.nii.gz", _maps(rng, np.uint8, (1, 16, 20), 1)[0])
    assert nifti.fast_read(other) is None  # a uint8 header is not
    junk = tmp_path / "junk.nii"
    junk.write_bytes(bytes(range(256)) * 2)
    assert nifti._header(junk) is None and nifti.fast_read(junk) is None
    cut = tmp_path / "cut.nii.gz"  # gzip data ending inside the header's extension bytes
    cut.write_bytes(gzip.compress(gzip.decompress(first.read_bytes())[:350]))
    assert nifti._header(cut) is None and nifti.fast_read(cut) is None


def test_the_headers_remembered_are_the_latest(tmp_path, monkeypatch):
    monkeypatch.setattr(nifti, "_KEPT", 2)
    files = [
        _nifti(
            tmp_path / f"{k}.nii", _header(dims=(3, 20 + k, 16, 1)), np.zeros((16, 20 + k), "u1")
        )
        for k in range(3)
    ]
    for path in files:
        read_label_file(path)
    assert len(nifti._known) == 2
    assert nifti.fast_read(files[0]) is None  # the oldest forgotten
    assert nifti.fast_read(files[1]) is not None and nifti.fast_read(files[2]) is not None
