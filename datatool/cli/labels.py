"""Rater and label-coverage commands: rater add, rater list, labels."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from datatool.cli.common import (
    PANEL_LABELS,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    out,
    print_json,
    rater_app,
    workspace,
)


@rater_app.command("add")
@guarded
def rater_add(
    name: str = typer.Argument(..., help="The rater's name or initials, e.g. AN1."),
    ws_path: Path | None = WorkspaceOpt,
):
    """Register a rater. Each rater labels on their own and never sees another's labels."""
    from datatool.labels.annotations import add_rater

    rater, created = add_rater(workspace(ws_path), name)
    out.print(f"{'Registered' if created else 'Already registered:'} rater {rater.name}")


@rater_app.command("list")
@guarded
def rater_list(json_out: bool = JsonOpt, ws_path: Path | None = WorkspaceOpt):
    """List raters and how many images each has labelled."""
    from datatool.labels.annotations import list_raters

    rows = list_raters(workspace(ws_path))
    if json_out:
        print_json(rows)
        return
    table = Table(title="raters")
    for col in ("rater", "kind", "images labelled", "registered"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], str(r["images_labelled"]), r["registered"])
    out.print(table)


@app.command(rich_help_panel=PANEL_LABELS)
@guarded
def labels(
    rater: str | None = typer.Option(None, help="Only this rater."),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Label coverage: per rater, images labelled and, per structure, present or absent."""
    from datatool.labels.annotations import label_coverage

    data = label_coverage(workspace(ws_path), rater)
    if json_out:
        print_json(data)
        return
    for r in data["raters"]:
        sources = ", ".join(f"{k}: {v}" for k, v in sorted(r["sources"].items())) or "-"
        table = Table(
            title=f"{r['rater']} ({r['kind']}): {r['images_labelled']} of "
            f"{r['images_total']} images labelled, {r['versions']} versions; "
            f"from {sources}"
        )
        table.add_column("structure")
        table.add_column("present", justify="right")
        table.add_column("absent", justify="right")
        for name, counts in r["structures"].items():
            table.add_row(name, str(counts["present"]), str(counts["absent"]))
        out.print(table)
    if not data["raters"]:
        out.print("no raters yet: run 'datatool rater add NAME'")
