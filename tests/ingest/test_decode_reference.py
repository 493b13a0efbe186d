"""Decoding to 8-bit gray, pixel for pixel, against references computed another way: the raw
bytes of an uncompressed RGB file, GDCM's own decoder and palette lookup (python-gdcm),
pydicom's YBR output before colour conversion and its ``convert_color_space``, and the
DICOM standard's formulas (PS3.3 C.11.2.1.2.1 windowing, VOI LUT lookup, MONOCHROME1
inversion) written out here. Gray from colour is ITU-R BT.601 luma, 0.299 R + 0.587 G +
0.114 B, in floating point here; datatool computes it in integer arithmetic, so a colour
reference may differ by one gray level (stated per test), never more."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.sequence import Sequence

from datatool.ingest.dicom import decode_frame
from tests.ci import require
from tests.handmade import us_dataset

gdcm = require("gdcm")


def luma(rgb: np.ndarray, full_scale: int = 255) -> np.ndarray:
    """BT.601 luma of RGB in 0..full_scale, as 0..255."""
    rgb = rgb.astype(np.float64)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return np.rint(y * 255.0 / full_scale)


def assert_within_one(got: np.ndarray, ref: np.ndarray) -> None:
    """At most one gray level apart anywhere (integer luma vs floating point), and equal on
    almost every pixel."""
    assert got.dtype == np.uint8 and got.shape == ref.shape
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1, f"{int(diff.max())} gray levels apart"
    assert (diff == 0).mean() > 0.95


def gdcm_decode(path, apply_palette: bool = False) -> tuple[np.ndarray, str]:
    """GDCM's decode of every frame (frames x rows x cols x samples), and its photometric
    interpretation; with ``apply_palette``, GDCM's palette lookup to RGB first."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    image = reader.GetImage()
    if apply_palette:
        lookup = gdcm.ImageApplyLookupTable()
        lookup.SetInput(image)
        assert lookup.Apply()
        image = lookup.GetOutput()
    fmt = image.GetPixelFormat()
    dtype = np.dtype("<u2") if fmt.GetBitsAllocated() == 16 else np.dtype(np.uint8)
    raw = image.GetBuffer().encode("utf-8", errors="surrogateescape")
    cols, rows = image.GetDimension(0), image.GetDimension(1)
    arr = np.frombuffer(raw, dtype).reshape(-1, rows, cols, fmt.GetSamplesPerPixel())
    return arr, str(image.GetPhotometricInterpretation()).strip()


# --------------------------------------------------------------------------- colour


