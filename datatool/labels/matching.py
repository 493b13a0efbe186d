"""Finding the catalogued image a label file belongs to.

Exported images are named ``img000123`` (the image's catalogue id, nothing else). Labels made
before datatool are matched through the original DICOM file they mirror: its SOP Instance UID
is turned into the keyed UID the catalogue holds; nothing else of the file is read or kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import FileStatus, Image, SourceFile
from datatool.core.errors import UsageError
from datatool.ingest import deid
from datatool.ingest.dicom import read_header
from datatool.labels.quoting import clipped, excerpt

NAME_RE = re.compile(r"img(\d{6,})")
_ID_TOKEN = re.compile(r"(?:img)?(\d+)", re.IGNORECASE)


class NoImage(Exception):
    """No catalogued image for a label; ``str()`` is the one-line reason."""


def image_name(image_id: int) -> str:
    return f"img{image_id:06d}"


def image_id_from_name(name: str) -> int | None:
    match = NAME_RE.search(name)
    return int(match.group(1)) if match else None


def parse_image_ids(items: str | Iterable[int | str]) -> list[int]:
    """Image ids as people give them: numbers or names (``12``, ``img000012``, any case),
    in a list or one comma-separated string (``"12,img000015"``). A token that is neither,
    or no id at all, is a usage error."""
    tokens = items.split(",") if isinstance(items, str) else list(items)
    ids = []
    for token in tokens:
        if isinstance(token, int) and not isinstance(token, bool):
            ids.append(token)
            continue
        text = str(token).strip()
        if not text and isinstance(items, str):
            continue  # "1,,2" or a trailing comma
        match = _ID_TOKEN.fullmatch(text)
        if match is None:
            raise UsageError(
                f"{excerpt(text)} is not an image id (a number such as 12, or img000012)"
            )
        ids.append(int(match.group(1)))
    if not ids:
        raise UsageError("no image ids given (numbers such as 12, or names such as img000012)")
    return ids


def image_by_id(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NoImage(f"image {image_name(image_id)} does not exist in this catalogue")
    return image


def image_for_sop_uid(session: Session, key: bytes, sop_instance_uid: str) -> Image:
    keyed = deid.uid_for(key, sop_instance_uid.strip())
    source = session.scalar(
        select(SourceFile).where(
            SourceFile.sop_uid == keyed, SourceFile.status == FileStatus.ingested
        )
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


def read_sop_instance_uid(dicom_path: Path) -> str:
    """The SOP Instance UID of a DICOM file, reading nothing else of it (no pixels, no other
    attribute). Raises :class:`NoImage` with the reason when there is no such file or it is
    not a readable DICOM file with that UID."""
    try:
        found = Path(dicom_path).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        found = False
    if not found:
        raise NoImage(f"no DICOM file {clipped(dicom_path)} to match it to")
    try:
        # a deflated file is inflated only as far as its header: never a bomb's whole stream
        ds = read_header(Path(dicom_path), specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID).strip()
    except Exception:
        raise NoImage(
            f"{clipped(dicom_path)} is not a readable DICOM file with a SOP Instance UID"
        ) from None


def image_for_dicom(session: Session, key: bytes, dicom_path: Path) -> Image:
    """The image of an original DICOM file (read for its SOP Instance UID only)."""
    return image_for_sop_uid(session, key, read_sop_instance_uid(dicom_path))
