"""DICOM Segmentation objects: a label map and its original DICOM image in, a SEG dataset out
(with highdicom). Pure: datasets and arrays, no catalogue.

One SEG per image: a BINARY segmentation whose segments are the protocol's structures in the
protocol's order (segment N is the protocol's N-th structure, the same in every file, also
where a structure is absent), named by the protocol and coded with the structure's code from
the protocol (SNOMED CT where one exists). The SEG references the source image by its SOP
Instance UID and copies its patient and study (highdicom): it belongs with the original.

Only a single-frame source image can be referenced: highdicom 0.28 writes a SEG for an
ultrasound image without a Frame of Reference only when it has one frame (a cine's frame
cannot be referenced: :class:`SegRefused`).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from datatool.core.protocol import Structure

#: The category of every segment: an anatomical structure (DICOM CID 7150).
CATEGORY = codes.cid7150.AnatomicalStructure
#: A structure without a code in the protocol is coded as what it is at least (CID 7150).
FALLBACK_TYPE = codes.cid7150.AnatomicalStructure

MANUAL, SEMIAUTOMATIC, AUTOMATIC = "MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"
SERIES_NUMBER = 9501  # the series of datatool's SEGs (a number no scanner series uses)
MANUFACTURER = "datatool"


class SegRefused(Exception):
    """A SEG cannot be made of this image and label map; ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: its number in the SEG (1..n), the label value it takes from the label
    map, the structure's name and its coded type (``exact``: the structure's own code, not
    a broader one standing in for it)."""

    number: int
    value: int
    label: str
    code: Code
    exact: bool


@dataclass(frozen=True)
class Provenance:
    """Who made the labels: ``MANUAL`` (a person), ``SEMIAUTOMATIC`` (computed from people's
    labels, a consensus) or ``AUTOMATIC`` (a model). An algorithm's name, version, family
    and parameters are recorded in the SEG's Algorithm Identification (not for MANUAL)."""

    algorithm_type: str
    creator: str  # the rater's name (Content Creator's Name for people, Content Label)
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    algorithm_family: Code | None = None
    parameters: dict[str, str] = field(default_factory=dict)


def segment_specs(structures: Sequence[Structure]) -> list[SegmentSpec]:
    """The segments of the protocol's structures, in its order."""
    specs = []
    for number, s in enumerate(structures, start=1):
        if s.code is None:
            code, exact = FALLBACK_TYPE, False
        else:
            code = Code(s.code.value, s.code.scheme, s.code.meaning)
            exact = s.code.exact
        specs.append(SegmentSpec(number, s.value, s.name, code, exact))
    return specs


def _cs(text: str, size: int = 16) -> str:
    """A Code String (Content Label): upper case, digits, space and underscore."""
    return (re.sub(r"[^A-Z0-9_ ]", "_", text.upper()).strip() or "LABELS")[:size]


def _lo(text: str) -> str:
    """A Long String: 64 characters, no backslash or control characters."""
    return re.sub(r"[\\\x00-\x1f]", " ", text)[:64]


def _pn(text: str) -> str:
    """A person name component (no ``^``, ``=``, ``\\``), 64 characters at most."""
    return re.sub(r"[\\^=\x00-\x1f]", " ", text).strip()[:64] or "unknown"


def build_segmentation(
    source: Dataset,
    labels: np.ndarray,
    segments: Sequence[SegmentSpec],
    provenance: Provenance,
    *,
    series_uid: str,
    sop_uid: str,
    software_version: str,
    content_description: str,
    made: dt.datetime,
) -> Dataset:
    """A SEG of ``labels`` (rows x cols, the protocol's label values) over the single-frame
    image ``source``. ``made`` (when the labels were made) is its content, series and
    instance creation date and time, so the same labels give the same bytes. Raises
    :class:`SegRefused` when the image or the label map cannot make one."""
    import highdicom as hd

    with warnings.catch_warnings():  # highdicom's and pydicom's warnings can quote identity
        warnings.simplefilter("ignore")
        try:
            return _build(
                hd,
                source,
                labels,
                segments,
                provenance,
                series_uid=series_uid,
                sop_uid=sop_uid,
                software_version=software_version,
                content_description=content_description,
                made=made,
            )
        except SegRefused:
            raise
        except Exception as exc:  # an original highdicom cannot take: its type only, as the
            # message may quote the original's attributes (identity)
            raise SegRefused(
                f"highdicom cannot make a SEG of this original ({type(exc).__name__})"
            ) from None


