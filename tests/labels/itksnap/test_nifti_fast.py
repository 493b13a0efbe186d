"""Plain NIfTI maps decoded without ITK once ITK has read one with the same header
(``itksnap.nifti``): the same array, geometry and notes as ITK's read, and ITK for anything
the fast path does not know."""

from __future__ import annotations

import gzip
import struct

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
