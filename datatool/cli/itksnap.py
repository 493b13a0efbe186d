"""ITK-SNAP commands: export itksnap, sync itksnap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    AllowCopyOpt,
    CsvOpt,
    GoldOpt,
    GoldReferenceOpt,
    GoldSeedOpt,
    JsonOpt,
    WorkspaceOpt,
    export_app,
    guarded,
    progress_bar,
    sync_app,
    workspace,
)
from datatool.cli.labels import show_sync_report
from datatool.cli.render import Block
from datatool.learning.options import DeviceChoice

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.labels.itksnap.export import ItksnapExport


def _export_view(r: ItksnapExport) -> Iterator[Block]:
    drafted = (
        f", {r.drafted} with run {r.draft_run}'s drafts ({r.model_version})"
        if r.draft_run is not None
        else f", {r.drafted} cine frames drafted from {r.rater}'s own labelled frames"
        if r.model_version is not None
        else ""
    )
    cines = f" ({r.cines} cines among them, one W x H x N volume each)" if r.cines else ""
    yield (
        f"exported {r.images} images{cines} for rater {r.rater} to {r.out_dir}: {r.prefilled} "
        f"segmentations pre-filled with {r.rater}'s own labels{drafted}, {r.kept} kept with "
        f"unsynced edits; labels in {r.labels_file}"
        + (f" (for 3D Slicer: {r.colors_file})" if r.colors_file is not None else "")
    )
    if r.gold is not None:
        yield (
            f"{len(r.gold.gold)} of them gold-standard images against {r.gold.reference} "
            f"({r.gold.new} new; the rater's gold images in all: {r.gold.total})"
        )


@export_app.command("itksnap")
@guarded
def export_itksnap(
    rater: str = typer.Option(..., "--rater", "-r", help="The rater the files are for."),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", file_okay=False, help="Folder to write into (made if missing)."
    ),
    images: str | None = typer.Option(
        None,
        "--images",
        help="Only these images: ids such as 12,15 or img000012 (default: every image).",
    ),
    prefill: str = typer.Option(
        "own",
        "--prefill",
        help="own: start each segmentation from the rater's own latest labels (never another "
        "rater's); model:RUN: the same, and the run's draft where the rater has no labels "
        "yet; propagate: the same, and a cine's frames the rater has not labelled drafted from "
        "their own nearest labelled frame of it; none: empty segmentations.",
    ),
    no_prefill: bool = typer.Option(False, "--no-prefill", help="The same as --prefill none."),
    device: DeviceChoice = typer.Option(
        DeviceChoice.auto, help="With --prefill model:RUN: auto (CUDA when available), cpu, cuda."
    ),
    gold: int | None = GoldOpt,
    gold_reference: str = GoldReferenceOpt,
    gold_seed: int = GoldSeedOpt,
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Write images out for one rater to label in ITK-SNAP.

    Per image a folder imgNNNNNN/ with the de-identified image (imgNNNNNN.nii.gz, true mm
    size), its segmentation (imgNNNNNN_seg.nii.gz) and a workspace (imgNNNNNN.itksnap) that
    opens both with the protocol's labels; itksnap_labels.txt beside them. The rater opens a
    workspace, labels, saves the segmentation (Ctrl+S), and the folder is synced back with
    'datatool sync itksnap DIR --rater R'. Re-exporting is safe: a segmentation with edits not
    synced yet is never overwritten. With --prefill model:RUN, images the rater has not labelled
    yet start from the model's draft (the folder records which); a draft the rater never saved
    is not synced as a label: to accept one as it is, save it in ITK-SNAP. With --gold N, N
    gold-standard images (with a reference label) are exported among the others, looking like
    them; the rater's labels of them are scored by 'datatool raters'.

    A cine is one folder (named by its first frame's image): its frames as one W x H x N
    volume, in order, with a W x H x N segmentation holding each frame's labels (and with
    --prefill model:RUN, a draft on every frame the rater has not labelled; with --prefill
    propagate, each such frame drafted from the rater's own nearest labelled frame of the
    cine, moved by registration, recorded as a draft in the same way). Frames that were not
    ingested are blank slices, so the volume keeps the DICOM file's frames. Naming any frame
    in --images exports its whole cine.
    """
    from datatool.labels.itksnap.export import export_itksnap as run
    from datatool.labels.itksnap.export import parse_prefill, prefill_propagates
    from datatool.labels.matching import parse_image_ids

    own, draft_run = parse_prefill("none" if no_prefill else prefill)
    ids = None if images is None else parse_image_ids(images)
    ws = workspace(ws_path)
    drafter = None
    if draft_run is not None:
        from datatool.assist.drafter import run_drafter

        drafter = run_drafter(ws, draft_run, device=device)
    with progress_bar("export", enabled=not json_out) as progress:
        summary = run(
            ws,
            rater,
            out_dir,
            image_ids=ids,
            prefill=own,
            progress=progress,
            drafter=drafter,
            gold=gold,
            gold_reference=gold_reference,
            gold_seed=gold_seed,
            propagate=not no_prefill and prefill_propagates(prefill),
        )
    render.problems(
        (
            (path, "holds edits not synced yet; left as it was (sync it first)")
            for path in summary.kept_files
        ),
        "kept",
    )
    render.show(summary, _export_view, json_out)


