"""ITK-SNAP sync: the label files raters save back (from an export, ``itksnap.export``, or
any folder) into versioned annotations.

An exported segmentation carries its marker (``itksnap.marker``): one still byte for byte as
export wrote it pre-filled with a model draft was never saved by the rater and is not a label
(skipped, counted in one note; a cine frame by frame: ``itksnap.cine``) unless the rater accepts
it unchanged (``accept_unchanged``); any other is stored with the draft it started from and
whether it is that draft unchanged.

Sync finds the label files under a folder and matches each to its catalogued image
(``itksnap.locate``):

* by name: an exported file's name holds its image (``img000123_seg.nii.gz``);
* by a manifest CSV (``label_file,dicom_file``) naming the original DICOM file of each label;
* by ``dicom_root``: a label at ``MRN/L_01.nii.gz`` belongs to the DICOM file at
  ``DICOM_ROOT/MRN/L_01.dcm`` (or without extension, or with any other one).

Only the SOP Instance UID of an original DICOM file is read, and only its keyed replacement is
looked up: nothing of the file is stored. The label file's path is kept as the annotation's
``source_ref`` when it is an exported name (``img000123/img000123_seg.nii.gz``), otherwise
only as a keyed hash (original paths often hold record numbers). Each file is validated
(size, label values, file type) and a bad one gets a one-line reason while the rest go on.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import Image, Rater, audit
from datatool.core.errors import UsageError
from datatool.core.files import not_regular, skip_reason
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import Workspace
from datatool.ingest import deid
from datatool.labels.annotations import (
    DraftOrigin,
    SyncReport,
    draft_origin,
    in_chunks,
    labelling_rater,
    latest_annotations_query,
    store_annotations,
)
from datatool.labels.draftlink import ACCEPTED_UNCHANGED
from datatool.labels.handouts import (
    BREACH,
    Handouts,
    audit_copies,
    check_allow_copy,
    copies_of_others,
    origin_of,
)
from datatool.labels.itksnap.cine import Match as _Match
from datatool.labels.itksnap.cine import expand_cines
from datatool.labels.itksnap.decoded import Decoded, cacheable, entry_key
from datatool.labels.itksnap.formats import (
    geometry_notes,
    read_label_file,
    spacing_mm,
)
from datatool.labels.itksnap.locate import (
    _DicomFinder,
    _find_label_files,
    _Listed,
    _resolve,
    _Target,
    _target,
    known_sop_uids,
    read_manifest,
)
from datatool.labels.itksnap.marker import (
    EXPORT_MARKER,
    file_sha256,
    marker_drafts,
    marker_owner,
    read_marker,
)
from datatool.labels.masks import BadLabel, validate_mask
from datatool.labels.matching import (
    Cine,
    NoImage,
    check_cine_frame,
    image_name,
)
from datatool.labels.quoting import printable, utf8_name

BATCH_SIZE = 64
_SUFFIX_RE = r"(?:\.seg\.nrrd|\.nii\.gz|\.nrrd|\.nii|\.mha|\.mhd)"
_EXPORTED_NAME = re.compile(r"img\d{6,}_seg" + _SUFFIX_RE, re.IGNORECASE)
_EXPORTED_REL = re.compile(r"(?:img\d{6,}/)?img\d{6,}(?:_seg)?" + _SUFFIX_RE, re.IGNORECASE)

# --------------------------------------------------------------------------- sync


def _source_ref(key: bytes, rel: str) -> str:
    """The label file's relative path when it is an exported name (nothing but image ids);
    otherwise a keyed hash of it, as original paths often hold record numbers."""
    if _EXPORTED_REL.fullmatch(rel):
        return rel
    return "path-key:" + deid.path_key(key, rel)


def _frame_ref(ref: str, m: _Match) -> str:
    """A cine frame's source_ref: its file's, and which frame of it (counted from 1)."""
    return ref if m.frame is None else f"{ref} frame {m.frame[0] + 1} of {m.frame[1]}"


def _draft_for(path: Path, image_id: int, markers: dict[Path, dict[str, dict] | None]):
    """The marker record of the draft an exported segmentation was pre-filled with."""
    for folder in path.parents:
        if folder not in markers:
            markers[folder] = marker_drafts(folder) if read_marker(folder) is not None else None
        found = markers[folder]
        if found is not None:
            return found.get(image_name(image_id))
        if folder == folder.parent:
            break
    return None


def _owner_for(path: Path, owners: dict[Path, str | None]) -> str | None:
    """The rater of the nearest export marker in the folders above ``path``."""
    for folder in path.parents:
        if folder not in owners:
            owners[folder] = marker_owner(folder)
        if owners[folder] is not None:
            return owners[folder]
        if folder == folder.parent:
            break
    return None


def sync_itksnap(
    ws: Workspace,
    label_dir: Path,
    rater: str,
    dicom_root: Path | None = None,
    manifest: Path | None = None,
    allow_empty: bool = False,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_SIZE,
    allow_copy: str | None = None,
    cine_frame: str | None = None,
    accept_unchanged: bool = False,
) -> SyncReport:
    """Sync one rater's ITK-SNAP label files under ``label_dir`` into versioned annotations
    (see the module docstring). Unchanged labels are a no-op, changed ones a new version;
    every bad file is a line in ``report.rejected`` and the rest go on.

    An exported segmentation that is still empty, for an image the rater has no labels of,
    is "not labelled yet": skipped (one note), not rejected. Any other empty map is rejected
    unless ``allow_empty``.

    Drafts are known by content (``labels.handouts``): a file as export wrote it is not a
    label wherever it lies, a map equal to a handed-out draft keeps that draft's provenance. A
    new label identical to another rater's current label is rejected as a copy unless
    ``allow_copy`` gives the reason (audited).

    A label file for a cine (``itksnap.cine``): a W x H x N map gives each labelled slice to
    its frame (empty slices are no labels); a one-slice map goes to the frame its exported
    name names, else to ``cine_frame`` (``first``, ``middle`` or a number from 1).

    A model draft exported into a segmentation and still as export put it (a still's file
    byte for byte as written; a cine's frame whose slice is still its draft, whatever else
    of the file the rater changed) is not labelled yet: skipped, counted in one note. With
    ``accept_unchanged`` the rater accepts those drafts as they are: stored with the draft's
    provenance, ``draft_unchanged`` and ``draft_link`` "accepted unchanged"; never over a
    different label the rater has of the image already (noted)."""
    allow_copy = check_allow_copy(allow_copy)
    if cine_frame is not None:
        cine_frame = check_cine_frame(cine_frame)
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise UsageError(f"{label_dir}: no such folder")
    if dicom_root is not None and not Path(dicom_root).is_dir():
        raise UsageError(f"{dicom_root}: no such folder (--dicom-root)")
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        rater_row = labelling_rater(s, rater, "'sync itksnap'")
        rater_id, rater = rater_row.id, rater_row.name
    report = SyncReport(source="itksnap", rater=rater)
    root = Path(os.path.normpath(os.path.abspath(label_dir)))
    owners: dict[Path, str | None] = {}
    owner = _owner_for(root / EXPORT_MARKER, owners)
    if owner is not None and owner != rater:
        raise UsageError(
            f"{label_dir} is rater {owner}'s ITK-SNAP export ({EXPORT_MARKER}); "
            f"sync it with --rater {owner}"
        )
    files, listed, ignored = _files_to_sync(label_dir, root, manifest, report)
    report.seen += len(files)
    finder = _DicomFinder(Path(dicom_root)) if dicom_root is not None else None
    targets = _targets(ws, files, root, listed, finder, rater, owners, report)
    matches, latest = _match_images(ws, rater_id, targets, report)
    had_labels = set(latest)
    frame_ids = {i.id for m in matches if m.cine for i in m.cine.frames.values()}
    with ws.session() as s:
        checks = _Checks(Handouts(s, {m.image_id for m in matches} | frame_ids), allow_copy)
    matches, cine_skips = expand_cines(
        matches,
        protocol,
        cine_frame,
        had_labels,
        allow_empty,
        root,
        checks.handouts,
        report,
        accept_unchanged,
    )
    todo = _one_file_per_image(matches, report)
    not_labelled, unsaved = _store_all(
        ws,
        rater_id,
        protocol,
        todo,
        had_labels,
        allow_empty,
        batch_size,
        report,
        _Progress(progress, len(files), len(files) - sum(m.files for m in todo)),
        root,
        checks,
        accept_unchanged,
        latest,
    )
    not_labelled += cine_skips.not_labelled
    unsaved += cine_skips.unsaved
    _closing_notes(report, label_dir, not_labelled, ignored, unsaved)
    # names that are not UTF-8 (a folder above a file, a DICOM file) are shown by their bytes
    report.rejected = [(printable(i), printable(r)) for i, r in report.rejected]
    report.notes = [(printable(i), printable(r)) for i, r in report.notes]
    with ws.session() as s:
        audit(
            s,
            "sync itksnap",
            "sync",
            rater=rater,
            seen=report.seen,
            new_versions=report.new_versions,
            unchanged=report.unchanged,
            rejected=len(report.rejected),
            not_labelled=not_labelled,
            unsaved_drafts=unsaved,
            accept_unchanged=accept_unchanged,
            accepted_unchanged=checks.accepted,
            manifest=manifest is not None,
            dicom_root=dicom_root is not None,
            allow_empty=allow_empty,
            cine_frame=cine_frame,
            copies_refused=checks.refused,
            copies_allowed=len(checks.allowed),
        )
        audit_copies(s, "sync itksnap", rater, checks.allowed, allow_copy or "")
    return report


def _files_to_sync(
    label_dir: Path, root: Path, manifest: Path | None, report: SyncReport
) -> tuple[list[Path], dict[Path, _Listed], Counter]:
    """The label files to read: those found under the folder, plus files the manifest lists
    under it whatever their extension; the manifest's entries; the other files ignored.
    Bad manifest rows and listed files that do not exist are rejected."""
    listed, problems = read_manifest(Path(manifest)) if manifest else ({}, [])
    report.rejected.extend(problems)
    files, ignored, found = _find_label_files(label_dir)
    report.rejected.extend(found.unreadable)
    for path in [p for p in files if not utf8_name(p)]:
        files.remove(path)  # SimpleITK aborts the process on a path it cannot decode
        report.seen += 1
        report.rejected.append(
            (printable(path), "its name is not valid UTF-8: rename it (UTF-8), then sync again")
        )
    report.notes.extend((p, skip_reason(kind)) for p, kind in found.special)
    discovered = {Path(os.path.normpath(os.path.abspath(p))) for p in files}
    for label_path, entry in sorted(listed.items()):
        if not label_path.exists():
            report.rejected.append((entry.where, f"label file {label_path} does not exist"))
        elif label_path not in discovered and label_path.is_relative_to(root):
            files.append(label_path)  # listed explicitly: read whatever its extension
    return files, listed, ignored


def _targets(
    ws: Workspace,
    files: list[Path],
    root: Path,
    listed: dict[Path, _Listed],
    finder: _DicomFinder | None,
    rater: str,
    owners: dict[Path, str | None],
    report: SyncReport,
) -> list[_Target]:
    """Where each file points (outside any transaction: reading DICOM headers takes a
    while; a DICOM file ingested before is known by its hash instead, ``known_sop_uids``).
    A file inside another rater's export, or whose image cannot be told, is rejected."""
    targets: list[_Target] = []
    for path in files:
        full = Path(os.path.normpath(os.path.abspath(path)))
        owner = _owner_for(full, owners)
        if owner is not None and owner != rater:
            report.rejected.append(
                (
                    str(path),
                    f"this is rater {owner}'s ITK-SNAP export "
                    f"({EXPORT_MARKER}); sync it with --rater {owner}",
                )
            )
            continue
        try:
            targets.append(
                _target(ws.key, path, full, full.relative_to(root), listed, finder, False)
            )
        except NoImage as exc:
            report.rejected.append((str(path), str(exc)))
    known_sop_uids(ws.session, ws.key, targets)
    return targets


