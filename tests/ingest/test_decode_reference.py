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
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from datatool.ingest.dicom import (
    BadDicom,
    calibration,
    declared_pixel_bytes,
    decode_frame,
    frame_indices,
    n_frames,
    to_gray8,
    ultrasound_regions,
)
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


# --------------------------------------------------------------------------- calibration
# (PS3.3 C.8.5.5: PhysicalUnitsX/YDirection 3 is cm; PhysicalDeltaX/Y are cm per pixel)


def _region(x0, y0, x1, y1, dx=0.01, dy=0.01, units=(3, 3), spatial=1, data_type=1):
    item = Dataset()
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    if units is not None:
        item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    if dx is not None:
        item.PhysicalDeltaX = dx
    if dy is not None:
        item.PhysicalDeltaY = dy
    if spatial is not None:
        item.RegionSpatialFormat = spatial
    if data_type is not None:
        item.RegionDataType = data_type
    return item


def _with_regions(*items: Dataset, rows: int = 40, cols: int = 60) -> Dataset:
    ds = us_dataset(np.zeros((rows, cols), np.uint8), mm_per_px=None)
    ds.SequenceOfUltrasoundRegions = Sequence(list(items))
    return ds


def test_a_pixel_that_is_not_square_keeps_its_x_and_y_spacing():
    """PhysicalDeltaX 0.01 cm and PhysicalDeltaY 0.025 cm: 0.1 mm across, 0.25 mm down.
    Negative deltas (a flipped axis) are the same size."""
    ds = _with_regions(_region(0, 0, 59, 39, dx=0.01, dy=0.025, spatial=1, data_type=1))
    (region,) = ultrasound_regions(ds)
    assert region.as_dict() == {
        "x0": 0,
        "y0": 0,
        "x1": 59,
        "y1": 39,
        "mm_per_px_x": pytest.approx(0.1, rel=1e-12),
        "mm_per_px_y": pytest.approx(0.25, rel=1e-12),
        "data_type": 1,
        "spatial_format": 1,
    }
    assert calibration([region]) == pytest.approx((0.1, 0.25), rel=1e-12)
    ds = _with_regions(_region(0, 0, 59, 39, dx=-0.02, dy=-0.03, spatial=2, data_type=18))
    (region,) = ultrasound_regions(ds)
    assert (region.mm_per_px_x, region.mm_per_px_y) == pytest.approx((0.2, 0.3), rel=1e-12)
    assert (region.data_type, region.spatial_format) == (18, 2)


@pytest.mark.filterwarnings("ignore:Invalid value:UserWarning")  # a negative corner
def test_regions_are_clipped_to_the_image_and_dropped_outside_it():
    """A 40 x 60 image (x 0..59, y 0..39). A region from (-5, -3) to (70, 50) is the whole
    image; one from (0, 0) to (59, 39) exactly too; one pixel (10, 12) is 1 x 1; a region
    right of the image (x from 60) or below it (y from 40) is dropped."""
    ds = _with_regions(
        _region(-5, -3, 70, 50),
        _region(0, 0, 59, 39),
        _region(10, 12, 10, 12),
        _region(60, 0, 80, 39),
        _region(0, 40, 59, 45),
        _region(1, 1, 58, 38),
    )
    got = [(r.x0, r.y0, r.x1, r.y1, r.area) for r in ultrasound_regions(ds)]
    assert got == [
        (0, 0, 59, 39, 2400),
        (0, 0, 59, 39, 2400),
        (10, 12, 10, 12, 1),
        (1, 1, 58, 38, 58 * 38),
    ]


@pytest.mark.filterwarnings("ignore:A value of type:UserWarning")  # a str in a number
def test_a_region_without_usable_spacing_has_no_mm():
    """Units other than cm on either axis, a delta of 0 on either axis, a missing or
    unreadable delta: the region is kept (its place in the image), without mm. A region
    whose corners are missing or unreadable is skipped."""
    uncalibrated = [
        _region(0, 0, 9, 9, units=(3, 0)),
        _region(0, 0, 9, 9, units=(0, 3)),
        _region(0, 0, 9, 9, units=(4, 4)),  # seconds
        _region(0, 0, 9, 9, units=None),
        _region(0, 0, 9, 9, dx=0.0),
        _region(0, 0, 9, 9, dy=0.0),
        _region(0, 0, 9, 9, dx=None),
        _region(0, 0, 9, 9, dy=None),
        _region(0, 0, 9, 9, dx="wide"),
    ]
    none = _region(0, 0, 9, 9, dx=0.0)
    none.PhysicalDeltaX = None
    regions = ultrasound_regions(_with_regions(*uncalibrated, none))
    assert [(r.x1, r.mm_per_px_x, r.mm_per_px_y) for r in regions] == [(9, None, None)] * 10
    assert calibration(regions) == (None, None)
    missing = _region(0, 0, 9, 9)
    del missing.RegionLocationMaxY1
    unreadable = _region(0, 0, 9, 9)
    unreadable.RegionLocationMinX0 = "left"
    empty = _region(0, 0, 9, 9)
    empty.RegionLocationMinY0 = None
    untyped = _region(0, 0, 9, 9, spatial=None, data_type=None)
    untyped.RegionDataType = "B-mode"
    (region,) = ultrasound_regions(_with_regions(missing, unreadable, empty, untyped))
    assert (region.x1, region.data_type, region.spatial_format) == (9, None, None)
    assert ultrasound_regions(us_dataset(np.zeros((4, 4), np.uint8), mm_per_px=None)) == []


