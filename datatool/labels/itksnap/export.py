"""ITK-SNAP export: images (with a rater's own labels, or a model's drafts) for ITK-SNAP.

Export writes, per image, a folder ``img000123/`` holding the de-identified image
(``img000123.nii.gz``, from the store), its segmentation (``img000123_seg.nii.gz``: the
rater's own latest labels, or empty; never another rater's) and an ITK-SNAP workspace
(``img000123.itksnap``) that opens both with the protocol's label names and colours; beside
the folders, ``itksnap_labels.txt`` (the label description), ``slicer_colors.ctbl`` (the
same labels as a 3D Slicer colour table) and ``datatool-export.json``
(whose export this is, see ``itksnap.marker``). Re-exporting gives the same files, and never
overwrites a segmentation holding edits that were not synced yet.

With a run (``--prefill model:RUN``) each segmentation the rater has no labels of yet starts
from the run's draft; the marker records, per image, which draft (model version, run, the
draft's mask hash in the store, and the hash of the file export wrote). The marker names a
draft before its file is written, so an interrupted export never makes a draft look like a
human label. ``itksnap.sync`` reads the files back.

A cine (a DICOM file of several frames) is exported as one folder, named by its first
catalogued frame's image (``img000123/``): the image as one W x H x N volume (N the DICOM
file's frames, in order; the pixel spacing in mm as for a still, the slice spacing 1), the
segmentation as W x H x N with each frame's labels (own, or the model's draft, frame by
frame), and a workspace opening both. Frames that ingest did not take are blank slices
(zeros) in both, so the volume keeps the DICOM file's layout, as ITK-SNAP shows the cine;
labels drawn on them are noted by sync, not stored. Asking for any frame of a cine
(``--images``) exports the whole cine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Row, select

from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import Annotation, Image, SourceFile, audit
from datatool.core.errors import UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    labelling_rater,
)
from datatool.labels.drafting import Drafter
from datatool.labels.gold import DEFAULT_REFERENCE, GoldHanding, hand_gold
from datatool.labels.handouts import record_handouts
from datatool.labels.itksnap.formats import (
    read_label_file,
    read_label_map,
    spacing_mm,
    write_image,
    write_segmentation,
    write_volume,
    write_workspace,
)
from datatool.labels.itksnap.marker import (
    LABELS_FILE,
    file_sha256,
    marker_drafts,
    marker_owner,
    write_marker,
)
from datatool.labels.itksnap.slicer import SLICER_COLORS_FILE, color_table
from datatool.labels.masks import BadLabel
from datatool.labels.matching import (
    image_name,
    parse_image_ids,
)
from datatool.labels.propagate import PROPAGATE_VERSION, Loop, as_grey, propagated_from

# --------------------------------------------------------------------------- export


def _segmentation_action(path: Path, mask: np.ndarray, synced: set[str]) -> str:
    """What to do with an existing segmentation file: ``write`` it (missing, empty, or one of
    the rater's synced versions), leave it as it is (``same``: already these labels) or
    ``keep`` it (edits not synced yet, or unreadable: never overwritten)."""
    if not path.exists():
        return "write"
    try:
        current = read_label_map(path)
    except BadLabel:
        return "keep"
    if current.shape != mask.shape or current.min(initial=0) < 0 or current.max(initial=0) > 255:
        return "keep"
    current = current.astype(np.uint8, copy=False)
    if np.array_equal(current, mask):
        return "same"
    if not current.any() or pixel_digest(np.ascontiguousarray(current)) in synced:
        return "write"
    return "keep"


def _cine_action(path: Path, stack: np.ndarray, synced: list[set[str]]) -> str:
    """:func:`_segmentation_action` for a cine's W x H x N segmentation: ``write`` when every
    slice of the file is empty, the slice planned, or one of that frame's synced versions
    (``synced[k]``: empty for a frame not in the catalogue)."""
    if not path.exists():
        return "write"
    n, rows, cols = stack.shape
    try:
        current = read_label_file(path, shape=(rows, cols), slices=(n,)).array
    except BadLabel:
        return "keep"
    if current.shape != stack.shape or current.min(initial=0) < 0 or current.max(initial=0) > 255:
        return "keep"
    current = current.astype(np.uint8, copy=False)
    if np.array_equal(current, stack):
        return "same"
    for k in range(n):
        now = current[k]
        edited = now.any() and not np.array_equal(now, stack[k])
        if edited and pixel_digest(np.ascontiguousarray(now)) not in synced[k]:
            return "keep"
    return "write"


@dataclass
class ItksnapExport:
    """What an ITK-SNAP export wrote."""

    rater: str
    out_dir: Path
    images: int
    prefilled: int  # segmentations holding the rater's own latest labels
    kept_files: list[Path]  # segmentations with edits not synced yet, left as they were
    labels_file: Path  # the label description file
    drafted: int = 0  # segmentations pre-filled with the model's draft (no own labels yet)
    draft_run: int | None = None  # the run whose drafts pre-filled them
    model_version: str | None = None
    gold: GoldHanding | None = None  # gold-standard images mixed in (--gold)
    colors_file: Path | None = None  # the same labels as a 3D Slicer colour table
    cines: int = 0  # cines among them, each written as one W x H x N volume

    @property
    def kept(self) -> int:
        return len(self.kept_files)

    def as_dict(self) -> dict:
        return {
            "rater": self.rater,
            "out_dir": str(self.out_dir),
            "images": self.images,
            "prefilled": self.prefilled,
            "drafted": self.drafted,
            "draft_run": self.draft_run,
            "model_version": self.model_version,
            "kept": self.kept,
            "kept_files": [str(p) for p in self.kept_files],
            "labels_file": str(self.labels_file),
            "colors_file": None if self.colors_file is None else str(self.colors_file),
            "cines": self.cines,
            "gold": self.gold,
        }


def parse_prefill(text: str) -> tuple[bool, int | None]:
    """``--prefill``: ``own`` (the rater's own labels), ``none``, ``model:RUN`` (own labels,
    and the run's drafts where there are none) or ``propagate`` (own labels, and drafts of a
    cine's other frames from them: :func:`prefill_propagates`) -> (own labels, draft run)."""
    value = text.strip().lower()
    if value in ("own", "propagate"):
        return True, None
    if value == "none":
        return False, None
    kind, _, run = value.partition(":")
    if kind == "model" and run.isdigit():
        return True, int(run)
    raise UsageError(
        f"--prefill must be own, none, model:RUN (a run id) or propagate, not {text!r}"
    )


def prefill_propagates(text: str) -> bool:
    """``--prefill propagate``: a cine's frames the rater has not labelled are drafted from
    the rater's own nearest labelled frame of the loop (``labels.propagate``)."""
    return text.strip().lower() == "propagate"


EXPORT_CHUNK = 32  # images drafted, written and recorded in the marker at a time


@dataclass
class _Unit:
    """One folder of an export: a still (one image), or a cine's catalogued frames (rows by
    frame index) written as one volume of ``n_frames`` slices."""

    rows: list[Row]
    n_frames: int = 1

    @property
    def cine(self) -> bool:
        return self.n_frames > 1


def _units(rows: Sequence[Row]) -> list[_Unit]:
    """The export's folders: each still alone, each cine's frames together (by the first)."""
    units: list[_Unit] = []
    cines: dict[int, _Unit] = {}
    for row in rows:
        if (row.n_frames or 1) <= 1:
            units.append(_Unit([row]))
        elif row.source_file_id in cines:
            cines[row.source_file_id].rows.append(row)
        else:
            cines[row.source_file_id] = _Unit([row], int(row.n_frames))
            units.append(cines[row.source_file_id])
    for unit in cines.values():
        unit.rows.sort(key=lambda r: r.frame_index)
    units.sort(key=lambda u: u.rows[0].id)
    return units


def _chunks(units: list[_Unit]) -> Iterable[list[_Unit]]:
    """Units a chunk at a time: about :data:`EXPORT_CHUNK` images, a cine never split."""
    chunk: list[_Unit] = []
    size = 0
    for unit in units:
        chunk.append(unit)
        size += len(unit.rows)
        if size >= EXPORT_CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass
class _Planned:
    """One image of an export: the segmentation it gets and the draft record it carries."""

    row: Row
    mask: np.ndarray
    own: bool  # the rater's own latest labels
    draft: dict | None  # the marker's record for it (None: no draft behind it)
    from_model: bool  # the model's draft, made now


def export_itksnap(
    ws: Workspace,
    rater: str,
    out_dir: Path,
    image_ids: Iterable[int | str] | None = None,
    prefill: bool = True,
    progress: Callable[[int, int], None] | None = None,
    drafter: Drafter | None = None,
    batch: int = 8,
    gold: int | None = None,
    gold_reference: str = DEFAULT_REFERENCE,
    gold_seed: int = 0,
    propagate: bool = False,
) -> ItksnapExport:
    """Export images for one rater to label in ITK-SNAP (see the module docstring).

    ``image_ids`` picks images (ids or names; default: all); ``prefill`` puts the rater's own
    latest labels into the segmentations; ``drafter`` (a run's model, handed in by the caller:
    ``datatool.assist.drafter.run_drafter``) pre-fills each segmentation the rater
    has no labels of yet with that run's model draft (their own labels still win), recording
    in the folder's marker which draft (its mask hash) went where, so that sync can tell a
    label made from it. A folder exported for one rater cannot be reused for another.
    Segmentations with unsynced edits are left as they were (``kept_files``). ``gold``: mix
    that many gold-standard images (labelled by ``gold_reference``) in, chosen by
    ``gold_seed``; their folders look like every other (see ``labels.gold``). ``propagate``
    drafts a cine's frames the rater has not labelled from their own nearest labelled frame
    of it (recorded as drafts like a model's, their model version naming that frame)."""
    draft_run = None if drafter is None else drafter.run_id
    if propagate and draft_run is not None:
        raise UsageError("pre-fill from a run's drafts or by propagation, not both")
    out_dir = Path(out_dir)
    protocol = load_protocol(ws.protocol_name)
    wanted = None if image_ids is None else sorted(set(parse_image_ids(image_ids)))
    handed = None
    if gold and marker_owner(out_dir) in (None, rater):  # else the owner check below refuses
        handed = hand_gold(ws, rater, gold, gold_reference, gold_seed, "itksnap", wanted)
        wanted = handed.queue
    columns = (
        Image.id,
        Image.store_hash,
        Image.rows,
        Image.cols,
        Image.mm_per_px_x,
        Image.mm_per_px_y,
        Image.source_file_id,
        Image.frame_index,
        SourceFile.n_frames,
    )
    with ws.session() as s:
        rater_row = labelling_rater(s, rater, "'export itksnap'")
        rater_id = rater_row.id
        query = (
            select(*columns)
            .join(SourceFile, Image.source_file_id == SourceFile.id)
            .order_by(Image.id)
        )
        if wanted is not None:
            rows = s.execute(query.where(Image.id.in_(wanted))).all()
            missing = sorted(set(wanted) - {row.id for row in rows})
            if missing:
                names = ", ".join(image_name(i) for i in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise UsageError(
                    f"no image {names}{more} in this catalogue (see 'datatool images')"
                )
            cine_files = {r.source_file_id for r in rows if (r.n_frames or 1) > 1}
            if cine_files:  # a frame asked for brings its whole cine
                rows = s.execute(
                    query.where(Image.id.in_(wanted) | Image.source_file_id.in_(cine_files))
                ).all()
        else:
            rows = s.execute(query).all()
        versions: dict[int, set[str]] = {}
        latest: dict[int, Annotation] = {}
        for a in s.scalars(
            select(Annotation)
            .where(Annotation.rater_id == rater_row.id)
            .order_by(Annotation.image_id, Annotation.version)
        ):
            versions.setdefault(a.image_id, set()).add(a.mask_hash)
            latest[a.image_id] = a
    owner = marker_owner(out_dir)
    if owner is not None and owner != rater_row.name:
        raise UsageError(
            f"{out_dir} holds rater {owner}'s ITK-SNAP export; export rater "
            f"{rater_row.name}'s images into another folder (raters never see "
            "each other's labels)"
        )
    model = drafter
    out_dir.mkdir(parents=True, exist_ok=True)
    drafts = marker_drafts(out_dir)
    write_marker(out_dir, rater_row.name, protocol, drafts)

    store = ws.store
    prefilled = drafted = cines = 0
    kept: list[Path] = []
    done = 0
    units = _units(rows)
    for chunk in _chunks(units):
        chunk_rows = [row for unit in chunk for row in unit.rows]
        plans = _plan_chunk(
            store, chunk_rows, latest, prefill, model, batch, rater_row.name if propagate else None
        )
        # the marker names a chunk's drafts before their files exist: a label is never taken
        # for a human one because the export stopped between the two
        before = dict(drafts)
        for p in plans:
            if p.draft is not None and p.from_model:
                drafts[image_name(p.row.id)] = p.draft
        drafts_handed = [
            (p.row.id, p.draft["run"], p.draft["model_version"], p.draft["mask_hash"])
            for p in plans
            if p.draft is not None and p.from_model
        ]
        if drafts_handed:  # the catalogue too, so that no marker is needed to know a draft
            with ws.session() as s:
                record_handouts(s, rater_id, "itksnap", drafts_handed)
        if drafts != before:
            write_marker(out_dir, rater_row.name, protocol, drafts)
        by_id = {p.row.id: p for p in plans}
        for unit in chunk:
            unit_plans = [by_id[row.id] for row in unit.rows]
            seg_path, action = _write_unit(
                out_dir, store, unit, unit_plans, before, versions, protocol
            )
            olds = {p.row.id: before.get(image_name(p.row.id)) for p in unit_plans}
            if action == "keep":
                kept.append(seg_path)
                for p in unit_plans:
                    name, old = image_name(p.row.id), olds[p.row.id]
                    if old is not None:
                        drafts[name] = old
                    else:
                        drafts.pop(name, None)
            else:
                sha = file_sha256(seg_path) if any(p.from_model for p in unit_plans) else None
                for p in unit_plans:
                    prefilled += p.own
                    drafted += p.from_model
                    _record_draft(drafts, image_name(p.row.id), p, olds[p.row.id], action, sha)
            cines += unit.cine
            done += len(unit.rows)
            if progress:
                progress(done, len(rows))
        write_marker(out_dir, rater_row.name, protocol, drafts)
        files = {
            (p.row.id, p.draft["mask_hash"]): record["file_sha256"]
            for p in plans
            if p.draft is not None and p.from_model
            for record in [drafts.get(image_name(p.row.id)) or {}]
            if record.get("mask_hash") == p.draft["mask_hash"] and record.get("file_sha256")
        }
        if files:  # the bytes written: a file never saved is known wherever it is copied
            with ws.session() as s:
                record_handouts(s, rater_id, "itksnap", [], files)
    write_text_atomic(out_dir / LABELS_FILE, protocol.itksnap_label_description())
    write_text_atomic(out_dir / SLICER_COLORS_FILE, color_table(protocol))
    with ws.session() as s:
        audit(
            s,
            "export itksnap",
            "export",
            rater=rater_row.name,
            images=len(rows),
            prefilled=prefilled,
            drafted=drafted,
            draft_run=draft_run,
            kept=len(kept),
            prefill=prefill,
            cines=cines,
            propagate=propagate,
        )
    return ItksnapExport(
        rater=rater_row.name,
        out_dir=out_dir,
        images=len(rows),
        prefilled=prefilled,
        kept_files=kept,
        labels_file=out_dir / LABELS_FILE,
        colors_file=out_dir / SLICER_COLORS_FILE,
        drafted=drafted,
        draft_run=None if model is None else model.run_id,
        model_version=(
            model.model_version if model is not None else PROPAGATE_VERSION if propagate else None
        ),
        gold=handed,
        cines=cines,
    )


def _write_unit(
    out_dir: Path,
    store,
    unit: _Unit,
    plans: list[_Planned],
    before: dict[str, dict],
    versions: dict[int, set[str]],
    protocol: Protocol,
) -> tuple[Path, str]:
    """Write a unit's folder: its image (a still, or a cine's volume), its segmentation
    unless the file there holds edits not synced yet, and the workspace. Returns the
    segmentation's path and what became of it (``write``, ``same``, ``keep``)."""
    head = unit.rows[0]
    name = image_name(head.id)
    folder = out_dir / name
    spacing = spacing_mm(head.mm_per_px_x, head.mm_per_px_y)
    image_path = folder / f"{name}.nii.gz"
    seg_path = folder / f"{name}_seg.nii.gz"

    def overwritable(image_id: int) -> set[str]:
        old = before.get(image_name(image_id))
        return versions.get(image_id, set()) | ({old["mask_hash"]} if old else set())

    if unit.cine:
        pixels = np.zeros((unit.n_frames, head.rows, head.cols), np.uint8)
        seg = np.zeros_like(pixels)
        synced: list[set[str]] = [set() for _ in range(unit.n_frames)]
        for row, p in zip(unit.rows, plans):
            pixels[row.frame_index] = store.get_array(row.store_hash)
            seg[row.frame_index] = p.mask
            synced[row.frame_index] = overwritable(row.id)
        write_volume(image_path, pixels, spacing)
        action = _cine_action(seg_path, seg, synced)
        if action == "write":
            write_volume(seg_path, seg, spacing)
    else:
        write_image(image_path, store.get_array(head.store_hash), spacing)
        action = _segmentation_action(seg_path, plans[0].mask, overwritable(head.id))
        if action == "write":
            write_segmentation(seg_path, plans[0].mask, spacing)
    write_workspace(
        folder / f"{name}.itksnap",
        image_path,
        seg_path,
        (head.cols, head.rows),
        protocol,
        unit.n_frames,
    )
    return seg_path, action


def _plan_chunk(
    store,
    rows,
    latest: dict[int, Annotation],
    prefill: bool,
    model,
    batch: int,
    propagate: str | None = None,
):
    """What each image of a chunk gets: the rater's own latest labels (and the draft they
    started from, if any), else a draft from the prefill source given (one function each:
    ``_model_drafts`` for a run, ``_propagated_drafts`` for ``propagate``, the rater's name),
    else nothing."""
    use_own = prefill or model is not None or propagate is not None
    plans = [_own_labels(store, row, latest.get(row.id) if use_own else None) for row in rows]
    if model is not None:
        _model_drafts(store, plans, model, batch)
    if propagate is not None:
        _propagated_drafts(store, plans, latest, propagate)
    return plans


def _own_labels(store, row: Row, own: Annotation | None) -> _Planned:
    """An image's plan from the rater's own latest labels (with the draft they started from,
    if any), or an empty segmentation when there are none."""
    if own is None:
        return _Planned(row, np.zeros((row.rows, row.cols), np.uint8), False, None, False)
    draft = None
    if own.draft_version is not None:
        draft = {
            "model_version": own.draft_version,
            "run": own.draft_run_id,
            "mask_hash": own.draft_hash,
            "file_sha256": None,  # the rater's own version, not the draft, is written
        }
    return _Planned(row, store.get_array(own.mask_hash), True, draft, False)


def _model_drafts(store, plans: list[_Planned], model: Drafter, batch: int) -> None:
    """``--prefill model:RUN``: the model's prediction for every image without labels yet
    (each frame of a cine like a still)."""
    need = [p for p in plans if not p.own and not p.from_model]
    if not need:
        return
    images = [store.get_array(p.row.store_hash) for p in need]
    for p, result in zip(need, model.labels(images, batch=batch)):
        labels = np.ascontiguousarray(result)
        p.mask = labels
        p.from_model = True
        p.draft = {
            "model_version": model.model_version,
            "run": model.run_id,
            "mask_hash": store.put_array(labels),
            "file_sha256": None,  # filled in once the file is written
        }


def _propagated_drafts(
    store, plans: list[_Planned], latest: dict[int, Annotation], rater: str
) -> None:
    """``--prefill propagate``: in each cine, the frames without the rater's own labels drafted
    from the rater's own nearest labelled (not empty) frame of it, by registration."""
    loops: dict[int, list[_Planned]] = {}
    for p in plans:
        if (p.row.n_frames or 1) > 1:
            loops.setdefault(p.row.source_file_id, []).append(p)
    for frames in loops.values():
        frames.sort(key=lambda p: p.row.frame_index)
        labels = {k: p.mask for k, p in enumerate(frames) if p.own and p.mask.any()}
        need = [k for k, p in enumerate(frames) if not p.own and not p.from_model]
        if not labels or not need:
            continue
        grey = np.stack([as_grey(store.get_array(p.row.store_hash)) for p in frames])
        result = Loop(grey).propagate(labels, positions=[p.row.frame_index for p in frames])
        for k in need:
            p, src = frames[k], frames[result.source[k]].row
            labels_k = np.ascontiguousarray(result.drafts[k])
            p.mask = labels_k
            p.from_model = True  # a draft made now
            p.draft = {
                "model_version": propagated_from(
                    image_name(src.id), src.frame_index, rater, latest[src.id].version
                ),
                "run": None,
                "mask_hash": store.put_array(labels_k),
                "file_sha256": None,  # filled in once the file is written
            }


def _record_draft(
    drafts: dict[str, dict], name: str, p: _Planned, old: dict | None, action: str, sha: str | None
) -> None:
    """The marker's record of a segmentation just written (or found as it should be)."""
    if p.draft is None:
        drafts.pop(name, None)
        return
    if not p.from_model:
        drafts[name] = p.draft
        return
    if (
        action == "same"
        and old is not None
        and old.get("mask_hash") == p.draft["mask_hash"]
        and old.get("file_sha256")
    ):
        drafts[name] = old  # still the draft exported before: keep what export wrote then
        return
    drafts[name] = {**p.draft, "file_sha256": sha}


# --------------------------------------------------------------------------- finding files
