"""Split commands: create, show, check, export."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    finish,
    guarded,
    split_app,
    workspace,
)
from datatool.cli.render import Block, Percent, Table
from datatool.learning.options import ExportFormat, FileEnding, Stratify

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.learning.split_export import SplitExport
    from datatool.learning.splits import SplitCheck, SplitSummary


def _split_view(info: SplitSummary) -> Iterator[Block]:
    yield (
        f"split {info.name}: hash {info.hash}, seed {info.seed}, ratios {info.ratios}, "
        f"{info.folds} folds, stratified by {info.stratify or 'nothing'}, reference labels "
        f"{info.reference or '-'}, created {info.created}"
        + (f", extends {info.extends} (its patients kept their sets)" if info.extends else "")
    )
    if info.not_in_split:
        yield (
            f"{info.not_in_split} catalogue images are not in it: without a reference label "
            "when it was made (e.g. awaiting adjudication), or added after"
        )
    table = Table(
        None,
        ["set", "patients", "images", "share", "female", "male", "left", "right", "with reference"],
    )
    rows = list(info.subsets.items())
    rows += [(f"fold {k}", v) for k, v in info.fold_sizes.items()]
    for name, v in rows:
        table.add(
            name,
            v.patients,
            v.images,
            None if v.share is None else Percent(100 * v.share),
            v.female,
            v.male,
            v.left_images,
            v.right_images,
            v.with_reference,
        )
    yield table
    if info.left_out is not None:
        yield _left_out_view(info)


def _left_out_view(info: SplitSummary) -> Block:
    if not info.left_out_reasons:
        return "left out: no image (every image of the catalogue is in the split)"
    table = Table(
        f"left out: {info.left_out} image(s) without a reference label (--all-images keeps "
        "them; train never meets an image without one)",
        ["reason", "images", "patients", "cine frames", "next step"],
        name="left-out",
    )
    for r in info.left_out_reasons:
        table.add(r.reason, r.images, r.patients, r.cine_frames, r.next_step)
    return table


@split_app.command("create")
@guarded
def split_create(
    name: str = typer.Argument(..., help="Name of the new split (never reused)."),
    ratios: str | None = typer.Option(
        None,
        show_default="6:2:2, or the extended split's",
        help="train:val:test shares, in labelled images.",
    ),
    folds: int | None = typer.Option(
        None,
        show_default="5, or the extended split's",
        help="Cross-validation folds of the non-test patients (0: none).",
    ),
    seed: int | None = typer.Option(
        None,
        show_default="0, or the extended split's",
        help="Seed: the same catalogue and seed give the same split.",
    ),
    stratify: Stratify | None = typer.Option(
        None, help="Balance sets by patient sex or by the sides a patient has."
    ),
    reference: str | None = typer.Option(
        None, help="Rater whose labels are the reference (default: the newest consensus)."
    ),
    all_images: bool = typer.Option(
        False,
        "--all-images",
        help="Also freeze images without a reference label (split check then reports them, "
        "and train refuses the split until they have one).",
    ),
    extend: str | None = typer.Option(
        None,
        "--extend",
        metavar="SPLIT",
        help="A later split of SPLIT: each of its patients keeps its set and fold (images "
        "labelled since join their patient's set); only new patients are dealt. Keeps "
        "SPLIT's ratios, folds and strata.",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Assign whole patients to train/val/test (and folds) and freeze it with a content hash.

    Only images with a reference label are frozen, and patients are dealt by their labelled
    images (the ratios hold over those); the images left out are counted by reason
    (--all-images keeps them). --csv writes the sets' table and, when images were left out,
    their reasons beside it (FILE-left-out.csv).
    """
    from datatool.learning.splits import create_split

    info = create_split(
        workspace(ws_path),
        name,
        ratios=ratios,
        folds=folds,
        seed=seed,
        stratify=stratify,
        reference=reference,
        all_images=all_images,
        extend=extend,
    )
    render.show(info, _split_view, json_out, csv_out)


