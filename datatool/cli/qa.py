"""Pre-labelling and QA commands: qa (with qa list, qa resolve, qa report), next."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    PANEL_ASSIST,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    progress_bar,
    workspace,
)
from datatool.cli.render import Block, Table
from datatool.core.flags import FlagReason, FlagStatus, Resolution
from datatool.labels.labelstudio.modes import ServeMode
from datatool.learning.options import DeviceChoice

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.analysis.qa import QAReport, QARun, Queue, Resolved
    from datatool.assist.selection import NextImages

# Defaults, as in datatool.analysis.shape (the CLI does not import it: numpy and scipy)
MODEL_DICE_BELOW = 0.5
RATER_DICE_BELOW = 0.7
SIZE_Z_ABOVE = 3.5
PAIR_Z_ABOVE = 2.0
MAX_FLAG_SHARE = 0.25
TEMPORAL_RATIO = 3.0
TEMPORAL_FLOOR_MM = 1.5
TEMPORAL_FLOOR_PX = 12.0

qa_app = typer.Typer(
    no_args_is_help=False,
    invoke_without_command=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

RaterOpt = typer.Option(
    None,
    "--rater",
    metavar="RATER",
    help="Only this rater's labels (repeat for several; default: all).",
)


# --------------------------------------------------------------------------- qa (the checks)


def _qa_view(r: QARun) -> Iterator[Block]:
    model = f"run {r.run}" if r.run is not None else "no model"
    drafts = (
        f"; drafts: {r.drafts_predicted} made, {r.drafts_reused} reused"
        if r.run is not None
        else ""
    )
    yield (
        f"checked {r.labels} label versions of {', '.join(r.raters)} on {r.images} images "
        f"({model}{drafts})"
    )
    table = Table(
        "flags",
        ["reason", "found", "new", "reopened", "cleared", "kept closed", "open now"],
        name="flags",
    )
    for c in r.reasons:
        table.add(c.reason, c.found, c.new, c.reopened, c.cleared, c.kept_closed, c.open)
    yield table
    if r.superseded:
        yield f"{r.superseded} open flags of replaced label versions closed (superseded)"
    yield f"{r.open} open flags in the queue: datatool qa list"


@qa_app.callback()
@guarded
def qa(
    ctx: typer.Context,
    run: int | None = typer.Option(
        None,
        "--run",
        help="Also compare the labels with this run's whole-image drafts (made for the "
        "images that lack one, stored as rater model:RUN; a re-run reuses them).",
    ),
    rater: list[str] | None = RaterOpt,
    model_dice_below: float = typer.Option(
        MODEL_DICE_BELOW, help="Flag a structure whose Dice with the model's draft is below this."
    ),
    rater_dice_below: float = typer.Option(
        RATER_DICE_BELOW, help="Flag a structure whose Dice with another rater is below this."
    ),
    size_z_above: float = typer.Option(
        SIZE_Z_ABOVE,
        help="Flag an area whose robust z-score (0.6745 (x - median) / MAD over the "
        "workspace's labels of the structure) is beyond this.",
    ),
    pair_z_above: float = typer.Option(
        PAIR_Z_ABOVE,
        help="Flag two raters' outlines of a structure whose centroids lie further apart, or "
        "whose equivalent radii differ more, than the workspace's rater pairs (robust z-score "
        "beyond this).",
    ),
    temporal_ratio: float = typer.Option(
        TEMPORAL_RATIO,
        help="Flag a cine frame whose structure's centroid or size lies off its neighbouring "
        "frames' course by more than this many times the loop's usual frame-to-frame change.",
    ),
    temporal_floor_mm: float = typer.Option(
        TEMPORAL_FLOOR_MM,
        help="... and by more than this many mm (the centroid's shift, the equivalent "
        f"radius's change; {TEMPORAL_FLOOR_PX:g} px in a loop without mm calibration).",
    ),
    max_flag_share: float = typer.Option(
        MAX_FLAG_SHARE,
        help="A rule (a reason on a structure, or a relation) that would flag more than this "
        "share of the labels checked is reported as a note, not as flags.",
    ),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, help="Where the drafts are made."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Check labels and keep a review queue: with no subcommand, check the latest label of
    every human rater and consensus and add flags to the queue; 'qa list' ranks the queue,
    'qa resolve' closes an item, 'qa report' writes it as CSV and thumbnails.

    A flag is one structure of one label version with one reason: model_disagreement (Dice with
    the run's draft below --model-dice-below, or present in one and absent in the other),
    rater_disagreement (the same with another rater, --rater-dice-below, or centroids or
    outlines further apart than the workspace's rater pairs, --pair-z-above), swap (at least
    half of the structure lies on the other label's different structure, three times more than
    on its own), wrong_image (the whole label fits another image of the patient far better than
    its own image's other labels), components (more pieces than the protocol allows), holes (in
    a solid structure), edge (a structure that lies in the view touches the image edge or the
    blanked area), size (robust z-score beyond --size-z-above), anatomy (a relation of the
    protocol broken on the centroids; lateral/medial against the display convention the
    labels themselves show, per series, device and leg, the protocol's lateral_side while
    fewer than 20 labels say) and mirrored (one flag for an image whose labels all reverse that
    convention). And temporal, in a cine loop (one rater's labels of 3 or more frames of one
    file; frames are images like stills for every other check): a structure absent in a frame
    but present in the frames on both sides, or whose centroid or size lies off its
    neighbouring frames' course by more than --temporal-ratio times the loop's usual
    frame-to-frame change and more than --temporal-floor-mm. A rule that would flag more than a
    quarter of the labels it judged (temporal: the labels of loops) is a note instead.
    Where the model backs a label, its disagreements with another rater count half. Re-running
    adds no duplicates, clears what is no longer found and leaves closed
    flags closed; a new label version closes the old one's flags. Exit code 0; 1 when there
    is nothing to check (no labels yet); 2 for a usage error (an unknown rater or run).
    """
    if ctx.invoked_subcommand is not None:
        sources = {p.opts[0]: ctx.get_parameter_source(p.name or "") for p in ctx.command.params}
        given = [
            opt for opt, source in sources.items() if getattr(source, "name", "") == "COMMANDLINE"
        ]
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)} go with the checks ('datatool qa' without a subcommand), "
                f"not with 'qa {ctx.invoked_subcommand}': give its options after it"
            )
        return
    from functools import partial

    from datatool.analysis.qa import Thresholds, run_qa
    from datatool.learning.inference import ensure_drafts

    ws = workspace(ws_path)
    thresholds = Thresholds(
        model_dice_below=model_dice_below,
        rater_dice_below=rater_dice_below,
        size_z_above=size_z_above,
        pair_z_above=pair_z_above,
        max_flag_share=max_flag_share,
        temporal_ratio=temporal_ratio,
        temporal_floor_mm=temporal_floor_mm,
    )
    with progress_bar("qa", enabled=not json_out) as progress:
        result = run_qa(
            ws,
            run=run,
            raters=rater,
            thresholds=thresholds,
            drafts=partial(ensure_drafts, device=device),
            progress=progress,
        )
    if not json_out:
        render.notes(result.notes)
    render.show(result, _qa_view, json_out, csv_out)