def _match_images(
    ws: Workspace, rater_id: int, targets: list[_Target], report: SyncReport
) -> tuple[list[_Match], dict[int, str]]:
    """The catalogued image of every target (the others rejected with the reason), and which
    of those images (a cine's: each frame) the rater has labels of already (image id -> its
    latest label map's hash)."""
    matches: list[_Match] = []
    markers: dict[Path, dict[str, dict] | None] = {}
    with ws.session() as s:
        for t, found in _resolve(s, ws.key, targets):
            if isinstance(found, NoImage):
                report.rejected.append((str(t.path), str(found)))
                continue
            exported = t.image_id is not None and bool(_EXPORTED_NAME.fullmatch(t.full.name))
            cine = found if isinstance(found, Cine) else None
            image = found
            if cine is not None:
                image = cine.first if cine.named is None else cine.frames[cine.named]
            draft = _draft_for(t.full, image.id, markers) if exported else None
            match = _Match(
                t.path,
                t.rel.as_posix(),
                image.id,
                image.rows,
                image.cols,
                exported,
                spacing_mm(image.mm_per_px_x, image.mm_per_px_y),
                draft,
                cine,
                None if t.dicom is None else t.dicom.name,
            )
            if cine is not None and exported:  # each frame's draft, from the same marker
                match.frame_drafts = {
                    i.id: _draft_for(t.full, i.id, markers) for i in cine.frames.values()
                }
            matches.append(match)
        ids = sorted(
            {m.image_id for m in matches}
            | {i.id for m in matches if m.cine for i in m.cine.frames.values()}
        )
        latest: dict[int, str] = {}
        for chunk in in_chunks(ids):  # these images' labels only, not every label of the rater
            query = latest_annotations_query([rater_id], image_ids=chunk)
            latest.update((a.image_id, a.mask_hash) for a in s.scalars(query))
    return matches, latest


