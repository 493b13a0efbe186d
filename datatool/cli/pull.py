"""``datatool pull``: studies from a PACS by DICOMweb or DIMSE, into the ingest pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    PANEL_DATA,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    finish,
    guarded,
    progress_bar,
    workspace,
)
from datatool.cli.render import Block, Table
from datatool.core.errors import UsageError
from datatool.ingest.options import FrameMode

if TYPE_CHECKING:  # result types; the service loads when the command runs
    from datatool.ingest.pull import PullReport


def _view(r: PullReport) -> Iterator[Block]:
    table = Table(f"pull from {r.source}", ["outcome", "count"])
    table.add("studies found", r.studies_found)
    table.add("studies skipped (already catalogued)", r.studies_skipped)
    table.add("studies retrieved", r.studies_retrieved)
    table.add("instances retrieved", r.instances_retrieved)
    table.add("retrievals failed", len(r.failed))
    table.add("files ingested", r.ingest.ingested)
    table.add("images added", r.ingest.images_added)
    table.add("already present", r.ingest.already_present)
    table.add("rejected", len(r.ingest.rejected))
    table.add("quarantined (burned-in)", len(r.ingest.quarantined))
    table.add("conflicts (kept aside)", len(r.ingest.conflicts))
    yield table


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def pull(
    dicomweb: str | None = typer.Option(
        None,
        "--dicomweb",
        metavar="URL",
        help="DICOMweb service root (QIDO-RS and WADO-RS), e.g. http://pacs:8042/dicom-web. "
        "Credentials from DATATOOL_DICOMWEB_USER and DATATOOL_DICOMWEB_PASSWORD (HTTP basic) "
        "or DATATOOL_DICOMWEB_TOKEN (bearer), never from the URL.",
    ),
    dimse: str | None = typer.Option(
        None,
        "--dimse",
        metavar="HOST:PORT",
        help="A PACS without DICOMweb: C-FIND and C-GET (needs --called-ae).",
    ),
    called_ae: str | None = typer.Option(
        None, "--called-ae", help="With --dimse: the PACS's AE title."
    ),
    calling_ae: str = typer.Option(
        "DATATOOL",
        "--calling-ae",
        help="With --dimse: datatool's AE title (the PACS must know it to answer a C-GET).",
    ),
    study: list[str] = typer.Option(
        [], "--study", metavar="UID", help="Only this Study Instance UID (repeatable)."
    ),
    modality: str | None = typer.Option(
        None, "--modality", help="Only studies holding this modality, e.g. US."
    ),
    since: str | None = typer.Option(
        None, "--since", metavar="DATE", help="Only studies from this date on (2024-01-31)."
    ),
    until: str | None = typer.Option(
        None, "--until", metavar="DATE", help="Only studies up to this date (inclusive)."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-j",
        show_default="all cores",
        help="Decoding processes, as for ingest (0: do all in one).",
    ),
    frames: FrameMode = typer.Option(
        FrameMode.auto, help="Frames of a cine to use, as for ingest."
    ),
    allow_burned_in: bool = typer.Option(
        False, "--allow-burned-in", help="As for ingest: check the images first."
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Pull studies from a PACS and ingest them (de-identified, deduplicated, like ingest).

    Searches the PACS (QIDO-RS, or C-FIND with --dimse), leaves out every study the
    catalogue already holds whole (compared by the keyed replacement of its UIDs: nothing
    is retrieved for it), retrieves the rest into a spool inside the workspace and ingests
    it; the spool is deleted once catalogued. Run it again to resume. Exit code 0 when
    everything was ingested or already present; 1 when a retrieval failed or an instance
    was rejected, quarantined or in conflict (one line each; the others go on); 2 for
    usage errors.
    """
    from datatool.core.dimse import parse_peer
    from datatool.ingest.pull import DicomWebSource, make_query
    from datatool.ingest.pull import pull as run_pull
    from datatool.ingest.pull_dimse import DimseSource

    if (dicomweb is None) == (dimse is None):
        raise UsageError("give one of --dicomweb URL or --dimse HOST:PORT")
    query = make_query(study, modality, since, until)
    if dimse is not None:
        source: DicomWebSource | DimseSource = DimseSource(
            parse_peer(dimse, called_ae, calling_ae, "--dimse")
        )
    else:
        source = DicomWebSource(dicomweb or "")
    ws = workspace(ws_path)
    with progress_bar("pull", enabled=not json_out) as progress:
        report = run_pull(
            ws,
            source,
            query,
            workers=workers,
            frames=frames,
            allow_burned_in=allow_burned_in,
            progress=progress,
        )
    render.problems(report.failed, "failed")
    render.problems(report.ingest.rejected, "rejected")
    render.problems(report.ingest.quarantined, "quarantined")
    render.problems(report.ingest.conflicts, "conflict")
    render.show(report, _view, json_out, csv_out)
    finish(report.exit_code)