@split_app.command("show")
@guarded
def split_show(
    name: str,
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Patients and images per set and fold, with sex and side balance."""
    from datatool.learning.splits import show_split

    render.show(show_split(workspace(ws_path), name), _split_view, json_out, csv_out)


def _check_view(result: SplitCheck) -> Iterator[Block]:
    if result.ok:
        yield (
            f"split {result.name}: {result.images} images, no leakage, every image has "
            f"a reference label, hash intact; {_hashed_now(result)}"
        )


def _hashed_now(result: SplitCheck) -> str:
    if result.masks_hashed == 0:
        return "no reference mask changed on disk since it last hashed intact (--deep: hash all)"
    if result.masks_hashed >= result.images:
        return "every reference mask hashed"
    return (
        f"{result.masks_hashed} reference masks hashed, the others unchanged since they last "
        "hashed intact"
    )


@split_app.command("check")
@guarded
def split_check(
    name: str,
    deep: bool = typer.Option(
        False,
        "--deep",
        help="Hash every reference mask again, also those unchanged on disk (size, time, "
        "inode) since they last hashed intact; without it only new or touched ones are.",
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """No patient in two sets or folds, every image with a reference label, hash intact.

    Each reference mask must be in the store and hash to its name; one unchanged on disk
    since it last did is not read again (--deep reads them all). Exit code 1 when a problem
    is found.
    """
    from datatool.learning.splits import check_split

    result = check_split(workspace(ws_path), name, deep=deep)
    render.problems([(name, p) for p in result.problems], "problem", style="red")
    if not json_out:
        render.notes(result.notes)
    render.show(result, _check_view, json_out)
    finish(0 if result.ok else 1)


def _export_view(result: SplitExport) -> Iterator[Block]:
    if result.dataset_dir is None:
        yield (
            f"wrote {result.images} images ({result.test} test) of split {result.name} "
            f"as {result.format} to {result.out_dir}" + (" (replaced)" if result.replaced else "")
        )
        return
    yield (
        f"wrote {result.images} images ({result.test} test) of split {result.name} "
        f"as {result.format} ({result.file_ending}) to {result.dataset_dir}"
        + (" (replaced)" if result.replaced else "")
    )
    yield (
        f"{result.folds} fold(s) in {result.splits_file}"
        + (" (where nnU-Net reads them)" if result.splits_in_preprocessed else "")
    )


@split_app.command("export")
@guarded
def split_export(
    name: str,
    fmt: ExportFormat = typer.Option(
        ExportFormat.nnunet,
        "--format",
        help="nnunet (an nnU-Net v2 raw dataset OUT/DatasetNNN_Name) or csv (a manifest).",
    ),
    out_dir: Path = typer.Option(
        ...,
        "--out",
        file_okay=False,
        help="Folder to write: for nnunet the nnUNet_raw folder that gets DatasetNNN_Name; "
        "for csv the manifest's own folder (empty or new, else see --replace).",
    ),
    dataset_id: int | None = typer.Option(
        None,
        "--dataset-id",
        help="nnunet: the dataset id 1..999 (default 500-999, fixed by the split's hash).",
    ),
    dataset_name: str | None = typer.Option(
        None, "--dataset-name", help="nnunet: the dataset name (default the split name)."
    ),
    file_ending: FileEnding = typer.Option(
        FileEnding.nifti,
        "--file-ending",
        help="nnunet: 2-D NIfTI with the mm spacing, or PNG (no spacing).",
    ),
    preprocessed: Path | None = typer.Option(
        None,
        "--preprocessed",
        envvar="nnUNet_preprocessed",
        file_okay=False,
        help="nnunet: nnU-Net's preprocessed folder; splits_final.json goes to "
        "DIR/DatasetNNN_Name/, where nnU-Net reads it (otherwise into the dataset folder, "
        "with a note saying where to copy it).",
    ),
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Rebuild a non-empty nnU-Net dataset folder, or a non-empty csv --out, whole.",
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Write the split for training elsewhere: an nnU-Net v2 dataset with the split's
    patient-level folds as splits_final.json, or a CSV manifest with image and label PNGs.

    A non-empty nnU-Net dataset folder, or a non-empty --out for csv, is refused (exit 2)
    unless --replace; it is then built beside and renamed into place, so no case of an
    earlier export stays behind. For csv, a folder that datatool did not write as a split
    export is refused even then, unless --force.
    """
    from datatool.learning.split_export import export_split

    result = export_split(
        workspace(ws_path),
        name,
        fmt,
        out_dir,
        dataset_id=dataset_id,
        dataset_name=dataset_name,
        file_ending=file_ending,
        preprocessed=preprocessed,
        replace=replace,
    )
    render.notes(result.notes)
    render.show(result, _export_view, json_out)