def test_calibration_is_the_largest_2d_region_s():
    """Of a 2D region 20 x 10 at 0.1 mm, a larger M-mode region (spatial format 2, 60 x 30)
    at 0.5 mm and a region with no spatial format 10 x 30 at 0.3 x 0.4 mm, the last (300 px)
    wins over the first (200 px); the M-mode one never counts, nor a larger uncalibrated
    one (the whole image, 2400 px)."""
    two_d = _region(0, 0, 19, 9, dx=0.01, dy=0.01, spatial=1)
    m_mode = _region(0, 10, 59, 39, dx=0.05, dy=0.05, spatial=2)
    plain = _region(20, 0, 29, 29, dx=0.03, dy=0.04, spatial=None)
    bare = _region(0, 0, 59, 39, units=None)
    regions = ultrasound_regions(_with_regions(two_d, m_mode, plain, bare))
    assert [r.area for r in regions] == [200, 1800, 300, 2400]
    assert calibration(regions) == pytest.approx((0.3, 0.4), rel=1e-12)
    assert calibration(regions[:2]) == pytest.approx((0.1, 0.1), rel=1e-12)
    assert calibration([regions[1], regions[3]]) == (None, None)
    assert calibration([]) == (None, None)


# --------------------------------------------------------------------------- frames and sizes


def test_which_frames_each_mode_takes():
    """auto: every frame of a cine of up to 32 frames, else the middle one (index n // 2)."""
    assert frame_indices(1, "auto") == [0]
    assert frame_indices(32, "auto") == list(range(32))
    assert frame_indices(33, "auto") == [16]
    assert frame_indices(40, "all") == list(range(40))
    assert frame_indices(40, "first") == [0]
    assert frame_indices(40, "middle") == [20]
    assert frame_indices(5, "middle") == [2]
    assert frame_indices(5, "first") == [0]
    with pytest.raises(ValueError) as caught:
        frame_indices(5, "last")
    assert str(caught.value) == "--frames must be one of auto, all, first, middle"


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS:UserWarning")
def test_the_number_of_frames_and_the_pixel_bytes_a_header_declares():
    """Rows 3, Columns 5: 8-bit gray 15 bytes a frame; 16-bit RGB 3 x 5 x 3 x 2 = 90; 1-bit,
    7 frames: 105 bits, 14 bytes (13 and a bit rounded up). A missing or empty
    NumberOfFrames is one frame, an empty SamplesPerPixel one sample."""
    ds = us_dataset(np.zeros((3, 5), np.uint8))
    assert (n_frames(ds), declared_pixel_bytes(ds)) == (1, 15)
    ds.NumberOfFrames = None
    ds.SamplesPerPixel = None
    assert (n_frames(ds), declared_pixel_bytes(ds)) == (1, 15)
    ds.NumberOfFrames, ds.SamplesPerPixel, ds.BitsAllocated = 4, 3, 16
    assert (n_frames(ds), declared_pixel_bytes(ds)) == (4, 3 * 5 * 3 * 2 * 4)
    ds.NumberOfFrames, ds.SamplesPerPixel, ds.BitsAllocated = 7, 1, 1
    assert declared_pixel_bytes(ds) == 14
    ds.NumberOfFrames = 1
    assert declared_pixel_bytes(ds) == 2  # 15 bits
    ds.Rows, ds.Columns = 1, 8
    assert declared_pixel_bytes(ds) == 1  # 8 bits, no byte more
    for keyword, value in (
        ("Rows", 0),
        ("Columns", 0),
        ("NumberOfFrames", -1),
        ("BitsAllocated", 0),
    ):
        bad = us_dataset(np.zeros((3, 5), np.uint8))
        setattr(bad, keyword, value)
        with pytest.raises(ValueError, match=r"^non-positive size$"):
            declared_pixel_bytes(bad)
    for raw, shown in ((b"many", "'many'"), (b"2\\3 ", "[2, 3]")):  # as read from a file
        bad = us_dataset(np.zeros((3, 5), np.uint8))
        bad[0x00280008] = RawDataElement(Tag(0x00280008), "IS", len(raw), raw, 0, False, True)
        with pytest.raises(BadDicom) as caught:
            n_frames(bad)
        assert str(caught.value) == f"invalid NumberOfFrames {shown}"


