"""Rater and label-coverage commands: rater add, rater list, labels; and the view of a sync
report that both sync commands (ITK-SNAP, Label Studio) print."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    PANEL_LABELS,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    finish,
    guarded,
    rater_app,
    workspace,
)
from datatool.cli.render import Block, Table

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.labels.annotations import Coverage, RaterAdded, RaterRow, SyncReport

_SYNC_UNITS = {"itksnap": "label files", "labelstudio": "tasks"}


def _sync_view(report: SyncReport) -> Iterator[Block]:
    table = Table(
        f"sync {report.source}: rater {report.rater}",
        ["outcome", _SYNC_UNITS.get(report.source, "items")],
    )
    table.add("seen", report.seen)
    table.add("new versions", report.new_versions)
    table.add("unchanged", report.unchanged)
    table.add("rejected", len(report.rejected))
    if report.source == "labelstudio":
        table.add("not annotated yet", len(report.not_annotated))
    table.add("notes", len(report.notes))
    yield table


def show_sync_report(
    report: SyncReport, json_out: bool, csv_out: Path | None, verbose: bool = False
) -> None:
    """Print a sync report (one stderr line per rejected item, notes unless ``--json``; the
    tasks not annotated yet as one line, each listed only when ``verbose``) and end the
    command with its exit code: 0 all stored or unchanged, 1 something rejected."""
    render.problems(report.rejected, "rejected")
    if not json_out:
        render.notes(report.notes)
        if verbose:
            render.notes((item, "no annotation yet") for item in report.not_annotated)
        elif report.not_annotated:
            render.notes(
                [f"{len(report.not_annotated)} tasks not annotated yet (--verbose lists them)"]
            )
    render.show(report, _sync_view, json_out, csv_out)
    finish(report.exit_code)


def _rater_added_view(r: RaterAdded) -> Iterator[Block]:
    yield f"{'Registered' if r.created else 'Already registered:'} rater {r.name}"


@rater_app.command("add")
@guarded
def rater_add(
    name: str = typer.Argument(..., help="The rater's name or initials, e.g. AN1."),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Register a rater. Each rater labels on their own and never sees another's labels."""
    from datatool.labels.annotations import add_rater

    render.show(add_rater(workspace(ws_path), name), _rater_added_view, json_out)


def _raters_view(rows: list[RaterRow]) -> Iterator[Block]:
    table = Table("raters", ["rater", "kind", "images labelled", "registered"])
    for r in rows:
        table.add(r.name, r.kind, r.images_labelled, r.registered)
    yield table


@rater_app.command("list")
@guarded
def rater_list(
    json_out: bool = JsonOpt, csv_out: Path | None = CsvOpt, ws_path: Path | None = WorkspaceOpt
):
    """List raters and how many images each has labelled."""
    from datatool.labels.annotations import list_raters

    render.show(list_raters(workspace(ws_path)), _raters_view, json_out, csv_out)


def _coverage_view(data: Coverage) -> Iterator[Block]:
    if not data.raters:
        yield "no raters yet: run 'datatool rater add NAME'"
        return
    summary = Table(
        "each rater's labels",
        [
            "rater",
            "kind",
            "images labelled",
            "of images",
            "versions",
            "from",
            "started from a draft",
            "draft accepted unchanged",
        ],
        name="raters",
    )
    for r in data.raters:
        human = r.kind == "human"
        summary.add(
            r.rater,
            r.kind,
            r.images_labelled,
            r.images_total,
            r.versions,
            ", ".join(f"{k}: {v}" for k, v in sorted(r.sources.items())) or None,
            r.from_draft if human else None,
            r.draft_unchanged if human else None,
        )
    yield summary
    for r in data.raters:
        table = Table(
            f"{r.rater}: each structure present or absent",
            ["structure", "present", "absent"],
            name=r.rater,
        )
        for name, counts in r.structures.items():
            table.add(name, counts.present, counts.absent)
        yield table


@app.command(rich_help_panel=PANEL_LABELS)
@guarded
def labels(
    rater: str | None = typer.Option(None, help="Only this rater."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Label coverage: per rater, images labelled, how many labels started from a model
    draft (and were accepted unchanged), and per structure, present or absent.

    With --csv, the summary (one row per rater) goes to FILE and each rater's structures
    beside it as FILE-RATER.csv.
    """
    from datatool.labels.annotations import label_coverage

    render.show(label_coverage(workspace(ws_path), rater), _coverage_view, json_out, csv_out)
