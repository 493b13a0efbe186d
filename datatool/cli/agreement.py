"""Agreement and consensus commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from datatool.cli.common import (
    PANEL_AGREEMENT,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    out,
    print_json,
    progress_bar,
    workspace,
)


def _split_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _ms(d: dict) -> str:
    if not d or d["n"] == 0:
        return "-"
    return f"{d['mean']:.3f} ± {d['sd']:.3f}"


def _mq(d: dict) -> str:
    if not d or d["n"] == 0:
        return "-"
    return f"{d['median']:.3f} ({d['p25']:.3f}, {d['p75']:.3f})"


def _icc(d: dict | None) -> tuple[str, str, str]:
    if not d:
        return "-", "-", "-"
    ci = "-" if d["ci_low"] is None else f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
    p = "< 0.001" if d["p"] < 0.001 else f"{d['p']:.3f}"
    return f"{d['icc']:.3f}", ci, f"F({d['df1']},{d['df2']}) = {d['f']:.2f}, p {p}"


@app.command(rich_help_panel=PANEL_AGREEMENT)
@guarded
def agreement(
    sample: int | None = typer.Option(
        None, help="Draw this many images labelled by both raters (default: all of them)."
    ),
    seed: int = typer.Option(0, help="Seed of the draw; the same seed gives the same sample."),
    raters: str | None = typer.Option(
        None, help="Two raters, e.g. AN1,AN2 (default: the two human raters with most labels)."
    ),
    structures: str | None = typer.Option(
        None, help="Comma-separated structures (default: all of the protocol)."
    ),
    measure: str | None = typer.Option(
        None,
        help="Per-image measure for the ICC: area_mm2 (default when every image is "
        "calibrated) or area_px.",
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for agreement.json and the Bland-Altman PNGs "
        "(default: WORKSPACE/reports/agreement-SAMPLE).",
    ),
    resample: bool = typer.Option(
        False, help="Draw a new sample from the latest labels instead of reusing the saved one."
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Inter-rater agreement: ICC(2,1) with 95 % CI per structure and over all, Dice and IoU,
    Bland-Altman plots. The sample is saved: the same command prints the same numbers again."""
    from datatool.analysis.agreement import run_agreement

    report = run_agreement(
        workspace(ws_path),
        sample=sample,
        seed=seed,
        raters=_split_list(raters),
        structures=_split_list(structures),
        measure=measure,
        out_dir=out_dir,
        resample=resample,
    )
    if json_out:
        print_json(report)
        return
    smp = report["sample"]
    a, b = report["raters"]
    out.print(
        f"sample {smp['id']} ({'saved, reused' if smp['reused'] else 'new, saved'}): "
        f"{smp['images']} images labelled by both {a} and {b}, seed {smp['seed']}; "
        f"measure {report['measure']}"
    )
    table = Table(title="inter-rater agreement")
    for col in (
        "structure",
        "ICC(2,1)",
        "95 % CI",
        "F test",
        "Dice mean ± SD",
        "IoU median (P25, P75)",
        "both empty",
        "one empty",
    ):
        table.add_column(col, justify="left" if col == "structure" else "right")
    for r in report["structures"]:
        table.add_row(
            r["structure"],
            *_icc(r["icc"]),
            _ms(r["dice"]),
            _mq(r["iou"]),
            str(r["both_absent"]),
            str(r["one_absent"]),
        )
    table.add_row("all structures", *_icc(report["overall_icc"]), "", "", "", "")
    out.print(table)
    out.print(
        "all structures: one ICC over every (image, structure) pair; the structures' "
        "different sizes inflate it, so read it beside the per-structure rows. Dice/IoU: "
        "images where both raters left a structure empty are left out; one empty counts 0."
    )
    for note in report["notes"]:
        out.print(f"note: {note}")
    out.print(f"Bland-Altman plots and agreement.json in {report['out_dir']}")


@app.command(rich_help_panel=PANEL_AGREEMENT)
@guarded
def consensus(
    method: str = typer.Option("staple", help="staple, majority, or rater:NAME."),
    raters: str | None = typer.Option(None, help="Raters to fuse (default: all human)."),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Make the reference label of each image from the raters' labels (stored as annotations
    of rater consensus:METHOD; training and splits use them)."""
    from datatool.analysis.consensus import make_consensus

    with progress_bar("consensus", enabled=not json_out) as progress:
        result = make_consensus(workspace(ws_path), method, _split_list(raters), progress=progress)
    if json_out:
        print_json(result)
        return
    out.print(
        f"{result['reference_rater']}: {result['images']} images from "
        f"{', '.join(result['raters'])}: {result['new_versions']} new versions, "
        f"{result['unchanged']} unchanged, {result['skipped_too_few_raters']} images "
        "skipped (too few raters)"
    )