# --------------------------------------------------------------------------- gray by hand


def assert_gray(got: np.ndarray, want) -> None:
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def _header(rows: int, cols: int, **elements) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = rows, cols
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def test_colour_to_gray_in_integer_bt601_by_hand():
    """(77 R + 150 G + 29 B + 128) >> 8, worked out by hand: red 255 -> 19763 >> 8 = 77,
    green 255 -> 38378 >> 8 = 149, blue 255 -> 7523 >> 8 = 29, white -> 65408 >> 8 = 255,
    (1, 1, 76) -> 77 + 150 + 2204 + 128 = 2559 >> 8 = 9 (the float luma 9.55 rounds to 10:
    the one gray level the integer arithmetic may lose), (2, 0, 0) -> 282 >> 8 = 1."""
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 255], [1, 1, 76], [2, 0, 0]]],
        np.uint8,
    )
    want = np.array([[77, 149, 29], [255, 9, 1]], np.uint8)
    got = to_gray8(rgb, _header(2, 3))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    # 8-bit values in 16-bit entries (max 255) are taken as they are
    assert_gray(to_gray8(rgb.astype(np.uint16), _header(2, 3)), want)
    # full-scale 16-bit: the high byte (256 x v + 255 >> 8 = v); a maximum of 256 is 1
    assert_gray(to_gray8(rgb.astype(np.uint16) * 256 + 255, _header(2, 3)), want)
    ones = np.full((2, 3, 3), 256, np.uint16)
    assert_gray(to_gray8(ones, _header(2, 3)), np.ones((2, 3), np.uint8))
    # any other type: stretched from 0 to the image's maximum (1000: 200 -> 51, 1000 -> 255,
    # 2 -> 0.51 -> 1), below 0 black
    wide = np.zeros((2, 3, 3), np.int32)
    wide[0, 0], wide[0, 1], wide[1, 0], wide[1, 1] = 200, 1000, -100, 2
    want_wide = np.array([[51, 255, 0], [0, 1, 0]], np.uint8)
    assert_gray(to_gray8(wide, _header(2, 3)), want_wide)
    assert_gray(to_gray8(wide * 0, _header(2, 3)), np.zeros((2, 3), np.uint8))


def test_monochrome_without_a_window_spans_its_stored_bits():
    """Signed 16-bit: -32768 -> 0, 32767 -> 255, 0 -> 32768 x 255 / 65535 = 127.502 -> 128,
    -1 -> 127.498 -> 127. Signed 12-bit stored: -2048 -> 0, 2047 -> 255, 0 -> 2048 x 255 /
    4095 = 127.53 -> 128 (and so unsigned 2048). Unsigned 16-bit without BitsStored
    (BitsAllocated's 16 then): 65535 -> 255, 257 -> 1, 32896 -> 128."""
    signed = np.array([[-32768, 32767], [0, -1]], np.int16)
    ds = _header(2, 2, BitsAllocated=16, BitsStored=16, PixelRepresentation=1)
    assert_gray(to_gray8(signed, ds), [[0, 255], [128, 127]])
    ds.BitsStored = 12
    twelve = np.array([[-2048, 2047], [0, 0]], np.int16)
    assert_gray(to_gray8(twelve, ds), [[0, 255], [128, 128]])
    # 12 bits stored in 16: 4095 -> 255, 2048 -> 2048 x 255 / 4095 = 127.53 -> 128; a value
    # above the stored bits (stray high bits) is white, never wrapped round
    ds = _header(2, 2, BitsAllocated=16, BitsStored=12, PixelRepresentation=0)
    stray = np.array([[4095, 2048], [5000, 65535]], np.uint16)
    assert_gray(to_gray8(stray, ds), [[255, 128], [255, 255]])
    unsigned = np.array([[65535, 257], [32896, 0]], np.uint16)
    ds = _header(2, 2, BitsAllocated=16, PhotometricInterpretation="MONOCHROME2")
    assert_gray(to_gray8(unsigned, ds), [[255, 1], [128, 0]])
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert_gray(to_gray8(unsigned, ds), [[0, 254], [127, 255]])
    with pytest.raises(BadDicom) as caught:
        to_gray8(unsigned, _header(2, 3))
    assert str(caught.value) == "decoded frame is (2, 2), header says 2x3"
    with pytest.raises(BadDicom) as caught:  # colour: rows and columns only
        to_gray8(np.zeros((2, 3, 3), np.uint8), _header(4, 3))
    assert str(caught.value) == "decoded frame is (2, 3), header says 4x3"