def _copies(
    s: Session,
    rater_id: int,
    ready: list[tuple[_Match, np.ndarray]],
    digests: list[str],
    origins: list,
) -> dict[int, str]:
    """The labels of a batch identical to another rater's current label (image id -> that
    rater): new versions only (not the rater's own latest), never empty, never a draft taken
    as it is (the same draft handed to two raters is no copy)."""
    own = {
        a.image_id: a.mask_hash
        for a in s.scalars(
            latest_annotations_query([rater_id], image_ids=[m.image_id for m, _ in ready])
        )
    }
    candidates = [
        (m.image_id, digest)
        for (m, mask), digest, origin in zip(ready, digests, origins)
        if mask.any()
        and own.get(m.image_id) != digest
        and (origin is None or origin.mask_hash != digest)
    ]
    return copies_of_others(s, rater_id, candidates)


def _one_file_per_image(matches: list[_Match], report: SyncReport) -> list[_Match]:
    """The matches that are the only file for their image; two files for one image are both
    rejected (which one is right is the rater's call)."""
    by_image: dict[int, list[_Match]] = {}
    for m in matches:
        by_image.setdefault(m.image_id, []).append(m)
    todo = []
    for m in matches:
        twins = by_image[m.image_id]
        if len(twins) == 1:
            todo.append(m)
            continue
        others = ", ".join(t.rel for t in twins if t is not m)
        report.rejected.append(
            (
                str(m.path),
                f"{len(twins)} label files for image {image_name(m.image_id)} in this folder "
                f"(also {others}): keep one",
            )
        )
    return todo


