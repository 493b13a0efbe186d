"""Finding the catalogued image a label file belongs to.

Exported images are named ``img000123`` (the image's catalogue id, nothing else). Labels made
before datatool are matched through the original DICOM file they mirror: its SOP Instance UID
is turned into the keyed UID the catalogue holds; nothing else of the file is read or kept.

A cine (a DICOM file of several frames) is one source file with an image per ingested frame:
a label file for it is matched to the whole :class:`Cine` (its frames by their 0-based
index), and which slice goes to which frame is the reader's business (``--cine-frame`` names
the frame of a one-slice map, :func:`cine_frame_index`). People count frames from 1:
:func:`frame_label` names a frame as ``img000123 (R_cine.dcm, frame 3 of 8)``, never with
the original file's folders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import FileStatus, Image, SourceFile
from datatool.core.errors import UsageError
from datatool.ingest import deid
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


@dataclass
class Cine:
    """A cine's catalogued frames: ``frames`` maps a 0-based frame index to its image (a
    row of :data:`FRAME_COLUMNS`); frames
    that ingest did not take are missing. ``named`` is the frame a label file named by an
    image id (``img000123``) points to, if it was matched that way."""

    source_file_id: int
    n_frames: int
    frames: dict[int, Any] = field(default_factory=dict)
    named: int | None = None

    @property
    def first(self) -> Any:
        """The catalogued frame with the lowest index (whose id names the cine's export)."""
        return self.frames[min(self.frames)]


#: The columns of a cine's frames that :func:`cines_of` reads (rows usable without a session).
FRAME_COLUMNS = (
    Image.id,
    Image.source_file_id,
    Image.frame_index,
    Image.store_hash,
    Image.rows,
    Image.cols,
    Image.mm_per_px_x,
    Image.mm_per_px_y,
)
CINE_FRAME_HELP = "first, middle, or a frame number counted from 1"


def cine_frame_index(spec: str, n_frames: int) -> int:
    """The 0-based frame ``--cine-frame`` names in a cine of ``n_frames``: ``first`` (0),
    ``middle`` (``n_frames // 2``, the frame 'ingest --frames middle' takes) or a number
    counted from 1 as people count. Raises :class:`NoImage` for a number past the cine's
    end (that cine's own problem); the spelling is checked by :func:`check_cine_frame`."""
    value = check_cine_frame(spec)
    if value == "first":
        return 0
    if value == "middle":
        return n_frames // 2
    number = int(value)
    if number > n_frames:
        raise NoImage(
            f"--cine-frame {number} is past the end of the cine: it has {n_frames} frames "
            f"(1 to {n_frames})"
        )
    return number - 1


def check_cine_frame(spec: str) -> str:
    """``--cine-frame`` as given, normalised (``first``, ``middle`` or a number from 1);
    anything else is a usage error."""
    value = str(spec).strip().lower()
    if value in ("first", "middle") or (value.isdigit() and int(value) >= 1):
        return value if not value.isdigit() else str(int(value))
    raise UsageError(f"--cine-frame must be {CINE_FRAME_HELP}, not {excerpt(str(spec))}")


def frame_label(
    image_id: int | None, frame_index: int, n_frames: int, file_name: str | None = None
) -> str:
    """A cine frame as people read it: ``img000123 (R_cine.dcm, frame 3 of 8)`` (the frame
    counted from 1; the file by its name alone, never its folders, which may hold record
    numbers; without an image: ``frame 3 of 8``)."""
    where = f"frame {frame_index + 1} of {n_frames}"
    if file_name:
        where = f"{Path(file_name).name}, {where}"
    return where if image_id is None else f"{image_name(image_id)} ({where})"


def cines_of(session: Session, source_file_ids: Iterable[int]) -> dict[int, Cine]:
    """The catalogued frames of the given source files (several frames each), by source file
    id: rows of :data:`FRAME_COLUMNS`."""
    ids = sorted(set(source_file_ids))
    cines: dict[int, Cine] = {}
    if not ids:
        return cines
    for chunk in (ids[k : k + 5000] for k in range(0, len(ids), 5000)):
        for row in session.execute(
            select(*FRAME_COLUMNS, SourceFile.n_frames)
            .join(SourceFile, Image.source_file_id == SourceFile.id)
            .where(Image.source_file_id.in_(chunk))
            .order_by(Image.source_file_id, Image.frame_index)
        ):
            cine = cines.setdefault(row.source_file_id, Cine(row.source_file_id, row.n_frames))
            cine.frames[row.frame_index] = row
    return cines


def match_sop_uid(session: Session, key: bytes, sop_instance_uid: str) -> Image | Cine:
    """The catalogued image of a DICOM file's SOP Instance UID, or its :class:`Cine` when
    the file holds several frames."""
    keyed = deid.uid_for(key, sop_instance_uid.strip())
    # by the UID's index alone: a filter on the status too lets SQLite (no statistics) walk
    # the status index, every ingested file (see pipeline.CatalogueBatch)
    source = next(
        (
            f
            for f in session.scalars(select(SourceFile).where(SourceFile.sop_uid == keyed))
            if f.status == FileStatus.ingested
        ),
        None,
    )
    if source is None:
        raise NoImage("its DICOM image was never ingested (run 'datatool ingest' on it first)")
    if (source.n_frames or 1) > 1:
        cine = cines_of(session, [source.id]).get(source.id)
        if cine is None:
            raise NoImage("its DICOM file is a cine with no frame in the catalogue")
        return cine
    images = list(
        session.scalars(
            select(Image).where(Image.source_file_id == source.id).order_by(Image.frame_index)
        )
    )
    if len(images) != 1:
        raise NoImage(f"its DICOM file has {len(images)} images in the catalogue, expected 1")
    return images[0]


def image_for_sop_uid(session: Session, key: bytes, sop_instance_uid: str) -> Image:
    """The one image of a still's SOP Instance UID (a cine's frames: :func:`match_sop_uid`)."""
    found = match_sop_uid(session, key, sop_instance_uid)
    if isinstance(found, Cine):
        raise NoImage(
            f"its DICOM file is a cine of {found.n_frames} frames, not one image: name "
            "the frame by its image id (imgNNNNNN)"
        )
    return found


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
    from datatool.ingest.dicom import read_header  # pydicom: only where a file is read

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


def match_dicom(session: Session, key: bytes, dicom_path: Path) -> Image | Cine:
    """The image of an original DICOM file, or its :class:`Cine` (see :func:`match_sop_uid`)."""
    return match_sop_uid(session, key, read_sop_instance_uid(dicom_path))
