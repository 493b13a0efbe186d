"""Agreement and consensus: agreement, consensus."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    MAX_INT,
    PANEL_AGREEMENT,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    progress_bar,
    workspace,
)
from datatool.cli.render import Block, Interval, MeanSD, MedianIQR, PValue, Table

NSD_TOLERANCE_MM = 2.0  # datatool.analysis.metrics.NSD_TOLERANCE_MM (imported late there)

if TYPE_CHECKING:
    from datatool.analysis.agreement import AgreementReport
    from datatool.analysis.consensus import ConsensusReport
    from datatool.analysis.metrics import ICC


class Measure(StrEnum):
    area_mm2 = "area_mm2"
    area_px = "area_px"


class ConsensusMethod(StrEnum):
    staple = "staple"
    majority = "majority"
    rater = "rater"


def _split_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _icc_cells(icc: ICC | None) -> list[object]:
    if icc is None:
        return [None, None, None]
    ci = None if icc.ci_low is None or icc.ci_high is None else Interval(icc.ci_low, icc.ci_high)
    return [
        icc.icc,
        ci,
        f"F({icc.df1},{icc.df2}) = {icc.f:.2f}, p {render.cell_text(PValue(icc.p))}",
    ]


def _surface_table(report: AgreementReport) -> Table:
    unit = report.surface_unit
    table = Table(
        f"boundary agreement (surface distances, {unit})",
        [
            "structure",
            f"HD95 median (P25, P75), {unit}",
            f"HD95 mean ± SD, {unit}",
            f"ASSD mean ± SD, {unit}",
            f"NSD at {report.nsd_tolerance:g} {unit}, mean ± SD",
            "NSD median (P25, P75)",
            "both empty",
            "one empty",
        ],
        name="surface",
    )
    for r in report.structures:
        table.add(
            r.structure,
            MedianIQR.of(r.hd95),
            MeanSD.of(r.hd95),
            MeanSD.of(r.assd),
            MeanSD.of(r.nsd),
            MedianIQR.of(r.nsd),
            r.both_absent,
            r.one_absent,
        )
    return table


def _agreement_view(report: AgreementReport) -> Iterator[Block]:
    smp = report.sample
    a, b = report.raters
    kept = (
        "; images labelled from model drafts kept (--include-prelabelled)"
        if report.include_prelabelled
        else ""
    ) + ("; raters' gold-standard labels kept (--include-gold)" if report.include_gold else "")
    if report.per_cine:
        kept += f"; at most one frame per cine loop (--per-cine): {report.cine_frames} frames"
    elif report.cine_frames:
        kept += f"; {report.cine_frames} frames of {report.cines} cine loop(s)"
    yield (
        f"sample {smp.id} ({'saved, reused' if smp.reused else 'new, saved'}): "
        f"{smp.images} images labelled by both {a} and {b}, seed {smp.seed}; "
        f"measure {report.measure}{kept}"
    )
    if smp.why_new:
        yield f"new sample: {smp.why_new} (the earlier sample stays saved)"
    table = Table(
        "inter-rater agreement",
        [
            "structure",
            "ICC(2,1)",
            "95 % CI",
            "F test",
            "Dice mean ± SD",
            "IoU median (P25, P75)",
            "both empty",
            "one empty",
        ],
        name="agreement",
    )
    for r in report.structures:
        table.add(
            r.structure,
            *_icc_cells(r.icc),
            MeanSD.of(r.dice),
            MedianIQR.of(r.iou),
            r.both_absent,
            r.one_absent,
        )
    table.add("all structures", *_icc_cells(report.overall_icc), None, None, None, None)
    yield table
    yield (
        "all structures: one ICC over every (image, structure) pair; the structures' "
        "different sizes inflate it, so read it beside the per-structure rows. Dice/IoU: "
        "images where both raters left a structure empty are left out; one empty counts 0."
    )
    if report.surface_unit is None:
        yield "surface distances: not computed (--no-surface)"
    else:
        yield from _surface_view(report)
    for note in report.notes:
        yield f"note: {note}"
    yield f"Bland-Altman plots and agreement.json in {report.out_dir}"


def _surface_view(report: AgreementReport) -> Iterator[Block]:
    yield _surface_table(report)
    yield (
        f"HD95: the larger of the two directed 95th-percentile border distances; ASSD: the "
        f"mean border distance, both directions; NSD: the share of both borders within "
        f"{report.nsd_tolerance:g} {report.surface_unit} of the other (--tolerance). In "
        f"{report.surface_unit} with each image's own x and y spacing. An image where both or "
        "one rater left the structure empty has no surface distance (not 0): it is counted "
        "in the empty columns and left out of the figures."
    )


@app.command(rich_help_panel=PANEL_AGREEMENT)
@guarded
def agreement(
    sample: int | None = typer.Option(
        None,
        min=1,
        max=MAX_INT,
        help="Draw this many images labelled by both raters (default: all of them); a cine's "
        "frames are images, each drawn like a still (see --per-cine).",
    ),
    seed: int = typer.Option(
        0, min=0, max=MAX_INT, help="Seed of the draw; the same seed gives the same sample."
    ),
    raters: str | None = typer.Option(
        None, help="Two raters, e.g. AN1,AN2 (default: the two human raters with most labels)."
    ),
    structures: str | None = typer.Option(
        None, help="Comma-separated structures (default: all of the protocol)."
    ),
    measure: Measure | None = typer.Option(
        None,
        help="Per-image measure for the ICC (default: area_mm2 when every image is "
        "calibrated, else area_px).",
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        file_okay=False,
        help="Folder for agreement.json and the Bland-Altman PNGs "
        "(default: WORKSPACE/reports/agreement-SAMPLE).",
    ),
    resample: bool = typer.Option(
        False, help="Draw a new sample from the latest labels instead of reusing the saved one."
    ),
    include_prelabelled: bool = typer.Option(
        False,
        "--include-prelabelled",
        help="Keep images whose labels started from a model draft in a new sample (left out "
        "by default: two raters who start from one draft are not independent).",
    ),
    include_gold: bool = typer.Option(
        False,
        "--include-gold",
        help="Keep raters' labels of their gold-standard tasks in a new sample (left out by "
        "default: a label made to be checked against a reference is no independent rating).",
    ),
    per_cine: bool = typer.Option(
        False,
        "--per-cine",
        help="At most one frame of each cine loop (drawn with --seed) in a new sample: frames "
        "of one loop are not independent ratings.",
    ),
    tolerance: float = typer.Option(
        NSD_TOLERANCE_MM,
        min=0,
        max=1000,
        help="Tolerance of the normalised surface distance (NSD), in mm: the share of both "
        "raters' boundaries within this distance of the other's (in px when an image is not "
        "calibrated).",
    ),
    surface: bool = typer.Option(
        True,
        "--surface/--no-surface",
        help="Compute the surface distances (about 2 ms per image and structure; "
        "--no-surface for ICC, Dice and IoU alone).",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Inter-rater agreement: ICC(2,1) with 95 % CI per structure and over all, Dice and IoU,
    the surface distances (HD95, ASSD, NSD at --tolerance mm, with each image's x and y pixel
    spacing), Bland-Altman plots. The sample is saved: the same command prints the same
    numbers again.

    A new sample leaves out images whose labels (either rater's) started from a model draft,
    and says how many; --include-prelabelled keeps them and marks the report.

    A cine loop's frames are images like stills, and a sample draws among them: frames of
    one loop are not independent ratings (the same anatomy a fraction of a second apart,
    labelled by the same rater in one sitting), so several of them make the ICC's confidence
    interval too narrow. The report says how many of the sample's images are cine frames;
    --per-cine takes at most one frame of each loop.
    """
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
        include_prelabelled=include_prelabelled,
        include_gold=include_gold,
        tolerance=tolerance,
        per_cine=per_cine,
        surface=surface,
    )
    render.show(report, _agreement_view, json_out, csv_out)