@dataclass
class _Progress:
    """Reports ``done`` of ``total`` files to an optional callback."""

    callback: Callable[[int, int], None] | None
    total: int
    done: int = 0

    def advance(self, n: int = 0) -> None:
        self.done += n
        if self.callback:
            self.callback(self.done, self.total)


def _store_all(
    ws: Workspace,
    rater_id: int,
    protocol: Protocol,
    todo: list[_Match],
    had_labels: set[int],
    allow_empty: bool,
    batch_size: int,
    report: SyncReport,
    progress: _Progress,
    root: Path,
    checks: _Checks,
    accept_unchanged: bool = False,
    latest: dict[int, str] | None = None,
) -> tuple[int, int]:
    """Read, validate and store the files batch by batch (a transaction a batch); returns
    how many exported segmentations were skipped as not labelled yet: still empty, and still
    the unsaved model draft they were exported with. Label maps are read from under ``root``
    only (detached data files elsewhere are refused). A NIfTI file whose bytes decoded before
    to the rater's latest label of its image (``latest``: image id -> map hash) is counted
    unchanged without decoding it again (``itksnap.decoded``)."""
    progress.advance()
    not_labelled = unsaved = 0
    decoded = Decoded.load(ws.meta_dir)
    latest = latest or {}
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        ready = []
        keys: dict[int, tuple[str, list[str]]] = {}  # image id -> its file's cache entry
        for m in batch:
            if m.mask is not None:  # a cine's frame: read, validated and checked already
                ready.append((m, m.mask))
                continue
            if _unsaved_draft(m, checks.handouts):
                if not accept_unchanged and m.image_id not in had_labels:
                    unsaved += 1
                    continue
                m.accepted = True  # stored only where it is no other label of the rater
            key = _decoded_key(m, protocol)
            known = decoded.get(key) if key is not None and not m.accepted else None
            if known is not None and latest.get(m.image_id) == known[0]:
                report.notes.extend((str(m.path), note) for note in known[1])
                report.unchanged += 1  # the same bytes as the latest label: not decoded again
                continue
            try:
                mask, notes = _read_mask(m, protocol, allow_empty, m.image_id in had_labels, root)
            except BadLabel as exc:
                report.rejected.append((str(m.path), str(exc)))
                continue
            report.notes.extend((str(m.path), note) for note in notes)
            if mask is None:
                not_labelled += 1
            else:
                ready.append((m, mask))
                if key is not None and mask.any():  # an empty map is judged on each sync
                    keys[m.image_id] = (key, notes)
        if ready:
            for image_id, digest in _store_batch(ws, rater_id, protocol, ready, report, checks):
                if image_id in keys:
                    decoded.put(keys[image_id][0], digest, keys[image_id][1])
        progress.advance(sum(m.files for m in batch))
    decoded.save()
    return not_labelled, unsaved