def _build(
    hd,
    source: Dataset,
    labels: np.ndarray,
    segments: Sequence[SegmentSpec],
    provenance: Provenance,
    *,
    series_uid: str,
    sop_uid: str,
    software_version: str,
    content_description: str,
    made: dt.datetime,
) -> Dataset:
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise SegRefused(
            f"a multi-frame image ({frames} frames) without a Frame of Reference: highdicom "
            "cannot reference one of its frames in a SEG"
        )
    rows, cols = int(source.Rows), int(source.Columns)
    if labels.shape != (rows, cols):
        raise SegRefused(
            f"the label map is {labels.shape[1]} x {labels.shape[0]} px, the original "
            f"{cols} x {rows} px"
        )
    number_of = {s.value: s.number for s in segments}
    lookup = np.zeros(256, np.uint8)
    for value, number in number_of.items():
        lookup[value] = number
    present = {int(v) for v in np.unique(labels)} - {0}
    unknown = sorted(present - number_of.keys())
    if unknown:
        raise SegRefused(f"label values {unknown} are not the protocol's")
    if not present:
        raise SegRefused("the label map is empty: nothing to segment")
    algorithm = None
    if provenance.algorithm_type != MANUAL:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=_lo(provenance.algorithm_name or "datatool"),
            family=provenance.algorithm_family or codes.cid7162.ArtificialIntelligence,
            version=_lo(provenance.algorithm_version or software_version),
            source=MANUFACTURER,
            parameters={k: _lo(v) for k, v in provenance.parameters.items()} or None,
        )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number,
            segment_label=_lo(s.label),
            segmented_property_category=CATEGORY,
            segmented_property_type=s.code,
            algorithm_type=provenance.algorithm_type,
            algorithm_identification=algorithm,
        )
        for s in segments
    ]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=lookup[labels.astype(np.uint8, copy=False)][None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=_lo(software_version),
        device_serial_number="none",
        content_label=_cs(provenance.creator),
        content_description=_lo(content_description),
        content_creator_name=_pn(provenance.creator)
        if provenance.algorithm_type == MANUAL
        else None,
    )
    # General Image: Patient Orientation is type 2C here (no plane orientation without a
    # Frame of Reference); the source's where it has one, else empty (dciodvfy checks it)
    seg.PatientOrientation = source.get("PatientOrientation", "")
    day, time = made.strftime("%Y%m%d"), made.strftime("%H%M%S")
    for prefix in ("Content", "Series", "InstanceCreation"):
        setattr(seg, f"{prefix}Date", day)
        setattr(seg, f"{prefix}Time", time)
    # what highdicom draws afresh each time: its contribution's time, a dimension UID
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = made.strftime("%Y%m%d%H%M%S")
    dimension_uid = generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["dimension", sop_uid])
    for name in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(name, []):
            item.DimensionOrganizationUID = dimension_uid
    return seg


def segmentation_bytes(seg: Dataset) -> bytes:
    """The SEG as a DICOM file's bytes. Raises :class:`SegRefused` (naming only the error's
    type: the message may quote identity) when an attribute copied from the original cannot
    be written."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            seg.save_as(buffer, enforce_file_format=True)
        except Exception as exc:
            raise SegRefused(
                f"the SEG cannot be written: an attribute of the original is not valid DICOM "
                f"({type(exc).__name__})"
            ) from None
    return buffer.getvalue()


def segment_masks(seg: Dataset, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Read a SEG made by :func:`build_segmentation` back into a label map (rows x cols,
    the protocol's label values), by segment number."""
    import highdicom as hd

    read = hd.seg.Segmentation.from_dataset(seg, copy=True)
    sop = read.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    numbers = [s.number for s in segments]
    pixels = read.get_pixels_by_source_instance(
        [sop], segment_numbers=numbers, combine_segments=False, assert_missing_frames_are_empty=True
    )[0]
    labels = np.zeros(pixels.shape[:2], np.uint8)
    for k, s in enumerate(segments):
        labels[pixels[..., k] > 0] = s.value
    return labels


__all__ = [
    "AUTOMATIC",
    "CATEGORY",
    "MANUAL",
    "SEMIAUTOMATIC",
    "SERIES_NUMBER",
    "Provenance",
    "SegRefused",
    "SegmentSpec",
    "build_segmentation",
    "segment_masks",
    "segment_specs",
    "segmentation_bytes",
]