def _consensus_view(r: ConsensusReport) -> Iterator[Block]:
    yield (
        f"{r.reference_rater}: {r.images} images from {', '.join(r.raters)}: "
        f"{r.new_versions} new versions, {r.unchanged} unchanged, "
        f"{r.skipped_too_few_raters} images skipped (too few raters)"
    )
    if r.gold_left_out:
        yield (
            f"{r.gold_left_out} labels of gold-standard tasks left out (--include-gold fuses them)"
        )
    if r.adjudication:
        earlier = sum(a.earlier_consensus for a in r.adjudication)
        yield (
            f"{r.needs_adjudication} image{' needs' if r.needs_adjudication == 1 else 's need'} "
            "adjudication: raters drew one region under "
            "different names, so they have no consensus label (decide, correct the rater's "
            "label and run consensus again)"
            + (f"; {earlier} of them keep an earlier consensus version" if earlier else "")
        )
        table = Table(
            "images that need adjudication: a structure of one rater lying on another "
            "structure of the other (share of its pixels), and the other way round",
            ["image", "rater A", "structure A", "rater B", "structure B", "share A", "share B"],
            digits=2,
            name="adjudication",
        )
        for a in r.adjudication:
            for c in a.conflicts:
                table.add(
                    a.image_id,
                    c.rater_a,
                    c.structure_a,
                    c.rater_b,
                    c.structure_b,
                    c.share_a,
                    c.share_b,
                )
        yield table
    if not r.quality:
        return
    table = Table(
        "each rater's quality: STAPLE sensitivity and specificity per structure (over the "
        "images where some rater labelled it)",
        [
            "structure",
            "rater",
            "images",
            "sensitivity mean ± SD",
            "sensitivity median (P25, P75)",
            "specificity mean ± SD",
            "specificity median (P25, P75)",
        ],
        digits=4,
        name="rater-quality",
    )
    for q in r.quality:
        table.add(
            q.structure,
            q.rater,
            q.images,
            MeanSD.of(q.sensitivity),
            MedianIQR.of(q.sensitivity),
            MeanSD.of(q.specificity),
            MedianIQR.of(q.specificity),
        )
    yield table
    yield (
        "sensitivity: the share of STAPLE's estimated structure the rater labelled; "
        "specificity: the share of its estimated background the rater left empty (the whole "
        f"image). Saved in {r.quality_file}"
    )


