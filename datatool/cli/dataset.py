"""Workspace and data: init, demo-data, ingest, ingest-clinical, status, images, cohort."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    MAX_INT,
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
from datatool.cli.render import Block, CountPct, Table
from datatool.ingest.options import FrameMode

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.core.workspace import InitResult
    from datatool.demo.generator import DemoDataset
    from datatool.ingest.clinical import ClinicalReport, Cohort
    from datatool.ingest.inventory import ImageRow, Status
    from datatool.ingest.pipeline import IngestReport


def _init_view(r: InitResult) -> Iterator[Block]:
    word = "Created" if r.created else "Already a workspace:"
    yield f"{word} {r.root} (catalogue, store, key in {r.key_file.parent})"
    if r.created:
        yield (
            f"Back up the pseudonym key {r.key_file} apart from the data: without it the same "
            "patients get new pseudonyms."
        )


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def init(
    directory: Path = typer.Argument(Path("."), help="Folder to make a workspace of."),
    protocol: str = typer.Option("anterior_sciatic", help="Label protocol (schemas/NAME.yaml)."),
    json_out: bool = JsonOpt,
):
    """Create a workspace: catalogue, content-addressed store and pseudonym key (like git init).

    Back up .datatool/secret.key apart from the data: the same key gives the same pseudonyms.
    """
    from datatool.core.protocol import load_protocol
    from datatool.core.workspace import init_workspace

    load_protocol(protocol)
    render.show(init_workspace(directory, protocol=protocol), _init_view, json_out)


def _ingest_view(report: IngestReport) -> Iterator[Block]:
    table = Table("ingest", ["outcome", "files"])
    table.add("ingested", report.ingested)
    table.add("images added", report.images_added)
    table.add("already present", report.already_present)
    table.add("rejected", len(report.rejected))
    table.add("quarantined (burned-in)", len(report.quarantined))
    table.add("conflicts (kept aside)", len(report.conflicts))
    if report.skipped:
        table.add("skipped (DICOMDIR index)", report.skipped)
    yield table
    yield f"frames: {report.frames_mode}"


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def ingest(
    paths: list[Path] = typer.Argument(..., help="DICOM files and folders (searched recursively)."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-j",
        show_default="all cores",
        help="Decoding processes beside the one writing the catalogue (0: do all in one).",
    ),
    batch: int = typer.Option(64, min=1, help="Files per catalogue transaction."),
    frames: FrameMode = typer.Option(
        FrameMode.auto,
        help="Frames of a multi-frame cine to use: auto (all frames of a cine up to 32 frames, "
        "the middle frame of a longer one), all, first or middle.",
    ),
    allow_burned_in: bool = typer.Option(
        False,
        "--allow-burned-in",
        help="Ingest ultrasound images that may hold burned-in text and have no region "
        "information, or regions that cover (nearly) the whole image so no banner lies "
        "outside them to blank, as they are (otherwise they are quarantined). Check the "
        "images first.",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Ingest DICOM exams: decode, de-identify, store, catalogue. Re-running is a no-op.

    Exit code 0 when every file was ingested (or already present), 1 when some were rejected,
    quarantined or in conflict; each of those gets a one-line reason.
    """
    from datatool.ingest.pipeline import ingest as run_ingest

    ws = workspace(ws_path)
    with progress_bar("ingest", enabled=not json_out) as progress:
        report = run_ingest(
            ws,
            paths,
            workers=workers,
            frames=frames,
            allow_burned_in=allow_burned_in,
            progress=progress,
            batch_size=batch,
        )
    render.problems(report.rejected, "rejected")
    render.problems(report.quarantined, "quarantined")
    render.problems(report.conflicts, "conflict")
    if not json_out:
        render.notes(report.notes)
    render.show(report, _ingest_view, json_out, csv_out)
    finish(report.exit_code)


STATUS_PATIENTS_SHOWN = 50  # more patients than fit a screen: the CSV or JSON has them all


