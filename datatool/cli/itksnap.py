"""ITK-SNAP commands: export itksnap, sync itksnap."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from datatool.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    err,
    export_app,
    guarded,
    out,
    print_json,
    print_sync_report,
    progress_bar,
    sync_app,
    workspace,
)


def _parse_images(text: str | None) -> list[int] | None:
    """``12,15,img000017`` -> [12, 15, 17]."""
    if text is None:
        return None
    ids = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        match = re.fullmatch(r"(?:img)?(\d+)", token, re.IGNORECASE)
        if match is None:
            raise typer.BadParameter(
                f"{token!r} is not an image id (12 or img000012)", param_hint="--images"
            )
        value = int(match.group(1))
        ids.append(value)
    if not ids:
        raise typer.BadParameter("no image ids given", param_hint="--images")
    return ids


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
    prefill: bool = typer.Option(
        True,
        "--prefill/--no-prefill",
        help="Start each segmentation from the rater's own latest labels (never another "
        "rater's); --no-prefill starts from empty ones.",
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Write images out for one rater to label in ITK-SNAP.

    Per image a folder imgNNNNNN/ with the de-identified image (imgNNNNNN.nii.gz, true mm
    size), its segmentation (imgNNNNNN_seg.nii.gz) and a workspace (imgNNNNNN.itksnap) that
    opens both with the protocol's labels; itksnap_labels.txt beside them. The rater opens a
    workspace, labels, saves the segmentation (Ctrl+S), and the folder is synced back with
    'datatool sync itksnap DIR --rater R'. Re-exporting is safe: a segmentation with edits not
    synced yet is never overwritten.
    """
    from datatool.labels.itksnap.sync import export_itksnap as run

    ids = _parse_images(images)
    ws = workspace(ws_path)
    with progress_bar("export", enabled=not json_out) as progress:
        summary = run(ws, rater, out_dir, image_ids=ids, prefill=prefill, progress=progress)
    if json_out:
        print_json(summary)
        return
    for path in summary["kept_files"]:
        err.print(
            f"[yellow]kept:[/yellow] {path}: holds edits not synced yet; left as it was "
            "(sync it first)",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"exported {summary['images']} images for rater {summary['rater']} to "
        f"{summary['out_dir']}: {summary['prefilled']} segmentations pre-filled with "
        f"{summary['rater']}'s own labels, {summary['kept']} kept with unsynced edits; "
        f"labels in {summary['labels_file']}",
        highlight=False,
        soft_wrap=True,
    )


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
        help="Store empty label maps (nothing labelled) instead of rejecting them.",
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Bring one rater's ITK-SNAP label maps in as versioned annotations.

    Reads .nii.gz, .nii, .nrrd, .seg.nrrd, .mha and .mhd files. Exported files
    (imgNNNNNN_seg.nii.gz) are matched by their name; others through --dicom-root or
    --manifest. Unchanged labels are left alone, changed ones become a new version. Exit code
    0 when every file was stored or unchanged, 1 when some were rejected (each with a one-line
    reason: wrong size, unknown label value, not a label file, no such image), 2 for usage
    errors such as an unknown rater.
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
        )
    print_sync_report(report, f"sync itksnap ({report.rater})", "label files", json_out)