# --------------------------------------------------------------------------- qa list


def _queue_view(q: Queue) -> Iterator[Block]:
    every = q.status is None
    columns = ["rank", "flag", "image", "rater", "structure", "reason", "priority", "severity"]
    columns += ["status", "evidence", "note"] if every else ["evidence"]
    title = f"{q.status or 'all'} flags" + (
        f", {len(q.items)} worst of {q.total}" if len(q.items) < q.total else f": {q.total}"
    )
    table = Table(title, columns, digits=2, name="queue")
    for it in q.items:
        cells = [
            it.rank,
            it.flag,
            it.image,
            f"{it.rater} v{it.version}",
            it.structure,
            it.reason,
            it.priority,
            it.severity,
        ]
        cells += [it.status, it.summary, it.note] if every else [it.summary]
        table.add(*cells)
    yield table
    if q.by_reason:
        yield "by reason: " + ", ".join(f"{k} {v}" for k, v in q.by_reason.items())
    if len(q.items) < q.total:
        yield f"{q.total - len(q.items)} more: --limit 0 lists them all"
    yield (
        "ranked by priority (0: present for one rater and absent for the other, a swap, a label "
        "of another image; 2: shape and size), then by severity: how far the evidence lies past "
        "its threshold; close an item with: datatool qa resolve FLAG --note ..."
    )


