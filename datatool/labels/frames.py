"""How datatool names the frames of a cine for people (Label Studio tasks, QA flags, the
DICOM SEG export, propagated drafts).

A frame of a cine is an image like a still (its own ``img000123``, task, labels). Where people
meet it, it also says which file and frame it is, so that the frames of one loop read as
such: ``img000123 (cine file 7, frame 3 of 8)``: the frame counted from 1 as
people count, out of the DICOM's NumberOfFrames (ingest may have taken only some of them).
The catalogue keeps no file names or folders (a folder of the originals may be a patient's
record number), so the file is named by its catalogue number, the same for all its frames.
A still's task has no ``name``: its image id says it all.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import Image, SourceFile
from datatool.labels.matching import image_name

CHUNK = 500  # ids per query (SQLite's limit on parameters)


def frame_place(source_file: int, frame_index: int, n_frames: int) -> str:
    """``cine file 7, frame 3 of 8``: ``frame_index`` is 0-based."""
    return f"cine file {source_file}, frame {frame_index + 1} of {n_frames}"


def frame_places(session: Session, image_ids: Iterable[int]) -> dict[int, str]:
    """Where each of ``image_ids`` that is a frame of a cine (a file of several frames) lies,
    as :func:`frame_place` says it; stills are left out."""
    ids = sorted(set(image_ids))
    places: dict[int, str] = {}
    for start in range(0, len(ids), CHUNK):
        rows = session.execute(
            select(Image.id, Image.source_file_id, Image.frame_index, SourceFile.n_frames)
            .join(SourceFile, SourceFile.id == Image.source_file_id)
            .where(Image.id.in_(ids[start : start + CHUNK]), SourceFile.n_frames > 1)
        )
        for image_id, source_file, frame_index, n_frames in rows:
            places[image_id] = frame_place(source_file, frame_index, n_frames)
    return places


def frame_names(session: Session, image_ids: Iterable[int]) -> dict[int, str]:
    """The task names of those of ``image_ids`` that are frames of a cine:
    ``img000123 (cine file 7, frame 3 of 8)``."""
    return {
        i: f"{image_name(i)} ({place})" for i, place in frame_places(session, image_ids).items()
    }
