"""The study report: report."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    MAX_INT,
    PANEL_REPORT,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    workspace,
)
from datatool.cli.render import Block, Table

if TYPE_CHECKING:
    from datatool.report.sections import StudyReport


class Format(StrEnum):
    html = "html"
    md = "md"
    pdf = "pdf"


def _report_view(r: StudyReport) -> Iterator[Block]:
    table = Table("sections", ["section", "in the report", "from"])
    table.add("cohort", r.cohort is not None, f"{r.cohort.patients} patients" if r.cohort else None)
    a = r.agreement
    table.add("agreement", a is not None, f"sample {a.sample}, {a.source}" if a else None)
    table.add("rater quality", r.quality is not None, r.quality.source if r.quality else None)
    go = r.gold
    gold_from = None
    if go is not None:
        labelled = sum(g.labelled for g in go.raters)
        gold_from = f"{labelled} gold labels of {len(go.raters)} raters (datatool raters)"
    table.add("gold-standard tasks", go is not None, gold_from)
    sp = r.split
    table.add("split", sp is not None, f"{sp.name} (hash {sp.hash[:12]})" if sp else None)
    ru = r.run
    table.add("training", ru is not None, f"run {ru.run}, {ru.epochs_done} epochs" if ru else None)
    sc = r.score
    table.add("results", sc is not None, f"run {sc.run}, {sc.set} set, {sc.source}" if sc else None)
    table.add("review queue", r.qa is not None, f"{r.qa.open} open flags" if r.qa else None)
    table.add("figures", bool(r.figures), f"{len(r.figures)} PNG")
    yield table
    if r.missing:
        missing = Table("missing", ["section", "what", "the command that makes it"], name="missing")
        for m in r.missing:
            missing.add(m.section, m.what, m.command)
        yield missing
    extra = f" (and {len(r.written) - 1} PNG beside it)" if len(r.written) > 1 else ""
    yield f"wrote {r.out}{extra}"


@app.command(rich_help_panel=PANEL_REPORT)
@guarded
def report(
    run: int | None = typer.Option(
        None,
        min=1,
        max=MAX_INT,
        show_default="the latest scored run",
        help="Training run to report (datatool runs).",
    ),
    agreement: int | None = typer.Option(
        None,
        min=1,
        max=MAX_INT,
        show_default="the latest sample",
        help="Agreement sample to report (its id, as datatool agreement prints it).",
    ),
    split: str | None = typer.Option(
        None, show_default="the run's split", help="Split to report (datatool split create)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        dir_okay=False,
        show_default="reports/study.FORMAT in the workspace",
        help="File to write.",
    ),
    fmt: Format = typer.Option(
        Format.html,
        "--format",
        help="html: one self-contained page (figures embedded, works offline); md: Markdown "
        "with the PNGs in a folder beside it; pdf: the page printed by headless Chromium.",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """The whole study in one file: cohort, agreement, split, training, the results per
    structure beside the study's published numbers, ANOVA, examples, inference time, the
    review queue and the provenance of every number.

    Reads the catalogue and the stored agreement and score results; computes nothing new.
    What is missing is listed with the command that makes it (exit code 0).
    """
    from datatool.report.study import study_report

    result = study_report(
        workspace(ws_path), run=run, agreement=agreement, split=split, out=out, fmt=fmt.value
    )
    if not json_out:
        render.notes(result.notes)
    render.show(result, _report_view, json_out, csv_out)
