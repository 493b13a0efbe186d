"""The DICOM file of a demo image: burned-in overlays, the header (with fake PHI) and the
pixel data in one of several transfer syntaxes."""

from __future__ import annotations

import io
from datetime import datetime
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

from datatool.demo.patients import _Patient
from datatool.demo.probe import (
    _CX,
    _FAN_PX,
    _Y_SKIN,
    BANNER_ROWS,
    COLUMNS,
    ROWS,
    _geometry,
)

INSTITUTION = "Demo General Hospital"
MANUFACTURER = "datatool-demo"
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "DEMO_VENDOR"

#: The transfer syntaxes written, in the order they are cycled through (from a seeded start).
ENCODINGS: tuple[tuple[str, str], ...] = (
    ("mono", str(ExplicitVRLittleEndian)),
    ("rgb", str(ExplicitVRLittleEndian)),
    ("rle_rgb", str(RLELossless)),
    ("jpeg", str(JPEGBaseline8Bit)),
    ("j2k", str(JPEG2000Lossless)),
)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the bitmap default font
        return ImageFont.load_default()


def _draw_overlays(
    grey: np.ndarray,
    colour: bool,
    pt: _Patient,
    side: str,
    when: datetime,
    depth_cm: float,
    gain_db: float,
) -> np.ndarray:
    g = _geometry()
    if colour:
        img = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")

        def c(rgb, _lvl):
            return rgb
    else:
        img = Image.fromarray(grey, "L")

        def c(_rgb, lvl):
            return lvl

    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, COLUMNS - 1, BANNER_ROWS - 1), fill=c((18, 22, 40), 20))
    big, small = _font(14), _font(11)
    d.text(
        (6, 3), f"{pt.name.replace('^', ' ')}   ID: {pt.mrn}", font=big, fill=c((255, 230, 80), 235)
    )
    d.text((440, 3), when.strftime("%d.%m.%Y %H:%M:%S"), font=big, fill=c((255, 230, 80), 235))
    d.text(
        (6, 21),
        f"{INSTITUTION}   Sciatic ant {side}   Acc {pt.accession}",
        font=small,
        fill=c((120, 220, 255), 200),
    )
    d.text((500, 21), "MI 1.1  TIs 0.4", font=small, fill=c((120, 220, 255), 200))
    # Left vendor column (outside the fan's bounding box).
    _x0, _y0, x1, _y1 = g.region
    lines = [
        "C5-2",
        "MSK",
        "Nerve",
        f"{3.5:.1f}MHz",
        f"Gn {52 + round(gain_db * 2)}",
        "DR 52",
        "FR 24",
        f"D{depth_cm:.1f}cm",
    ]
    for k, t in enumerate(lines):
        d.text((4, 62 + 16 * k), t, font=small, fill=c((230, 230, 230), 210))
    # Orientation marker.
    d.ellipse((54, 50, 62, 58), fill=c((90, 200, 255), 220))
    # Grey bar.
    for k in range(120):
        v = int(255 * k / 119)
        d.line((14, 460 - k, 26, 460 - k), fill=(v, v, v) if colour else v)
    # Depth scale on the right (1 cm ticks) and focus marker.
    cm = _FAN_PX / depth_cm
    xs = x1 + 6
    for k in range(int(depth_cm) + 1):
        y = _Y_SKIN + k * cm
        d.line((xs, y, xs + (8 if k % 5 == 0 else 4), y), fill=c((220, 220, 220), 200))
        if k % 2 == 0 and k > 0:
            d.text((xs + 12, y - 6), str(k), font=small, fill=c((220, 220, 220), 200))
    fy = _Y_SKIN + depth_cm * 0.6 * cm
    d.polygon([(xs + 20, fy), (xs + 28, fy - 5), (xs + 28, fy + 5)], fill=c((255, 200, 0), 220))
    return np.asarray(img)


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(
        prefix=PYDICOM_ROOT_UID, entropy_srcs=[f"demo-{seed}", *[str(p) for p in parts]]
    )


