"""Pre-labelling commands: prelabel (model drafts on a rater's Label Studio tasks) and serve
(the Label Studio ML backend of a run)."""

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
from datatool.cli.labelstudio import TokenOpt, UrlOpt
from datatool.cli.render import Block, Table
from datatool.learning.options import CheckpointChoice, DeviceChoice

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.assist.prelabel import PrelabelReport
    from datatool.assist.propagated import PropagateReport


def _prelabel_view(r: PrelabelReport) -> Iterator[Block]:
    table = Table(
        f"prelabel: rater {r.rater}, run {r.run} ({r.model_version})", ["outcome", "tasks"]
    )
    table.add("drafts uploaded", r.drafted)
    table.add("already drafted by this run", r.already)
    table.add("skipped: labelled by the rater", r.skipped_labelled)
    table.add("deleted on the server", len(r.missing_on_server))
    table.add("drafts with nothing drafted", r.empty_drafts)
    yield table
    if r.drafted:
        drafted = ", ".join(f"{name} {n}" for name, n in r.structures.items())
        seconds = r.seconds
        rate = r.drafts_per_second
        yield (
            f"mean task score {render.cell_text(r.score_mean)}; drafts holding each structure: "
            f"{drafted}"
        )
        yield (
            f"on {r.device}: inference {seconds['inference']:.2f} s, read {seconds['read']:.2f} "
            f"s, encode {seconds['encode']:.2f} s, upload {seconds['upload']:.2f} s"
            + (f" ({rate:.1f} drafts per second)" if rate else "")
        )
    if r.showing:
        projects = ", ".join(str(p) for p in r.showing)
        yield f"project(s) {projects} show the predictions of model version {r.model_version}"


def _propagate_view(r: PropagateReport) -> Iterator[Block]:
    table = Table(
        f"prelabel --propagate: rater {r.rater} ({r.model_version})", ["outcome", "tasks"]
    )
    table.add("drafts uploaded", r.drafted)
    table.add("already drafted by propagation", r.already)
    table.add("skipped: labelled by the rater", r.skipped_labelled)
    table.add("frames of loops with no frame labelled by the rater", r.no_labelled_frame)
    table.add("stills and one-frame loops (nothing to propagate)", r.stills)
    table.add("deleted on the server", len(r.missing_on_server))
    yield table
    if r.drafts:
        drafts = Table("propagated drafts", ["task", "frame", "drafted from", "distance"])
        for d in r.drafts:
            drafts.add(
                d.task,
                f"{d.image} (frame {d.frame} of {d.frames})",
                f"{d.source_image} (frame {d.source_frame})",
                d.distance,
            )
        yield drafts
        seconds = r.seconds
        yield (
            f"{r.loops_labelled} of {r.loops} loops have a frame labelled by {r.rater}; "
            f"registration {seconds['registration']:.2f} s, read {seconds['read']:.2f} s, "
            f"upload {seconds['upload']:.2f} s"
        )
    if r.showing:
        projects = ", ".join(str(p) for p in r.showing)
        yield f"project(s) {projects} show the predictions of model version {r.model_version}"


