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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Row, select

from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import Annotation, Image, audit
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    labelling_rater,
)
from datatool.labels.gold import DEFAULT_REFERENCE, GoldHanding, hand_gold
from datatool.labels.handouts import record_handouts
from datatool.labels.itksnap.formats import (
    read_label_map,
    spacing_mm,
    write_image,
    write_segmentation,
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
            "gold": self.gold,
        }


def parse_prefill(text: str) -> tuple[bool, int | None]:
    """``--prefill``: ``own`` (the rater's own labels), ``none``, or ``model:RUN`` (own labels,
    and the run's drafts where there are none) -> (own labels, draft run)."""
    value = text.strip().lower()
    if value == "own":
        return True, None
    if value == "none":
        return False, None
    kind, _, run = value.partition(":")
    if kind == "model" and run.isdigit():
        return True, int(run)
    raise UsageError(f"--prefill must be own, none or model:RUN (a run id), not {text!r}")


EXPORT_CHUNK = 32  # images drafted, written and recorded in the marker at a time


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
    draft_run: int | None = None,
    device: str = "auto",
    batch: int = 8,
    gold: int | None = None,
    gold_reference: str = DEFAULT_REFERENCE,
    gold_seed: int = 0,
) -> ItksnapExport:
    """Export images for one rater to label in ITK-SNAP (see the module docstring).

    ``image_ids`` picks images (ids or names; default: all); ``prefill`` puts the rater's own
    latest labels into the segmentations; ``draft_run`` pre-fills each segmentation the rater
    has no labels of yet with that run's model draft (their own labels still win), recording
    in the folder's marker which draft (its mask hash) went where, so that sync can tell a
    label made from it. A folder exported for one rater cannot be reused for another.
    Segmentations with unsynced edits are left as they were (``kept_files``). ``gold``: mix
    that many gold-standard images (labelled by ``gold_reference``) in, chosen by
    ``gold_seed``; their folders look like every other (see ``labels.gold``)."""
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
    )
    with ws.session() as s:
        rater_row = labelling_rater(s, rater, "'export itksnap'")
        rater_id = rater_row.id
        query = select(*columns).order_by(Image.id)
        if wanted is not None:
            rows = s.execute(query.where(Image.id.in_(wanted))).all()
            missing = sorted(set(wanted) - {row.id for row in rows})
            if missing:
                names = ", ".join(image_name(i) for i in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise UsageError(
                    f"no image {names}{more} in this catalogue (see 'datatool images')"
                )
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
    model = None
    if draft_run is not None:
        from datatool.learning.inference import load_run_model

        model = load_run_model(ws, draft_run, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    drafts = marker_drafts(out_dir)
    write_marker(out_dir, rater_row.name, protocol, drafts)

    store = ws.store
    prefilled = drafted = 0
    kept: list[Path] = []
    done = 0
    for start in range(0, len(rows), EXPORT_CHUNK):
        plans = _plan_chunk(
            store, rows[start : start + EXPORT_CHUNK], latest, prefill, model, batch
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
        for p in plans:
            row, name = p.row, image_name(p.row.id)
            folder = out_dir / name
            spacing = spacing_mm(row.mm_per_px_x, row.mm_per_px_y)
            image_path = folder / f"{name}.nii.gz"
            seg_path = folder / f"{name}_seg.nii.gz"
            write_image(image_path, store.get_array(row.store_hash), spacing)
            old = before.get(name)
            overwritable = versions.get(row.id, set()) | ({old["mask_hash"]} if old else set())
            action = _segmentation_action(seg_path, p.mask, overwritable)
            if action == "keep":
                kept.append(seg_path)
                if old is not None:
                    drafts[name] = old
                else:
                    drafts.pop(name, None)
            else:
                if action == "write":
                    write_segmentation(seg_path, p.mask, spacing)
                prefilled += p.own
                drafted += p.from_model
                _record_draft(drafts, name, p, old, action, seg_path)
            write_workspace(
                folder / f"{name}.itksnap", image_path, seg_path, (row.cols, row.rows), protocol
            )
            done += 1
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
        model_version=None if model is None else model.model_version,
        gold=handed,
    )


def _plan_chunk(store, rows, latest: dict[int, Annotation], prefill: bool, model, batch: int):
    """What each image of a chunk gets: the rater's own latest labels (and the draft they
    started from, if any), else the model's draft (when a run is given), else nothing."""
    plans: list[_Planned] = []
    need: list[int] = []
    for k, row in enumerate(rows):
        own = latest.get(row.id) if prefill or model is not None else None
        if own is not None:
            draft = None
            if own.draft_version is not None:
                draft = {
                    "model_version": own.draft_version,
                    "run": own.draft_run_id,
                    "mask_hash": own.draft_hash,
                    "file_sha256": None,  # the rater's own version, not the draft, is written
                }
            plans.append(_Planned(row, store.get_array(own.mask_hash), True, draft, False))
        else:
            plans.append(
                _Planned(row, np.zeros((row.rows, row.cols), np.uint8), False, None, False)
            )
            if model is not None:
                need.append(k)
    if need:
        from datatool.learning.inference import predict

        images = [store.get_array(rows[k].store_hash) for k in need]
        for k, result in zip(need, predict(model, images, batch=batch)):
            labels = np.ascontiguousarray(result.labels)
            plans[k].mask = labels
            plans[k].from_model = True
            plans[k].draft = {
                "model_version": model.model_version,
                "run": model.run_id,
                "mask_hash": store.put_array(labels),
                "file_sha256": None,  # filled in once the file is written
            }
    return plans


def _record_draft(
    drafts: dict[str, dict], name: str, p: _Planned, old: dict | None, action: str, seg: Path
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
    drafts[name] = {**p.draft, "file_sha256": file_sha256(seg)}


# --------------------------------------------------------------------------- finding files