@app.command(rich_help_panel=PANEL_AGREEMENT)
@guarded
def consensus(
    method: ConsensusMethod = typer.Option(
        ConsensusMethod.staple,
        help="staple (SimpleITK STAPLE), majority (label voting; with two raters their "
        "intersection) or rater (the one rater named by --raters is the reference).",
    ),
    raters: str | None = typer.Option(
        None, help="Raters to fuse, comma-separated (default: all human raters)."
    ),
    include_gold: bool = typer.Option(
        False,
        "--include-gold",
        help="Fuse raters' labels of their gold-standard tasks too (left out by default: the "
        "reference they are scored against would change with their answer).",
    ),
    quality: bool = typer.Option(
        True,
        "--quality/--no-quality",
        help="Estimate each rater's quality with STAPLE (one more STAPLE per image and "
        "structure; --no-quality makes the reference alone).",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Make the reference label of each image from the raters' labels (stored as annotations
    of rater consensus:METHOD; training and splits use them).

    With staple or majority it also prints each rater's quality per structure: STAPLE's
    sensitivity and specificity (SimpleITK), mean ± SD and median (P25, P75) over the
    images, saved in WORKSPACE/reports/consensus-METHOD/consensus.json for the report.

    An image where two raters drew one region under different names (A's structure X lies
    on B's Y, at least half of it and three times as much as on B's X, and the other way
    round: a swap) gets no consensus label: it is listed as needing adjudication, and the
    report says so. Other disagreements are fused."""
    from datatool.analysis.consensus import make_consensus
    from datatool.core.errors import UsageError

    names = _split_list(raters)
    spec = str(method)
    if method is ConsensusMethod.rater:
        if not names or len(names) != 1:
            raise UsageError("--method rater takes one rater: --raters NAME")
        spec, names = f"rater:{names[0]}", None
    with progress_bar("consensus", enabled=not json_out) as progress:
        result = make_consensus(
            workspace(ws_path),
            spec,
            names,
            progress=progress,
            include_gold=include_gold,
            quality=quality,
        )
    render.show(result, _consensus_view, json_out, csv_out)
