"""Dataset commands: init, ingest, status, images, ingest-clinical, cohort, demo-data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from datatool.cli.common import JsonOpt, WorkspaceOpt, _fmt, app, err, guarded, out, print_json, \
    progress_bar, workspace


@app.command()
@guarded
def init(
    directory: Path = typer.Argument(Path("."), help="Folder to make a workspace of."),
    protocol: str = typer.Option("anterior_sciatic", help="Label protocol (schemas/NAME.yaml)."),
):
    """Create a workspace: catalogue, content-addressed store and pseudonym key (like git init).

    Back up .datatool/secret.key apart from the data: the same key gives the same pseudonyms.
    """
    from datatool.core.protocol import load_protocol
    from datatool.core.workspace import init_workspace

    load_protocol(protocol)
    root, created = init_workspace(directory, protocol=protocol)
    word = "Created" if created else "Already a workspace:"
    out.print(f"{word} {root} (catalogue, store, key in {root / '.datatool'})")


@app.command()
@guarded
def ingest(
    paths: list[Path] = typer.Argument(..., help="DICOM files and folders (searched recursively)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-j", show_default="all cores",
        help="Decoding processes beside the one writing the catalogue (0: do all in one)."),
    batch: int = typer.Option(64, min=1, help="Files per catalogue transaction."),
    frames: str = typer.Option(
        "auto", help="Frames of a multi-frame cine to use: first, middle, all, or auto "
                     "(all frames of a cine up to 32 frames, the middle frame of a longer one)."),
    allow_burned_in: bool = typer.Option(
        False, "--allow-burned-in",
        help="Ingest ultrasound images that have no region information as they are, burned-in "
             "text included (otherwise they are quarantined). Check the images first."),
    json_out: bool = JsonOpt,
    ws_path: Optional[Path] = WorkspaceOpt,
):
    """Ingest DICOM exams: decode, de-identify, store, catalogue. Re-running is a no-op.

    Exit code 0 when every file was ingested (or already present), 1 when some were rejected,
    quarantined or in conflict; each of those gets a one-line reason.
    """
    from datatool.ingest.dicom import FRAME_MODES
    from datatool.ingest.pipeline import ingest as run_ingest

    if frames not in FRAME_MODES:
        raise typer.BadParameter(f"choose one of {', '.join(FRAME_MODES)}", param_hint="--frames")
    ws = workspace(ws_path)
    with progress_bar("ingest", enabled=not json_out) as progress:
        report = run_ingest(ws, paths, workers=workers, frames=frames,
                            allow_burned_in=allow_burned_in, progress=progress,
                            batch_size=batch)
    if json_out:
        print_json(report.as_dict())
    else:
        for label, items in (("rejected", report.rejected), ("quarantined", report.quarantined),
                             ("conflict", report.conflicts)):
            for path, reason in items:
                err.print(f"[yellow]{label}:[/yellow] {path}: {reason}", highlight=False,
                          soft_wrap=True)
        table = Table(title="ingest", show_header=True)
        table.add_column("outcome")
        table.add_column("files", justify="right")
        table.add_row("ingested", str(report.ingested))
        table.add_row("images added", str(report.images_added))
        table.add_row("already present", str(report.already_present))
        table.add_row("rejected", str(len(report.rejected)))
        table.add_row("quarantined (burned-in)", str(len(report.quarantined)))
        table.add_row("conflicts (kept aside)", str(len(report.conflicts)))
        if report.skipped:
            table.add_row("skipped (DICOMDIR index)", str(report.skipped))
        out.print(table)
        out.print(f"frames: {report.frames_mode}")
    raise typer.Exit(report.exit_code)


@app.command()
@guarded
def status(json_out: bool = JsonOpt, ws_path: Optional[Path] = WorkspaceOpt):
    """What the catalogue holds: patients, studies, series, images, calibration, pixel handling."""
    from datatool.ingest.inventory import status as get_status

    data = get_status(workspace(ws_path))
    if json_out:
        print_json(data)
        return
    cov = data["calibration_coverage"]
    out.print(f"workspace {data['workspace']}")
    out.print(f"{data['patients']} patients, {data['studies']} studies, {data['series']} series, "
              f"{data['images']} images; calibrated (mm): {data['calibrated_images']}"
              f" ({_fmt(None if cov is None else 100 * cov)} %)")
    files = data["files"]
    out.print(f"files: {files['ingested']} ingested, {files['quarantined']} quarantined, "
              f"{files['conflict']} conflicts kept aside")
    handling = ", ".join(f"{k}: {v}" for k, v in sorted(data["pixel_handling"].items())) or "-"
    out.print(f"pixels: {handling}")
    table = Table(title="per patient")
    for col in ("patient", "sex", "age", "studies", "series", "sides", "images"):
        table.add_column(col, justify="left" if col == "patient" else "right")
    for row in data["per_patient"]:
        table.add_row(row["patient"], _fmt(row["sex"]), _fmt(row["age"]), str(row["studies"]),
                      str(row["series"]), str(row["sides"]), str(row["images"]))
    out.print(table)


@app.command()
@guarded
def images(
    patient: Optional[str] = typer.Option(None, help="Only this patient (pseudonym)."),
    side: Optional[str] = typer.Option(None, help="Only this side: L or R."),
    calibrated: Optional[bool] = typer.Option(None, "--calibrated/--uncalibrated",
                                              help="Only images with (without) mm calibration."),
    limit: Optional[int] = typer.Option(None, help="At most this many rows."),
    json_out: bool = JsonOpt,
    ws_path: Optional[Path] = WorkspaceOpt,
):
    """List the catalogued images, with filters."""
    from datatool.ingest.inventory import ImageFilter, list_images

    rows = list_images(workspace(ws_path), ImageFilter(patient, side, calibrated, limit))
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} images")
    for col in ("id", "patient", "side", "date", "frame", "size", "mm/px", "pixels"):
        table.add_column(col)
    for r in rows:
        mm = f"{r['mm_per_px_x']:.3f}" if r["mm_per_px_x"] else "-"
        table.add_row(str(r["id"]), r["patient"], r["side"] or "-", r["study_date"] or "-",
                      str(r["frame"]), f"{r['cols']}x{r['rows']}", mm, r["pixel_handling"])
    out.print(table)


@app.command("ingest-clinical")
@guarded
def ingest_clinical(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                    help="CSV with patient_id and any of sex, age, bmi, asa."),
    json_out: bool = JsonOpt,
    ws_path: Optional[Path] = WorkspaceOpt,
):
    """Add clinical fields keyed by the original patient ID (pseudonymised on the way in)."""
    from datatool.ingest.clinical import ingest_clinical as run

    report = run(workspace(ws_path), csv_file)
    if json_out:
        print_json(report.as_dict())
    else:
        for where, reason in report.rejected:
            err.print(f"[yellow]rejected:[/yellow] {where}: {reason}", highlight=False,
                      soft_wrap=True)
        out.print(f"{report.rows} rows: {report.updated} patients updated, {report.created} "
                  f"added (not imaged yet), {report.unchanged} unchanged, "
                  f"{len(report.rejected)} rejected")
    raise typer.Exit(report.exit_code)


@app.command()
@guarded
def cohort(
    all_patients: bool = typer.Option(False, "--all", help="Include patients with no images."),
    json_out: bool = JsonOpt,
    ws_path: Optional[Path] = WorkspaceOpt,
):
    """The cohort table a study reports: n, female %, age mean ± SD, BMI range, ASA class."""
    from datatool.ingest.clinical import cohort as get_cohort

    data = get_cohort(workspace(ws_path), imaged_only=not all_patients)
    if json_out:
        print_json(data)
        return
    table = Table(title="cohort")
    table.add_column("")
    table.add_column("value", justify="right")
    n = data["patients"]
    table.add_row("patients, n", str(n))
    if n:
        table.add_row("female, n (%)", f"{data['female']} ({data['female_pct']:.1f} %)")
        table.add_row("male, n (%)", f"{data['male']} ({100 * data['male'] / n:.1f} %)")
    age, bmi, ipp = data["age"], data["bmi"], data["images_per_patient"]
    table.add_row("age, years, mean ± SD", "-" if not age else
                  f"{age['mean']:.1f} ± {age['sd']:.1f} ({age['min']:.0f}-{age['max']:.0f})")
    table.add_row("BMI, kg/m², range", "-" if not bmi else f"{bmi['min']:.1f}-{bmi['max']:.1f}")
    for cls, count in data["asa"].items():
        table.add_row(f"ASA {'I' * int(cls) if int(cls) <= 3 else cls}, n (%)",
                      f"{count} ({100 * count / n:.1f} %)")
    table.add_row("images, n", str(data["images"]))
    if ipp:
        table.add_row("images per patient, mean (range)",
                      f"{ipp['mean']:.1f} ({ipp['min']:.0f}-{ipp['max']:.0f})")
    out.print(table)


@app.command("demo-data")
@guarded
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the demo dataset into."),
    patients: int = typer.Option(10, min=1, help="Number of patients."),
    images_per_side: str = typer.Option(
        "4", help="Images per side: N or MIN-MAX (7-8 with 200 patients is the study's 3000)."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same files."),
    json_out: bool = JsonOpt,
):
    """Write a synthetic anterior-sciatic ultrasound dataset: DICOM exams with fake PHI, two
    raters' ITK-SNAP label maps, the label description file and a clinical CSV."""
    from datatool.demo.generator import parse_images_per_side, write_demo_dataset

    try:
        per_side = parse_images_per_side(images_per_side)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--images-per-side") from None
    with progress_bar("demo-data", enabled=not json_out) as progress:
        summary = write_demo_dataset(out_dir, patients=patients, seed=seed,
                                     images_per_side=per_side, progress=progress)
    if json_out:
        print_json(summary)
        return
    out.print(f"wrote {summary['images']} images of {summary['patients']} patients to "
              f"{summary['dicom_dir']}, labels of two raters to {summary['labels_dir']}, "
              f"clinical table {summary['clinical_csv']}")
    encodings = ", ".join(f"{k}: {v}" for k, v in sorted(summary["encodings"].items()))
    out.print(f"encodings: {encodings}")
