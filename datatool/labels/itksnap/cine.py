"""ITK-SNAP sync of cines: a label file matched to a cine (``matching.Cine``) read as a stack
of slices and dealt out to the cine's frames, each then stored like a still's label.

ITK-SNAP saves a cine's segmentation as W x H x N, N the DICOM file's frames (and an export
writes a cine as one such volume, ``itksnap.export``): slice k labels frame k. An empty
slice is no label (nothing stored, not an error). A slice that holds labels for a frame
ingest did not take is noted, not stored. A one-slice map goes to the frame its exported name
names (``img000123_seg.nii.gz``, one frame exported as a still), else to the frame
``--cine-frame`` names; without it, and for any other slice count, the file is rejected with
a one-line reason. Every reason names the frame as people count it (from 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from datatool.core.protocol import Protocol
from datatool.core.store import pixel_digest
from datatool.labels.annotations import SyncReport
from datatool.labels.handouts import Handouts
from datatool.labels.itksnap.formats import (
    SliceCount,
    geometry_notes,
    read_label_file,
    spacing_mm,
)
from datatool.labels.masks import BadLabel, validate_mask
from datatool.labels.matching import (
    CINE_FRAME_HELP,
    Cine,
    NoImage,
    cine_frame_index,
    frame_label,
)


@dataclass
class Match:
    """A label file matched to its image (a still), or to a cine; after
    :func:`expand_cines`, one frame of a cine with its slice (``mask``) read already."""

    path: Path
    rel: str  # relative to the label folder, with forward slashes
    image_id: int
    rows: int
    cols: int
    exported: bool  # an exported segmentation, found by its name
    spacing: tuple[float, float] = (1.0, 1.0)  # the image's, as exported (mm)
    draft: dict | None = None  # the model draft export pre-filled it with (marker record)
    cine: Cine | None = None  # the file labels a cine (image_id: the frame its name names)
    dicom_name: str | None = None  # the original DICOM file's name (no folders), if known
    mask: np.ndarray | None = None  # a cine frame's slice, read and validated already
    frame: tuple[int, int] | None = None  # a cine frame's (0-based index, frames)
    frame_drafts: dict[int, dict | None] = field(default_factory=dict)  # a cine's, by image
    files: int = 1  # label files it stands for in the progress count (a cine's frames: 0/1)
    accepted: bool = False  # a draft still as exported, accepted as it is (--accept-unchanged)


@dataclass
class CineSkips:
    """Cine label files skipped as not labelled yet (as for stills, see ``itksnap.sync``)."""

    not_labelled: int = 0  # exported, every slice still empty
    unsaved: int = 0  # frames still the model draft export wrote into them


def expand_cines(
    matches: list[Match],
    protocol: Protocol,
    cine_frame: str | None,
    had_labels: set[int],
    allow_empty: bool,
    root: Path,
    handouts: Handouts,
    report: SyncReport,
    accept_unchanged: bool = False,
) -> tuple[list[Match], CineSkips]:
    """Every match, a cine's replaced by one match per labelled frame (its slice read and
    validated); a bad cine file is a line in ``report.rejected`` and stores nothing.

    Drafts are judged frame by frame: a frame whose slice is still the model draft export
    wrote into it is not labelled yet (counted in ``unsaved``), whatever the rater changed in
    the other frames, unless ``accept_unchanged`` (the frame is then a draft accepted as it
    is)."""
    out: list[Match] = []
    skips = CineSkips()
    for m in matches:
        if m.cine is None:
            out.append(m)
            continue
        try:
            out.extend(
                _frames(
                    m,
                    protocol,
                    cine_frame,
                    had_labels,
                    allow_empty,
                    root,
                    handouts,
                    report,
                    skips,
                    accept_unchanged,
                )
            )
        except (BadLabel, NoImage) as exc:
            report.rejected.append((str(m.path), str(exc)))
    return out, skips


def _slice_frames(m: Match, count: int, cine_frame: str | None) -> list[int]:
    """The 0-based frame of each of a cine map's ``count`` slices."""
    cine = m.cine
    assert cine is not None
    if count == cine.n_frames:
        return list(range(count))
    if cine.named is not None:  # one frame of the cine exported as a still
        return [cine.named]
    if cine_frame is None:
        raise BadLabel(
            f"a one-slice label map for a cine of {cine.n_frames} frames"
            f"{_of(m)}: say which frame it labels with --cine-frame ({CINE_FRAME_HELP})"
        )
    return [cine_frame_index(cine_frame, cine.n_frames)]