@qa_app.command("list")
@guarded
def qa_list(
    status: FlagStatus = typer.Option(FlagStatus.open, help="Flags with this status."),
    all_statuses: bool = typer.Option(False, "--all", help="Flags of every status."),
    reason: list[FlagReason] | None = typer.Option(
        None, "--reason", help="Only this reason (repeat for several)."
    ),
    rater: list[str] | None = RaterOpt,
    limit: int = typer.Option(50, min=0, help="Show the worst N (0: all)."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """The review queue, worst first: first what a reviewer must see (priority 0: a structure
    present for one rater and absent for the other, a swap, a label of another image; 1: the
    other disagreements, a mirrored image, a broken relation; 2: shape and size oddities),
    within a priority ranked by severity, how far each flag's evidence lies past its threshold
    (for a Dice, (threshold - Dice) / threshold; for a swap, how much more than half of the
    structure lies on the other's; for a size or a rater pair, (|z| - threshold) / threshold;
    for a broken relation, the distance over the two structures' radii), ties by reason."""
    from datatool.analysis.qa import list_queue

    q = list_queue(
        workspace(ws_path),
        status=None if all_statuses else status,
        reasons=[str(r) for r in reason or ()],
        raters=rater,
        limit=limit,
    )
    render.show(q, _queue_view, json_out, csv_out)


# --------------------------------------------------------------------------- qa resolve


def _resolved_view(r: Resolved) -> Iterator[Block]:
    yield (
        f"flag {r.flag} ({r.image}, {r.rater}, {r.structure}, {r.reason.value}): "
        f"{r.status.value} by {r.resolved_by}"
    )


@qa_app.command("resolve")
@guarded
def qa_resolve(
    flag: int = typer.Argument(..., help="The flag's id (first column of 'qa list')."),
    note: str = typer.Option(..., "--note", help="What the reviewer found or did."),
    status: Resolution = typer.Option(
        Resolution.fixed, help="fixed: the label was corrected; accepted: it is right as it is."
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Close one open flag of the queue, with a note (audited). A corrected label that comes
    back as a new version closes its flags by itself."""
    from datatool.analysis.qa import resolve_flag

    render.show(resolve_flag(workspace(ws_path), flag, note, status), _resolved_view, json_out)


# --------------------------------------------------------------------------- qa report


def _report_view(r: QAReport) -> Iterator[Block]:
    yield f"{r.items} open items: {r.csv}"
    yield f"thumbnails of the {len(r.thumbnails)} worst: {r.page}"


@qa_app.command("report")
@guarded
def qa_report(
    out_dir: Path | None = typer.Option(
        None, "--out", help="Folder for queue.csv and index.html (default: WORKSPACE/reports/qa)."
    ),
    top: int = typer.Option(20, min=0, help="Thumbnails for the N worst items."),
    reason: list[FlagReason] | None = typer.Option(
        None, "--reason", help="Only this reason (repeat for several)."
    ),
    rater: list[str] | None = RaterOpt,
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Write the open queue as CSV and a page of overlay thumbnails (the flagged label, the
    model's draft, another rater's label) for the worst items."""
    from datatool.analysis.qa import write_report

    result = write_report(
        workspace(ws_path),
        out_dir=out_dir,
        top=top,
        reasons=[str(r) for r in reason or ()],
        raters=rater,
    )
    render.show(result, _report_view, json_out)


# --------------------------------------------------------------------------- next


def _next_view(r: NextImages) -> Iterator[Block]:
    table = Table(
        f"next for {r.rater}: {len(r.images)} of {r.unlabelled} unlabelled images "
        f"(run {r.run}, at most {r.per_patient} per patient)",
        ["rank", "image", "patient", "side", "mean entropy", "draft score"],
        name="next",
    )
    for c in r.images:
        table.add(c.rank, c.image, c.patient, c.side, c.entropy, c.score)
    yield table
    if r.pushed_project is not None:
        yield (
            f"Label Studio project {r.pushed_project} of {r.rater}: {r.tasks_created} tasks "
            f"created, {r.already_pushed} already there, {r.predictions_added} drafts added"
        )


@app.command("next", rich_help_panel=PANEL_ASSIST)
@guarded
def next_command(
    rater: str = typer.Option(..., "--rater", help="The rater who labels next."),
    n: int = typer.Option(50, "--n", min=1, help="How many images to list."),
    run: int | None = typer.Option(
        None, "--run", help="The run whose uncertainty ranks (default: the newest finished)."
    ),
    per_patient: int | None = typer.Option(
        None,
        "--per-patient",
        min=1,
        help="At most this many images of one patient (default: a tenth of --n, at least 1).",
    ),
    push: bool = typer.Option(
        False, "--push", help="Add the images to the rater's Label Studio project."
    ),
    drafts: bool = typer.Option(
        False, "--drafts", help="With --push: the run's drafts as predictions in those tasks."
    ),
    serve: ServeMode = typer.Option(
        ServeMode.local, "--serve", help="With --push: how the server gets the images."
    ),
    local_root: Path | None = typer.Option(
        None,
        "--local-root",
        envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
        help="With --push --serve local: the server's local files root.",
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        help="With --push: the Label Studio server (default: the rater's recorded one, else "
        "LABEL_STUDIO_URL).",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        show_default=False,
        help="With --push: your Label Studio token (default: LABEL_STUDIO_API_KEY_<RATER>, else "
        "LABEL_STUDIO_API_KEY; never stored or printed).",
    ),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, help="Where the model runs."),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """List the unlabelled images (for this rater) most worth labelling next: every image the
    rater has not labelled is drafted by the run and ranked by the mean predictive entropy of
    its softmax over the image, highest first (where the model hesitates most); walking down
    that ranking, an image is skipped once its patient has --per-patient images on the list.
    An image the run's checkpoint scored before is not drafted again (the scores are kept in
    the workspace's .datatool/cache)."""
    from datatool.assist.selection import next_images

    with progress_bar("next", enabled=not json_out) as progress:
        result = next_images(
            workspace(ws_path),
            rater,
            n=n,
            run=run,
            per_patient=per_patient,
            push=push,
            drafts=drafts,
            url=url,
            token=token,
            serve=serve,
            local_root=local_root,
            device=device,
            progress=progress,
        )
    if not json_out:
        render.notes(result.notes)
    render.show(result, _next_view, json_out, csv_out)
