"""The DICOM SEG command: export dicom-seg (and send the files to a PACS)."""

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
    export_app,
    finish,
    guarded,
    progress_bar,
    workspace,
)
from datatool.cli.render import Block, Table
from datatool.core.errors import UsageError

if TYPE_CHECKING:  # result types; the service loads when the command runs
    from datatool.labels.dicomseg.export import DicomSegExport


def _view(r: DicomSegExport) -> Iterator[Block]:
    table = Table(
        f"DICOM SEG export: rater {r.rater} to {r.out_dir}",
        ["image", "status", "file", "structures", "reason"],
    )
    for item in r.items:
        table.add(item.image, item.status, item.file or "", item.structures, item.reason)
    yield table
    yield (
        f"{r.written} written, {r.unchanged} unchanged, {len(r.refused)} refused, "
        f"{len(r.skipped)} skipped (cine frames)"
    )
    if r.pushed_to is not None:
        sent = Table(f"sent to {r.pushed_to}", ["image", "file", "PACS answered"])
        for p in r.pushed:
            sent.add(p.image, p.file, p.answer)
        yield sent
        yield f"{sum(p.ok for p in r.pushed)} of {len(r.pushed)} taken by the PACS"


@export_app.command("dicom-seg")
@guarded
def export_dicom_seg(
    rater: str = typer.Option(
        ...,
        "--rater",
        "-r",
        help="Whose labels: a rater's name, consensus:METHOD (e.g. consensus:staple) or "
        "model:RUN (a run's predictions). Each image's latest labels are written.",
    ),
    dicom_root: Path = typer.Option(
        ...,
        "--dicom-root",
        file_okay=False,
        help="Folder holding the original DICOM files (searched recursively): each SEG "
        "references its original's SOP Instance UID, read from the file.",
    ),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", file_okay=False, help="Folder to write the SEG files into."
    ),
    images: str | None = typer.Option(
        None,
        "--images",
        help="Only these images: ids such as 12,15 or img000012 (default: every image the "
        "rater labelled).",
    ),
    stow: str | None = typer.Option(
        None,
        "--stow",
        metavar="URL",
        help="Then send the SEG files to this DICOMweb service by STOW-RS (credentials as for "
        "pull: DATATOOL_DICOMWEB_USER/PASSWORD or DATATOOL_DICOMWEB_TOKEN).",
    ),
    dimse: str | None = typer.Option(
        None,
        "--dimse",
        metavar="HOST:PORT",
        help="Then send the SEG files to this PACS by C-STORE (needs --called-ae).",
    ),
    called_ae: str | None = typer.Option(
        None, "--called-ae", help="With --dimse: the PACS's AE title."
    ),
    calling_ae: str = typer.Option(
        "DATATOOL", "--calling-ae", help="With --dimse: datatool's AE title."
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Write one DICOM Segmentation (SEG) per labelled image, for a PACS or a DICOM viewer.

    THESE FILES CARRY THE ORIGINAL IDENTIFIERS: each SEG references its original image's
    SOP Instance UID and copies its patient and study attributes (name, ID, birth date,
    study UID), so that the PACS files it with the image. They belong to the PACS the
    originals came from, like the originals: never share them with the de-identified
    dataset. This is the one command that writes identity out; none of it is printed or
    logged (images are named by id and the original's file name).

    OUT/imgNNNNNN.dcm per image: a BINARY SEG whose segments are the protocol's structures
    in its order, named by the protocol and coded with SNOMED CT (a broader code where the
    structure has none of its own: see the protocol file). A person's labels are MANUAL, a
    consensus SEMIAUTOMATIC and a model's AUTOMATIC, with the algorithm (run, datatool
    version) identified. The originals are found under --dicom-root by their SOP Instance
    UID; an original whose pixels changed since ingest is refused. Writes are atomic and a
    re-run leaves files made of the same labels as they are.

    A cine's frames get no SEG (highdicom cannot yet reference one frame of a multi-frame
    ultrasound image): they are listed as skipped. Exit code 0 when every image was written,
    unchanged or skipped, 1 when some were refused (each with a one-line reason: original
    missing or changed, no labels of the rater) or the PACS did not take one, 2 for usage
    errors.

    With --stow URL (STOW-RS) or --dimse HOST:PORT --called-ae AE (C-STORE), every SEG
    written or unchanged is then sent to the PACS, one request per file; the table shows
    what the PACS answered for each (HTTP status, C-STORE status code).
    """
    from datatool.core.dimse import parse_peer
    from datatool.ingest.pull import plain_url
    from datatool.labels.dicomseg.export import export_dicom_seg as run
    from datatool.labels.dicomseg.push import push_export
    from datatool.labels.matching import parse_image_ids

    if stow is not None and dimse is not None:
        raise UsageError("give --stow URL or --dimse HOST:PORT, not both")
    peer = None if dimse is None else parse_peer(dimse, called_ae, calling_ae, "--dimse")
    if stow is not None:
        plain_url(stow)  # a login in the URL is refused before anything is written
    ids = None if images is None else parse_image_ids(images)
    ws = workspace(ws_path)
    with progress_bar("export dicom-seg", enabled=not json_out) as progress:
        result = run(ws, rater, dicom_root, out_dir, image_ids=ids, progress=progress)
    if stow is not None or peer is not None:
        with progress_bar("send", enabled=not json_out) as progress:
            push_export(result, stow=stow, peer=peer, progress=progress)
    render.problems(result.refused, "refused")
    render.problems(result.push_failed, "not taken")
    if not json_out:
        render.notes(result.skipped, "skipped")
    render.show(result, _view, json_out, csv_out)
    finish(result.exit_code)