def _of(m: Match) -> str:
    return f" ({m.dicom_name})" if m.dicom_name else ""


def _frames(
    m: Match,
    protocol: Protocol,
    cine_frame: str | None,
    had_labels: set[int],
    allow_empty: bool,
    root: Path,
    handouts: Handouts,
    report: SyncReport,
    skips: CineSkips,
    accept_unchanged: bool = False,
) -> list[Match]:
    cine = m.cine
    assert cine is not None
    n = cine.n_frames
    shape = (m.rows, m.cols)
    try:
        label = read_label_file(m.path, within=root, shape=shape, protocol=protocol, slices=(n, 1))
    except SliceCount as exc:
        raise BadLabel(
            f"label map has {exc.count} slices, the cine{_of(m)} has {n} frames: expected "
            f"{n} (a slice a frame), or 1 with --cine-frame"
        ) from None
    stack = label.array
    indices = _slice_frames(m, stack.shape[0], cine_frame)
    masks = []
    for k, index in enumerate(indices):
        try:
            masks.append(validate_mask(stack[k], protocol, shape, allow_empty=True))
        except BadLabel as exc:
            if len(indices) == 1:
                raise
            row = cine.frames.get(index)
            frame = frame_label(None if row is None else row.id, index, n, m.dicom_name)
            raise BadLabel(f"slice {k + 1}, {frame}: {exc}") from None
    report.notes.extend((str(m.path), note) for note in geometry_notes(label, m.spacing))
    frames: list[Match] = []
    not_ingested: list[int] = []
    unsaved_before = skips.unsaved
    for index, mask in zip(indices, masks):
        if not mask.any():
            continue  # an empty slice is no label
        row = cine.frames.get(index)
        if row is None:
            not_ingested.append(index)
            continue
        # export never writes a draft into a frame the rater labelled: that one is compared
        # with the rater's label as usual
        drafted = row.id not in had_labels and _still_drafted(m, row.id, mask, handouts)
        if drafted and not accept_unchanged:
            skips.unsaved += 1
            continue
        frames.append(
            replace(
                m,
                image_id=row.id,
                rows=row.rows,
                cols=row.cols,
                spacing=spacing_mm(row.mm_per_px_x, row.mm_per_px_y),
                draft=m.frame_drafts.get(row.id) if m.exported else None,
                mask=np.ascontiguousarray(mask),
                frame=(index, n),
                files=0 if frames else 1,
                accepted=drafted,
            )
        )
    if not_ingested and len(indices) == 1:
        raise NoImage(
            f"{frame_label(None, not_ingested[0], n, m.dicom_name)} was not ingested (ingest "
            "took some of the cine's frames): nothing stored; ingest it with --frames all, "
            "or name an ingested frame with --cine-frame"
        )
    if not_ingested:
        numbers = ", ".join(str(i + 1) for i in not_ingested)
        report.notes.append(
            (
                str(m.path),
                f"frame{'s' if len(not_ingested) > 1 else ''} {numbers} of {n}{_of(m)} "
                + ("hold labels but were" if len(not_ingested) > 1 else "holds labels but was")
                + " not ingested (ingest took some of the cine's frames): not stored",
            )
        )
    if frames or not_ingested or skips.unsaved > unsaved_before:
        return frames
    ids = {row.id for row in cine.frames.values()}
    if m.exported and not ids & had_labels:
        skips.not_labelled += 1  # exported, never labelled yet
    elif allow_empty:
        report.notes.append(
            (str(m.path), "every slice is empty: nothing stored (an empty slice is no label)")
        )
    else:
        raise BadLabel(
            f"every slice of the label map is empty (nothing labelled){_of(m)}: an empty "
            "slice of a cine is no label"
        )
    return []


def _still_drafted(m: Match, image_id: int, mask: np.ndarray, handouts: Handouts) -> bool:
    """A cine frame's slice still the model draft export wrote into it: the draft the
    marker records for the frame (when export wrote it), else a draft the catalogue
    records as written into an ITK-SNAP file (the file copied away from its marker)."""
    digest = pixel_digest(mask)
    record = m.frame_drafts.get(image_id) if m.exported else None
    if record is not None and record.get("file_sha256"):
        return record.get("mask_hash") == digest
    return handouts.written_draft(image_id, digest) is not None
