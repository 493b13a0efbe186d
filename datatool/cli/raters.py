"""Rater quality on gold-standard tasks: raters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    PANEL_AGREEMENT,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    workspace,
)
from datatool.cli.render import Block, MeanSD, Table

if TYPE_CHECKING:
    from datatool.analysis.rater_quality import GoldScore, RaterQuality


def _mean(d: dict) -> float | None:
    return d["mean"] if d.get("n") else None


def _row(table: Table, rater: str, g: GoldScore) -> None:
    table.add(
        rater,
        g.structure,
        g.images,
        _mean(g.iou),
        MeanSD.of(g.dice),
        g.both_absent,
        g.one_absent,
        g.dice_first_half,
        g.dice_second_half,
        g.drift,
    )


def _quality_view(r: RaterQuality) -> Iterator[Block]:
    if not r.raters:
        yield (
            "no gold-standard tasks yet: hand some out with 'datatool labelstudio push --rater R "
            "--gold N' or 'datatool export itksnap --rater R --gold N'"
        )
        return
    for q in r.raters:
        newer = (
            f"; {q.reference_newer} references have a newer version since (scored against the "
            "version handed out)"
            if q.reference_newer
            else ""
        )
        drift = f"drift compares halves of {q.half} each" if q.half else "too few for drift"
        yield (
            f"{q.rater}: {q.labelled} of {q.handed} gold images labelled, against "
            f"{', '.join(q.references)}; {drift}{newer}"
        )
    table = Table(
        "rater quality on gold-standard tasks",
        [
            "rater",
            "structure",
            "gold images",
            "IoU mean",
            "Dice mean ± SD",
            "both empty",
            "one empty",
            "Dice 1st half",
            "Dice 2nd half",
            "drift",
        ],
        name="raters",
    )
    for q in r.raters:
        for g in q.structures:
            _row(table, q.rater, g)
        _row(table, q.rater, q.overall)
    yield table
    yield (
        "Dice/IoU: images where label and reference both leave a structure empty are left out "
        "(both empty); one empty counts 0. Drift: mean Dice of the second half of a rater's "
        "gold labels (in the order labelled) minus the first half; negative is worse lately."
    )


@app.command(rich_help_panel=PANEL_AGREEMENT)
@guarded
def raters(
    rater: str | None = typer.Option(None, "--rater", help="Only this rater."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Each rater against the reference on their gold-standard tasks: per structure IoU and
    Dice, the number of gold images labelled, and drift (the second half of their gold labels
    against the first, in the order labelled).

    Gold tasks are images that already had a reference label (a consensus or another rater)
    when 'datatool labelstudio push --gold N' or 'datatool export itksnap --gold N' mixed them
    into the rater's queue as ordinary tasks; each is scored against the reference version
    recorded then.
    """
    from datatool.analysis.rater_quality import rater_quality

    render.show(rater_quality(workspace(ws_path), rater), _quality_view, json_out, csv_out)