@app.command(rich_help_panel=PANEL_ASSIST)
@guarded
def prelabel(
    run: int | None = typer.Argument(
        None, help="The run whose drafts to attach (datatool runs); not with --propagate."
    ),
    rater: str = typer.Option(..., "--rater", help="The rater whose own project gets drafts."),
    propagate: bool = typer.Option(
        False,
        "--propagate",
        help="Instead of a run's drafts: draft the rater's unlabelled cine frames from their "
        "own nearest labelled frame of the same loop, by registration.",
    ),
    only_unlabelled: bool = typer.Option(
        False,
        "--only-unlabelled",
        help="Leave out tasks the rater has annotated (or images they have labels of).",
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per inference batch."),
    device: DeviceChoice = typer.Option(
        DeviceChoice.auto, help="auto (CUDA when available), cpu or cuda."
    ),
    checkpoint: CheckpointChoice = typer.Option(
        CheckpointChoice.best, help="best (selected on validation) or last."
    ),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Attach a run's drafts to a rater's Label Studio tasks, so the rater starts from the
    model's draft instead of an empty image.

    Every task of the rater's own project(s) without a prediction of this run gets one: a
    brush region per drafted structure, a task score and the model version (run and split
    hash); the project is set to show them. Images come from the workspace store. Re-running
    uploads nothing. The drafts are the model's alone: no rater sees another's labels.
    Task score: the mean, over the pixels drafted as a structure, of the model's highest
    class probability (mean max-softmax over the drafted foreground); 0 when nothing is
    drafted.

    --propagate (no RUN): the frames of each cine loop the rater has not labelled are drafted
    from the rater's own nearest labelled frame of that loop (each frame registered to it: a
    translation, then Demons), as predictions of model version datatool-propagate; each
    draft is recorded with the image it was propagated from. Only the rater's own labels are
    used (sync their labels first); loops they have labelled no frame of get nothing. The
    project is then set to show the propagated drafts (a run's drafts no longer show).
    """
    from datatool.core.errors import UsageError

    if propagate == (run is not None):
        raise UsageError(
            "give a RUN (a model's drafts) or --propagate (drafts from the rater's own "
            "labelled cine frames), not both"
            if propagate
            else "give the RUN whose drafts to attach (datatool runs), or --propagate"
        )
    ws = workspace(ws_path)
    if propagate:
        from datatool.assist.propagated import prelabel_propagate

        with progress_bar("prelabel --propagate", enabled=not json_out) as progress:
            found = prelabel_propagate(ws, rater, url=url, token=token, progress=progress)
        render.notes(
            f"task {task_id} was deleted on the server: no draft"
            for task_id in found.missing_on_server
        )
        render.show(found, _propagate_view, json_out, csv_out)
        return
    assert run is not None
    from datatool.assist.prelabel import prelabel as run_prelabel

    with progress_bar("prelabel", enabled=not json_out) as progress:
        result = run_prelabel(
            ws,
            run,
            rater,
            url=url,
            token=token,
            only_unlabelled=only_unlabelled,
            batch=batch,
            device=device,
            checkpoint=checkpoint,
            progress=progress,
        )
    render.notes(
        f"task {task_id} was deleted on the server: no draft"
        for task_id in result.missing_on_server
    )
    render.show(result, _prelabel_view, json_out, csv_out)


@app.command(rich_help_panel=PANEL_ASSIST)
@guarded
def serve(
    run: int = typer.Argument(..., help="The run whose drafts to serve (datatool runs)."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on. Beyond loopback (127.0.0.1, ::1) only with "
        "DATATOOL_SERVE_USER and DATATOOL_SERVE_PASSWORD (12 characters or more) set.",
    ),
    port: int = typer.Option(9090, help="Port to listen on."),
    device: DeviceChoice = typer.Option(
        DeviceChoice.auto, help="auto (CUDA when available), cpu or cuda."
    ),
    checkpoint: CheckpointChoice = typer.Option(
        CheckpointChoice.best, help="best (selected on validation) or last."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per inference batch."),
    max_tasks: int = typer.Option(
        256, "--max-tasks", min=1, help="Most tasks one predict request may ask for."
    ),
    max_connections: int = typer.Option(
        64,
        "--max-connections",
        min=1,
        help="Most connections open at once (lowered to fit the open-file limit, ulimit -n); "
        "over it, the connections idle longest are closed.",
    ),
    ws_path: Path | None = WorkspaceOpt,
):
    """Serve a run's drafts to Label Studio as an ML backend, until Ctrl-C.

    Speaks Label Studio 1.23's ML backend protocol (/health, /setup, /predict, /webhook).
    Only tasks made by 'datatool labelstudio push' are answered, from the workspace store.
    Every route but /health needs HTTP Basic auth: DATATOOL_SERVE_USER and
    DATATOOL_SERVE_PASSWORD, or a password made for the run (the command says which file
    holds it; serving the run again keeps it; delete the file for a new one). Register it on
    a rater's project with 'datatool labelstudio connect --rater R --backend-url URL'. Task
    score: the mean max-softmax over the drafted foreground (0 when nothing is drafted).

    Limits: a request body of at most 8 MiB, 200,000 JSON objects and arrays and a million
    values, received within 60 s (bodies held at once: 32 MiB; parsed in a worker thread,
    one at a time); a connection must send a request's headers within 10 s of opening or of
    its last response, and an idle keep-alive connection closes after 5 s.
    """
    from datatool.assist.serving import prepare
    from datatool.assist.serving import run as run_server

    serving = prepare(
        workspace(ws_path),
        run,
        host=host,
        port=port,
        device=device,
        checkpoint=checkpoint,
        batch=batch,
        max_tasks=max_tasks,
        max_connections=max_connections,
    )
    render.progress_line(
        f"datatool ML backend: run {serving.run} ({serving.model_version}) on {serving.device}, "
        f"at {serving.url}"
    )
    if serving.credentials_from == "environment":
        render.progress_line(
            f"HTTP Basic auth: user {serving.user} with DATATOOL_SERVE_PASSWORD "
            "(from the environment)"
        )
    else:
        render.progress_line(
            f"HTTP Basic auth: user {serving.user}; a password made for this run of serve is in "
            f"{serving.credentials_from} (readable by you only)"
        )
    render.progress_line(
        f"limits: {serving.max_connections} connections, headers within "
        f"{serving.header_timeout:g} s, idle keep-alive {serving.keep_alive:g} s, bodies up to "
        f"{serving.max_body // (1024 * 1024)} MiB"
    )
    render.progress_line(
        f"connect it: datatool labelstudio connect --rater RATER --backend-url {serving.url}"
    )
    run_server(serving)