def _status_view(data: Status) -> Iterator[Block]:
    cov = data.calibration_coverage
    yield f"workspace {data.workspace}"
    yield (
        f"{data.patients} patients, {data.studies} studies, {data.series} series, "
        f"{data.images} images; calibrated (mm): {data.calibrated_images}"
        f" ({'-' if cov is None else f'{100 * cov:.1f}'} %)"
    )
    files = data.files
    why = ", ".join(f"{kind}: {n}" for kind, n in data.quarantined.items())
    yield (
        f"files: {files['ingested']} ingested, {files['quarantined']} quarantined"
        f"{f' ({why})' if why else ''}, {files['conflict']} conflicts kept aside"
    )
    handling = ", ".join(f"{k}: {v}" for k, v in sorted(data.pixel_handling.items())) or "-"
    yield f"pixels: {handling}"
    if data.blanked_without_room:
        yield (
            f"check: {data.blanked_without_room} images were blanked outside ultrasound "
            "regions that cover (nearly) all of them (ingested before datatool quarantined "
            "such images): burned-in text may remain in them"
        )
    table = Table(
        "per patient",
        ["patient", "sex", "age", "studies", "series", "sides", "images"],
        shown=STATUS_PATIENTS_SHOWN,
    )
    for row in data.per_patient:
        table.add(row.patient, row.sex, row.age, row.studies, row.series, row.sides, row.images)
    yield table
    if data.received or data.spooled:
        received = Table(
            "received (datatool listen)",
            ["calling AE", "first", "last", "objects", "ingested", "already present", "rejected"],
        )
        for r in data.received:
            received.add(
                r.calling_ae,
                f"{r.first:%Y-%m-%d %H:%M:%S}",
                f"{r.last:%Y-%m-%d %H:%M:%S}",
                r.objects,
                r.ingested,
                r.already_present,
                r.rejected,
            )
        yield received
        if data.spooled:
            yield f"{data.spooled} objects received, waiting in the spool to be ingested"


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def status(
    json_out: bool = JsonOpt, csv_out: Path | None = CsvOpt, ws_path: Path | None = WorkspaceOpt
):
    """What the catalogue holds: patients, studies, series, images, calibration, pixel handling."""
    from datatool.ingest.inventory import status as get_status

    render.show(get_status(workspace(ws_path)), _status_view, json_out, csv_out)


