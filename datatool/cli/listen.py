"""Receiving from scanners: ``datatool listen`` (a DICOM storage SCP feeding ingest)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import MAX_INT, PANEL_DATA, JsonOpt, WorkspaceOpt, app, guarded, workspace
from datatool.cli.render import Block

if TYPE_CHECKING:
    from datatool.ingest.listen import ListenReport


def _report_view(r: ListenReport) -> Iterator[Block]:
    s = r.spool
    yield (
        f"stopped listening on {r.address} as {r.ae_title}: {r.associations} associations "
        f"({r.refused_associations} refused), {r.objects_acknowledged} objects acknowledged, "
        f"{r.objects_refused} refused"
    )
    yield (
        f"ingested from the spool: {s.ingested} new, {s.already_present} already present, "
        f"{s.rejected} rejected, {s.quarantined} quarantined, {s.conflicts} conflicts "
        f"({s.images_added} images added)"
    )


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def listen(
    port: int = typer.Option(11112, help="DICOM port to listen on."),
    ae_title: str = typer.Option("DATATOOL", "--ae-title", help="This node's AE title."),
    allow: str | None = typer.Option(
        None,
        "--allow",
        help="Comma-separated calling AE titles that may send (all others are rejected at "
        "association). Required beyond loopback.",
    ),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on. Beyond loopback (127.0.0.1, ::1) only with --allow.",
    ),
    max_associations: int = typer.Option(
        10, "--max-associations", min=1, max=1000, help="Most associations at once."
    ),
    max_object_mb: int = typer.Option(
        1024,
        "--max-object-mb",
        min=1,
        max=MAX_INT,
        help="Largest object in MiB; a larger one is refused as it arrives (the association "
        "is aborted), never held whole.",
    ),
    workers: int = typer.Option(
        1, "--workers", "-j", min=0, max=256, help="Processes decoding the spool (0: in this one)."
    ),
    batch: int = typer.Option(16, "--batch", min=1, max=10000, help="Objects per transaction."),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Receive images from scanners and PACS by DICOM C-STORE and ingest them, until Ctrl-C.

    A storage SCP: point the scanner (or 'storescu -aet SCANNER -aec DATATOOL HOST PORT
    files') at this host, port and AE title. Accepted: Ultrasound (single and multi-frame),
    every Secondary Capture class, CR, DX, XA, CT, MR and VL endoscopic/photographic images,
    in Implicit and Explicit VR Little Endian, Deflated and Explicit Big Endian (pynetdicom's
    defaults) and, added here, JPEG Baseline, JPEG Extended, JPEG Lossless (and SV1),
    JPEG-LS (lossless and near-lossless), JPEG 2000 (lossless and lossy) and RLE Lossless.

    Each object is written to the workspace's spool (.datatool/spool) before its success is
    answered, then ingested as 'datatool ingest' does (pseudonyms, blanked banners,
    quarantine, dedupe by content). Killed, it loses nothing acknowledged: started again, it
    ingests the spool first. A rejected, quarantined or conflicting object is one log line
    with its reason and leaves the spool all the same (the sender keeps its copy). The log
    (standard error) holds one line per association (calling AE title, address, objects)
    and per refused or rejected object (the reason), never patient data. 'datatool status'
    shows what was received from which AE title.
    """
    from datatool.ingest.listen import ListenOptions
    from datatool.ingest.listen import listen as run

    opts = ListenOptions(
        host=host,
        port=port,
        ae_title=ae_title,
        allow=[t.strip() for t in (allow or "").split(",") if t.strip()],
        max_associations=max_associations,
        max_object_mb=max_object_mb,
        workers=workers,
        batch=batch,
    )
    from datatool.ingest.listen import check_options

    check_options(opts)  # a usage error before the workspace is opened
    logger = logging.getLogger("datatool.listen")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        report = run(
            workspace(ws_path),
            opts,
            ready=lambda address: logger.info(
                "listening on %s as AE '%s'%s (Ctrl-C stops)",
                address,
                opts.ae_title,
                f", accepting {', '.join(opts.allow)}" if opts.allow else "",
            ),
            stop=stop,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger.removeHandler(handler)
    render.show(report, _report_view, json_out)
