"""Finding the catalogued image a label file belongs to.

Exported images are named ``img000123`` (the image's catalogue id, nothing else). Labels made
before datatool are matched through the original DICOM file they mirror: its SOP Instance UID
is turned into the keyed UID the catalogue holds; nothing else of the file is read or kept.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import Image, SourceFile
from datatool.ingest import deid

NAME_RE = re.compile(r"img(\d{6,})")


class NoImage(Exception):
    """No catalogued image for a label; ``str()`` is the one-line reason."""


def image_name(image_id: int) -> str:
    return f"img{image_id:06d}"


def image_id_from_name(name: str) -> int | None:
    match = NAME_RE.search(name)
    return int(match.group(1)) if match else None


def image_by_id(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NoImage(f"image {image_name(image_id)} does not exist in this catalogue")
    return image


def image_for_sop_uid(session: Session, key: bytes, sop_instance_uid: str) -> Image:
    keyed = deid.uid_for(key, sop_instance_uid.strip())
    source = session.scalar(
        select(SourceFile).where(SourceFile.sop_uid == keyed, SourceFile.status == "ingested")
    )
    if source is None:
        raise NoImage("its DICOM image was never ingested (run 'datatool ingest' on it first)")
    images = list(
        session.scalars(
            select(Image).where(Image.source_file_id == source.id).order_by(Image.frame_index)
        )
    )
    if len(images) != 1:
        raise NoImage(
            f"its DICOM file is a cine with {len(images)} images in the catalogue; "
            "label files for cines are not supported"
        )
    return images[0]


def image_for_dicom(session: Session, key: bytes, dicom_path: Path) -> Image:
    """The image of an original DICOM file (read for its SOP Instance UID only)."""
    if not Path(dicom_path).is_file():
        raise NoImage(f"no DICOM file {dicom_path} to match it to")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                dicom_path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
            )
        uid = str(ds.SOPInstanceUID)
    except Exception:
        raise NoImage(
            f"{dicom_path} is not a readable DICOM file with a SOP Instance UID"
        ) from None
    return image_for_sop_uid(session, key, uid)