def test_rgb_against_the_raw_bytes(pydicom_data):
    ds = pydicom.dcmread(pydicom_data / "US1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    raw = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)
    assert_within_one(decode_frame(ds, 0), luma(raw))


def test_ybr_rct_lossless_j2k_is_the_uncompressed_image(pydicom_data):
    """US1_J2KR holds US1_UNCR's pixels (reversible colour transform, lossless)."""
    raw = pydicom.dcmread(pydicom_data / "US1_UNCR.dcm").PixelData
    ds = pydicom.dcmread(pydicom_data / "US1_J2KR.dcm")
    assert ds.PhotometricInterpretation == "YBR_RCT"
    rgb = np.frombuffer(raw, np.uint8).reshape(ds.Rows, ds.Columns, 3)
    assert_within_one(decode_frame(ds, 0), luma(rgb))


def test_ybr_ict_lossy_j2k_against_gdcm(pydicom_data):
    path = pydicom_data / "US1_J2KI.dcm"
    frames, photometric = gdcm_decode(path)
    assert photometric in ("RGB", "YBR_ICT")  # GDCM's J2K codec returns the inverse ICT
    assert_within_one(decode_frame(pydicom.dcmread(path), 0), luma(frames[0]))


def _ybr_full_to_rgb_unclipped(ybr: np.ndarray) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2 (YBR_FULL): R = Y + 1.402 (Cr - 128) etc., without clipping."""
    y, cb, cr = (ybr[..., k].astype(np.float64) for k in range(3))
    return np.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
         y + 1.772 * (cb - 128)], axis=-1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "name,frame", [("color3d_jpeg_baseline.dcm", 60), ("examples:ybr_color", 15)]
)
def test_ybr_full_422_jpeg_against_its_luma_channel(pydicom_data, name, frame):
    """JPEG baseline YBR_FULL_422 cines: decoded without colour conversion, Y is the luma
    itself. Where the colour lies inside the RGB cube (no clipping on the way to RGB), gray
    must be Y; everywhere, it must be the luma of pydicom's own YBR -> RGB conversion."""
    path = (
        pydicom.examples.get_path(name.split(":")[1])
        if name.startswith("examples:")
        else pydicom_data / name
    )
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and int(ds.NumberOfFrames) > frame
    ybr = pixel_array(path, index=frame, as_rgb=False)
    got = decode_frame(ds, frame)
    assert_within_one(got, luma(convert_color_space(ybr, "YBR_FULL", "RGB")))
    unclipped = _ybr_full_to_rgb_unclipped(ybr)  # rounds into 0..255: nothing to clip
    inside = ((unclipped >= -0.5) & (unclipped < 255.5)).all(axis=-1)
    assert inside.mean() > 0.6  # the rest: dark or bright pixels with a trace of colour
    diff = np.abs(got.astype(np.int64) - ybr[..., 0])
    assert diff[inside].max() <= 1


@pytest.mark.parametrize(
    "name,frame",
    [
        ("OBXXXX1A.dcm", 0),
        ("OBXXXX1A_expb.dcm", 0),  # big endian: 8-bit values in 16-bit LUT entries
        ("OBXXXX1A_rle.dcm", 0),
        ("OBXXXX1A_2frame.dcm", 1),
        ("gdcm-US-ALOKA-16.dcm", 0),  # 16-bit pixels, 16-bit segmented palette
        ("gdcm-US-ALOKA-16_big.dcm", 0),
    ],
)
def test_palette_colour_against_gdcm_s_lookup(pydicom_data, name, frame):
    path = pydicom_data / name
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    frames, photometric = gdcm_decode(path, apply_palette=True)
    assert photometric == "RGB"
    rgb = frames[frame]
    full_scale = 65535 if rgb.dtype.itemsize == 2 else 255
    assert_within_one(decode_frame(ds, frame), luma(rgb, full_scale))


# --------------------------------------------------------------------------- monochrome


def _mono(pixels: np.ndarray, photometric: str, bits_stored: int) -> Dataset:
    ds = us_dataset(np.zeros(pixels.shape, np.uint8))
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelData = pixels.tobytes()
    return ds


def test_monochrome1_8_bit_is_inverted():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = decode_frame(_mono(pixels, "MONOCHROME1", 8), 0)
    np.testing.assert_array_equal(got, 255 - pixels)


def test_monochrome1_12_bit_without_a_window_uses_its_bit_range_inverted():
    pixels = (np.arange(4096, dtype=np.uint16)).reshape(64, 64)
    got = decode_frame(_mono(pixels, "MONOCHROME1", 12), 0)
    np.testing.assert_array_equal(got, 255 - np.rint(pixels * 255.0 / 4095).astype(np.uint8))


def window_by_hand(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, LINEAR, straight to an output range of 0..255."""
    x = x.astype(np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.where(x <= low, 0, np.where(x > high, 255, y)))


def assert_nearly_exact(got: np.ndarray, ref: np.ndarray) -> None:
    """Equal, but for a value that falls within float rounding of a half (then one apart)."""
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, np.bincount(diff.ravel())


def test_a_window_maps_its_own_range_not_the_image_s(tmp_path):
    """A real 16-bit file with a window (pydicom's MR example: centre 600, width 1600) whose
    darkest pixel lies inside the window: it is not black, whatever the image holds."""
    ds = pydicom.examples.mr
    raw = ds.pixel_array
    assert raw.min() > 600 - 800  # inside the window: a stretch to the image's range shows
    got = decode_frame(pydicom.dcmread(pydicom.examples.get_path("mr")), 0)
    assert_nearly_exact(got, window_by_hand(raw, 600, 1600))


def test_a_window_in_rescaled_units_and_monochrome1():
    """The window is in the units of the modality LUT (RescaleSlope/Intercept) output;
    MONOCHROME1 inverts the windowed gray."""
    pixels = np.arange(0, 4096, 2, dtype=np.uint16).reshape(32, 64)
    ds = _mono(pixels, "MONOCHROME2", 12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.WindowCenter, ds.WindowWidth = 1000, 3000
    want = window_by_hand(pixels * 2.0 - 1024, 1000, 3000)
    assert_nearly_exact(decode_frame(ds, 0), want)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert_nearly_exact(decode_frame(ds, 0), 255 - want)


def test_a_voi_lut_sequence_maps_through_its_table():
    """A 12-bit image through a 10-bit VOI LUT of 1024 entries starting at 1000: values
    below the first entry take the first, above the last the last; 0..1023 is the output
    range, which this image's values (800-1823) do not fill at the top."""
    pixels = (800 + np.arange(2048) // 2).astype(np.uint16).reshape(32, 64)
    ds = _mono(pixels, "MONOCHROME2", 12)
    table = (np.sqrt(np.arange(1024) / 1023) * 1023).astype(np.uint16)  # a gamma curve
    item = Dataset()
    item.LUTDescriptor = [1024, 1000, 10]
    item.LUTData = table.tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    index = np.clip(pixels.astype(np.int64) - 1000, 0, 1023)
    want = np.rint(table[index] * 255.0 / 1023)
    assert_nearly_exact(decode_frame(ds, 0), want)