@sync_app.command("itksnap")
@guarded
def sync_itksnap(
    label_dir: Path = typer.Argument(
        ..., help="Folder holding the rater's label files (searched recursively)."
    ),
    rater: str = typer.Option(..., "--rater", "-r", help="Whose labels these are."),
    dicom_root: Path | None = typer.Option(
        None,
        "--dicom-root",
        help="Folder of the original DICOM files that the label folder mirrors: "
        "LABELS/MRN/L_01.nii.gz belongs to DICOM_ROOT/MRN/L_01.dcm (or no extension, or "
        "any other). Only each file's SOP Instance UID is read.",
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        dir_okay=False,
        help="CSV with columns label_file,dicom_file (paths relative to the CSV's folder, or "
        "absolute) naming the DICOM file each label belongs to.",
    ),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="Store empty label maps (nothing labelled) instead of rejecting them. An empty "
        "slice of a cine's map is never a label; a cine map with every slice empty is then "
        "noted instead of rejected.",
    ),
    cine_frame: str | None = typer.Option(
        None,
        "--cine-frame",
        metavar="first|middle|N",
        help="Which frame of a cine a one-slice label map labels: first, middle (the frame "
        "'ingest --frames middle' takes) or N, a frame number counted from 1 as people count "
        "(1 is the first frame). A W x H x N map of a cine needs no option: each slice labels "
        "its frame.",
    ),
    accept_unchanged: bool = typer.Option(
        False,
        "--accept-unchanged",
        help="Store the model drafts still as export wrote them (a segmentation never saved, "
        "or saved byte for byte the same; a cine's frames left as drafted) as drafts the "
        "rater accepted unchanged, with the draft's provenance. Without it they are skipped "
        "as not labelled yet (one line counts them). To accept only some, sync their image "
        "folders (EXPORT/imgNNNNNN) with it.",
    ),
    allow_copy: str | None = AllowCopyOpt,
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Bring one rater's ITK-SNAP label maps in as versioned annotations.

    Reads .nii.gz, .nii, .nrrd, .seg.nrrd, .mha and .mhd files. Exported files
    (imgNNNNNN_seg.nii.gz) are matched by their name; others through --dicom-root or
    --manifest. Unchanged labels are left alone, changed ones become a new version. Exit code
    0 when every file was stored or unchanged, 1 when some were rejected (each with a one-line
    reason: wrong size, unknown label value, not a label file, no such image, a copy of
    another rater's label), 2 for usage errors such as an unknown or reserved rater.

    Model drafts are known by their content, wherever the file comes from: one saved as it is
    keeps the draft's provenance (model, run). ITK-SNAP may save an unchanged draft byte for
    byte as export wrote it, which cannot be told from a draft never opened: such drafts (and
    a cine's frames still as drafted, frame by frame) are skipped as not labelled yet unless
    --accept-unchanged says the rater accepts them as they are.

    Cines: ITK-SNAP saves a cine's segmentation as W x H x N (N the DICOM file's frames);
    each labelled slice goes to its frame, empty slices are no labels, and labels on a frame
    that was not ingested are noted, not stored. A one-slice map for a cine needs
    --cine-frame (unless its exported name names the frame); any other slice count is
    rejected.
    """
    from datatool.labels.itksnap.sync import sync_itksnap as run

    ws = workspace(ws_path)
    with progress_bar("sync itksnap", enabled=not json_out) as progress:
        report = run(
            ws,
            label_dir,
            rater,
            dicom_root=dicom_root,
            manifest=manifest,
            allow_empty=allow_empty,
            progress=progress,
            allow_copy=allow_copy,
            cine_frame=cine_frame,
            accept_unchanged=accept_unchanged,
        )
    show_sync_report(report, json_out, csv_out)