def _decoded_key(m: _Match, protocol: Protocol) -> str | None:
    """The file's entry in the cache of decoded files (None: a cine's frame, a file of
    another format or one that cannot be read: decoded as always)."""
    if m.mask is not None or m.cine is not None or not cacheable(m.path):
        return None
    if not_regular(m.path) is not None:  # never opened here: read_label_file says why
        return None
    sha = file_sha256(m.path)
    return None if sha is None else entry_key(sha, (m.rows, m.cols), protocol)


@dataclass
class _Checks:
    """What a sync checks each label against: the drafts handed out for its images, and
    labels of other raters (copies refused unless ``allow_copy`` gives the reason)."""

    handouts: Handouts
    allow_copy: str | None
    refused: int = 0
    allowed: dict[int, str] = field(default_factory=dict)  # image id -> copied rater
    accepted: int = 0  # drafts stored as accepted unchanged (--accept-unchanged)


def _unsaved_draft(m: _Match, handouts: Handouts) -> bool:
    """A segmentation exported pre-filled with a model draft that the rater never saved
    (the very bytes export wrote, as the marker or the catalogue records them), wherever
    the file lies now: not labelled yet, unless the rater accepts it as it is
    (``--accept-unchanged``)."""
    written = (m.draft or {}).get("file_sha256")
    if not written and not handouts.any_for(m.image_id):
        return False
    sha = file_sha256(m.path)
    return (bool(written) and sha == written) or handouts.written_file(m.image_id, sha) is not None


def _read_mask(
    m: _Match, protocol: Protocol, allow_empty: bool, had_labels: bool, root: Path
) -> tuple[np.ndarray | None, list[str]]:
    """A file's validated label map (None for an exported segmentation that is still empty
    for an image the rater never labelled: not labelled yet), and notes on its geometry
    where it differs from the image's. Raises BadLabel with the reason, also for any other
    empty map unless ``allow_empty``."""
    shape = (m.rows, m.cols)
    label = read_label_file(m.path, within=root, shape=shape, protocol=protocol)
    mask = validate_mask(label.array, protocol, shape, allow_empty=True)
    notes = geometry_notes(label, m.spacing)
    if not allow_empty and not mask.any():
        if m.exported and not had_labels:
            return None, notes
        validate_mask(mask, protocol, shape, allow_empty=False)
    return np.ascontiguousarray(mask), notes


def _closing_notes(
    report: SyncReport, label_dir: Path, not_labelled: int, ignored: Counter, unsaved: int = 0
) -> None:
    if unsaved:
        report.notes.append(
            (
                str(label_dir),
                f"{unsaved} model drafts are still as exported (segmentations never saved, "
                "cine frames left as drafted): not labelled yet, skipped; to accept them as "
                "they are, sync again with --accept-unchanged",
            )
        )
    if not_labelled:
        report.notes.append(
            (
                str(label_dir),
                f"{not_labelled} exported segmentations are still "
                "empty (not labelled yet): skipped (--allow-empty stores them)",
            )
        )
    if ignored:
        kinds = ", ".join(f"{ext} {n}" for ext, n in sorted(ignored.items()))
        report.notes.append(
            (
                str(label_dir),
                f"ignored {sum(ignored.values())} files that are not label maps ({kinds})",
            )
        )