def _build_dataset(
    seed: int,
    pt: _Patient,
    side: str,
    series_no: int,
    inst: int,
    when: datetime,
    series_dt: datetime,
    depth_cm: float,
    gain_db: float,
) -> Dataset:
    g = _geometry()
    sop_uid = _uid(seed, "image", pt.index, side, inst)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DATATOOL_DEMO"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop_uid
    day = pt.study_dt.strftime("%Y%m%d")
    ds.StudyDate = day
    ds.SeriesDate = day
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = pt.study_dt.strftime("%H%M%S")
    ds.SeriesTime = series_dt.strftime("%H%M%S")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = pt.accession
    ds.Modality = "US"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = pt.referrer
    ds.StationName = pt.station
    ds.StudyDescription = "US regional anaesthesia"
    ds.SeriesDescription = f"Sciatic ant {side}"
    ds.OperatorsName = pt.operator
    ds.ManufacturerModelName = "Demo Sono 1"
    ds.PatientName = pt.name
    ds.PatientID = pt.mrn
    ds.PatientBirthDate = pt.birth_date.strftime("%Y%m%d")
    ds.PatientSex = pt.sex
    ds.PatientAge = f"{pt.age:03d}Y"
    ds.PatientSize = f"{pt.height_m:.2f}"
    ds.PatientWeight = f"{pt.weight_kg:.1f}"
    ds.BodyPartExamined = "LEG"
    ds.TransducerData = ["C5-2", "", ""]
    ds.StudyInstanceUID = _uid(seed, "study", pt.index)
    ds.SeriesInstanceUID = _uid(seed, "series", pt.index, side)
    ds.StudyID = f"{pt.index + 1}"
    ds.SeriesNumber = series_no
    ds.InstanceNumber = inst
    ds.Laterality = side
    ds.ImageLaterality = side
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    x0, y0, x1, y1 = g.region
    delta = depth_cm / _FAN_PX
    reg = Dataset()
    reg.RegionSpatialFormat = 1
    reg.RegionDataType = 1
    reg.RegionFlags = 0
    reg.RegionLocationMinX0 = x0
    reg.RegionLocationMinY0 = y0
    reg.RegionLocationMaxX1 = x1
    reg.RegionLocationMaxY1 = y1
    reg.PhysicalUnitsXDirection = 3
    reg.PhysicalUnitsYDirection = 3
    reg.ReferencePixelX0 = round(_CX) - x0  # skin line on the centre line: (0 cm, 0 cm)
    reg.ReferencePixelY0 = round(_Y_SKIN) - y0
    reg.ReferencePixelPhysicalValueX = 0.0
    reg.ReferencePixelPhysicalValueY = 0.0
    reg.PhysicalDeltaX = delta
    reg.PhysicalDeltaY = delta
    reg.TransducerFrequency = 3500
    ds.SequenceOfUltrasoundRegions = Sequence([reg])
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", f"{pt.name} {pt.mrn}")
    block.add_new(0x11, "LO", f"gain {gain_db:+.1f} dB")
    return ds


def _set_pixel_module(ds: Dataset, samples: int) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def _encode(ds: Dataset, kind: str, pixels: np.ndarray) -> None:
    """Pixel data in the encoding ``kind`` (gray for mono kinds, RGB for the colour ones)."""
    if kind == "mono":
        _set_pixel_module(ds, 1)
        ds.PixelData = pixels.tobytes()
    elif kind == "rgb":
        _set_pixel_module(ds, 3)
        ds.PixelData = pixels.tobytes()
    elif kind == "rle_rgb":
        _set_pixel_module(ds, 3)
        ds.compress(RLELossless, pixels, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    elif kind == "j2k":
        _set_pixel_module(ds, 1)
        ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
    elif kind == "jpeg":
        _set_pixel_module(ds, 1)
        buf = io.BytesIO()
        Image.fromarray(pixels, "L").save(buf, format="JPEG", quality=92, optimize=False)
        frame = buf.getvalue()
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{pixels.size / len(frame):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:  # pragma: no cover
        raise ValueError(kind)


@lru_cache(maxsize=1)
def _rle_plugin() -> str:
    from pydicom.pixels.encoders import RLELosslessEncoder

    plugins = RLELosslessEncoder.available_plugins
    return "pylibjpeg" if "pylibjpeg" in plugins else "pydicom"