def _images_view(rows: list[ImageRow]) -> Iterator[Block]:
    table = Table(
        f"{len(rows)} images",
        ["id", "patient", "side", "date", "frame", "cols", "rows", "mm/px", "pixels"],
    )
    for r in rows:
        table.add(
            r.id,
            r.patient,
            r.side,
            r.study_date,
            r.frame,
            r.cols,
            r.rows,
            r.mm_per_px_x,
            r.pixel_handling,
        )
    yield table


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def images(
    patient: str | None = typer.Option(None, help="Only this patient (pseudonym)."),
    side: str | None = typer.Option(None, help="Only this side: L or R."),
    calibrated: bool | None = typer.Option(
        None, "--calibrated/--uncalibrated", help="Only images with (without) mm calibration."
    ),
    limit: int | None = typer.Option(None, min=1, max=MAX_INT, help="At most this many rows."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """List the catalogued images, with filters."""
    from datatool.ingest.inventory import ImageFilter, list_images

    rows = list_images(workspace(ws_path), ImageFilter(patient, side, calibrated, limit))
    render.show(rows, _images_view, json_out, csv_out)


def _clinical_view(report: ClinicalReport) -> Iterator[Block]:
    yield (
        f"{report.rows} rows: {report.updated} patients updated, {report.created} "
        f"added (not imaged yet), {report.unchanged} unchanged, "
        f"{len(report.rejected)} rejected"
    )


@app.command("ingest-clinical", rich_help_panel=PANEL_DATA)
@guarded
def ingest_clinical(
    csv_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="CSV with patient_id and any of sex, age, bmi, asa."
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Add clinical fields keyed by the original patient ID (pseudonymised on the way in)."""
    from datatool.ingest.clinical import ingest_clinical as run

    report = run(workspace(ws_path), csv_file)
    render.problems(report.rejected, "rejected")
    render.show(report, _clinical_view, json_out)
    finish(report.exit_code)


def _roman(cls: str) -> str:
    return "I" * int(cls) if cls.isdigit() and int(cls) <= 3 else cls


def _cohort_view(data: Cohort) -> Iterator[Block]:
    table = Table("cohort", ["", "value"], digits=1)
    n = data.patients
    table.add("patients, n", n)
    if n:
        table.add("female, n (%)", CountPct(data.female, data.female_pct))
        table.add("male, n (%)", CountPct(data.male, 100 * data.male / n))
    age, bmi, ipp = data.age, data.bmi, data.images_per_patient
    table.add(
        "age, years, mean ± SD",
        None if not age else f"{age.mean:.1f} ± {age.sd:.1f} ({age.min:.0f}-{age.max:.0f})",
    )
    table.add("BMI, kg/m², range", None if not bmi else f"{bmi.min:.1f}-{bmi.max:.1f}")
    for cls, count in data.asa.items():
        table.add(f"ASA {_roman(cls)}, n (%)", CountPct(count, 100 * count / n))
    table.add("images, n", data.images)
    if ipp:
        table.add(
            "images per patient, mean (range)", f"{ipp.mean:.1f} ({ipp.min:.0f}-{ipp.max:.0f})"
        )
    yield table


@app.command(rich_help_panel=PANEL_DATA)
@guarded
def cohort(
    all_patients: bool = typer.Option(False, "--all", help="Include patients with no images."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """The cohort table a study reports: n, female %, age mean ± SD, BMI range, ASA class."""
    from datatool.ingest.clinical import cohort as get_cohort

    data = get_cohort(workspace(ws_path), imaged_only=not all_patients)
    render.show(data, _cohort_view, json_out, csv_out)


def _demo_view(summary: DemoDataset) -> Iterator[Block]:
    yield (
        f"wrote {summary.images} images of {summary.patients} patients to "
        f"{summary.dicom_dir}, labels of two raters to {summary.labels_dir}, "
        f"clinical table {summary.clinical_csv}"
        + (f"; {summary.cines} of the files are cine loops" if summary.cines else "")
    )
    yield "encodings: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.encodings.items()))


@app.command("demo-data", rich_help_panel=PANEL_DATA)
@guarded
def demo_data(
    out_dir: Path = typer.Argument(
        ..., file_okay=False, help="Folder to write the demo dataset into."
    ),
    patients: int = typer.Option(10, min=1, help="Number of patients."),
    images_per_side: str = typer.Option(
        "4", help="Images per side: N or MIN-MAX (7-8 with 200 patients is the study's 3000)."
    ),
    seed: int = typer.Option(
        0, min=0, max=MAX_INT, help="Random seed: the same seed writes the same files."
    ),
    cines: int = typer.Option(
        0,
        min=0,
        help="Cine loops to add (spread over the patients, at most 2 per patient): "
        "multi-frame DICOM files whose frames both raters labelled, as one W x H x N label "
        "volume each.",
    ),
    cine_frames: int = typer.Option(8, min=2, max=64, help="Frames per cine loop."),
    json_out: bool = JsonOpt,
):
    """Write a synthetic anterior-sciatic ultrasound dataset: DICOM exams with fake PHI, two
    raters' ITK-SNAP label maps, the label description file and a clinical CSV."""
    from datatool.demo.generator import parse_images_per_side, write_demo_dataset

    try:
        per_side = parse_images_per_side(images_per_side)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--images-per-side") from None
    if cines > 2 * patients:
        raise typer.BadParameter(
            f"at most 2 per patient ({2 * patients} with {patients} patients), got {cines}",
            param_hint="--cines",
        )
    with progress_bar("demo-data", enabled=not json_out) as progress:
        summary = write_demo_dataset(
            out_dir,
            patients=patients,
            seed=seed,
            images_per_side=per_side,
            progress=progress,
            cines=cines,
            cine_frames=cine_frames,
        )
    render.show(summary, _demo_view, json_out)