def _not_over_own(
    s: Session,
    rater_id: int,
    ready: list[tuple[_Match, np.ndarray]],
    digests: list[str],
    origins: list[DraftOrigin | None],
    report: SyncReport,
) -> tuple[list[tuple[_Match, np.ndarray]], list[str], list[DraftOrigin | None]]:
    """A batch less the drafts accepted unchanged (``--accept-unchanged``) for images whose
    latest label of the rater is another map: a never-saved draft does not replace a label
    the rater made since (noted, not stored)."""
    accepted = [m.image_id for m, _ in ready if m.accepted]
    if not accepted:
        return ready, digests, origins
    own = {
        a.image_id: a.mask_hash
        for a in s.scalars(latest_annotations_query([rater_id], image_ids=accepted))
    }
    keep = []
    for k, ((m, _), digest) in enumerate(zip(ready, digests)):
        if m.accepted and own.get(m.image_id, digest) != digest:
            report.notes.append(
                (
                    _frame_ref(str(m.path), m),
                    "still the draft as exported, but the rater has another label of this "
                    "image (its latest version): the draft is not accepted over it",
                )
            )
        else:
            keep.append(k)
    return [ready[k] for k in keep], [digests[k] for k in keep], [origins[k] for k in keep]


def _store_batch(
    ws: Workspace,
    rater_id: int,
    protocol: Protocol,
    ready: list[tuple[_Match, np.ndarray]],
    report: SyncReport,
    checks: _Checks,
) -> list[tuple[int, str]]:
    """Store a batch of validated masks in one transaction: a mask equal to the rater's
    latest version is counted unchanged, any other becomes the next version (with the draft
    it started from: the marker's, else a handed-out draft it equals); a copy of another
    rater's current label is rejected unless allowed. Returns (image id, map hash) of each
    map that is the rater's latest label now."""
    ids = [m.image_id for m, _ in ready]
    with ws.session() as s:
        rater = s.get_one(Rater, rater_id)
        images = {im.id: im for im in s.scalars(select(Image).where(Image.id.in_(ids)))}
        digests = [pixel_digest(mask) for _, mask in ready]
        origins: list[DraftOrigin | None] = []
        for (m, _), digest in zip(ready, digests):
            origin: DraftOrigin | None
            if m.draft is not None:
                origin = draft_origin(s, str(m.draft["model_version"]), m.draft.get("mask_hash"))
            else:
                handout = checks.handouts.draft(m.image_id, digest, rater_id)
                origin = None if handout is None else origin_of(s, handout)
            if m.accepted and origin is not None:
                origin = replace(origin, link=ACCEPTED_UNCHANGED)
            origins.append(origin)
        ready, digests, origins = _not_over_own(s, rater_id, ready, digests, origins, report)
        copies = _copies(s, rater_id, ready, digests, origins)
        if copies and checks.allow_copy is None:
            checks.refused += len(copies)
            report.rejected.extend((str(m.path), BREACH) for m, _ in ready if m.image_id in copies)
            keep = [k for k, (m, _) in enumerate(ready) if m.image_id not in copies]
            ready = [ready[k] for k in keep]
            origins = [origins[k] for k in keep]
            digests = [digests[k] for k in keep]
        else:
            checks.allowed.update(copies)
        stored = store_annotations(
            s,
            ws.store,
            rater,
            [
                (images[m.image_id], mask, "itksnap", _frame_ref(_source_ref(ws.key, m.rel), m))
                for m, mask in ready
            ],
            protocol,
            origins,
            digests,
        )
    checks.accepted += sum(r.created and m.accepted for r, (m, _) in zip(stored, ready))
    report.new_versions += sum(r.created for r in stored)
    report.unchanged += sum(not r.created for r in stored)
    return [(m.image_id, r.mask_hash) for r, (m, _) in zip(stored, ready)]
