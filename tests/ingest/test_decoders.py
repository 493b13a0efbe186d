"""Ingest asks pydicom for a faster decoder than its first choice for RLE and JPEG baseline
(``dicom.FASTER_DECODERS``): it must give the very pixels pydicom's own choice gives, on
every file of those syntaxes in pydicom-data (vendor files) and pydicom's test files, or the
same image ingested before and after would get another pixel hash."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from datatool.ingest import dicom
from datatool.ingest.dicom import FASTER_DECODERS, BadDicom, decode_frame, decoder_for


def _files(pydicom_data: Path) -> list[Path]:
    own = Path(get_testdata_file("CT_small.dcm")).parent
    return sorted(pydicom_data.glob("*.dcm")) + sorted(own.rglob("*.dcm"))


def test_the_faster_decoders_are_the_ones_asked_for():
    assert decoder_for(RLELossless) == "pylibjpeg"  # both are dependencies
    assert decoder_for(JPEGBaseline8Bit) == "pillow"
    assert decoder_for(JPEG2000Lossless) == "" and decoder_for(ExplicitVRLittleEndian) == ""


def test_they_give_the_pixels_of_pydicoms_own_choice(pydicom_data, monkeypatch):
    compared: dict[str, int] = {}
    for path in _files(pydicom_data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except Exception:
                continue
            syntax = ds.file_meta.get("TransferSyntaxUID")
            if syntax not in FASTER_DECODERS or "PixelData" not in ds:
                continue
            try:
                expected = pixel_array(ds)
            except Exception:  # pydicom's own choice cannot decode it: nothing to compare
                continue
            got = pixel_array(ds, decoding_plugin=decoder_for(syntax))
        assert got.dtype == expected.dtype and np.array_equal(got, expected), path.name
        compared[syntax.name] = compared.get(syntax.name, 0) + 1
        try:
            gray = decode_frame(ds, 0)
        except BadDicom:  # not an image datatool takes (checked elsewhere)
            continue
        with monkeypatch.context() as patched:  # pydicom's own choice, through ingest's path
            patched.setattr(dicom, "decoder_for", lambda _syntax: "")
            assert np.array_equal(decode_frame(ds, 0), gray), path.name
    # pydicom-data and pydicom 3.0's test files hold 15 JPEG baseline and 12 RLE files
    assert compared.get(JPEGBaseline8Bit.name, 0) >= 10, compared
    assert compared.get(RLELossless.name, 0) >= 10, compared


@pytest.mark.parametrize("name", ["OBXXXX1A_rle.dcm", "OBXXXX1A_rle_2frame.dcm"])
def test_an_rle_frame_decodes_as_the_uncompressed_file(pydicom_data, name):
    """OBXXXX1A_rle is OBXXXX1A compressed without loss (a palette-colour ultrasound image):
    the same gray image either way, each frame."""
    ds = pydicom.dcmread(pydicom_data / name)
    plain = pydicom.dcmread(pydicom_data / name.replace("_rle", ""))
    assert decoder_for(ds.file_meta.TransferSyntaxUID) == "pylibjpeg"
    for index in range(int(ds.get("NumberOfFrames") or 1)):
        assert np.array_equal(decode_frame(ds, index), decode_frame(plain, index))
