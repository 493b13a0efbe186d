"""Label Studio commands: labelstudio push, sync labelstudio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from datatool.cli import render
from datatool.cli.common import (
    MAX_INT,
    AllowCopyOpt,
    CsvOpt,
    GoldOpt,
    GoldReferenceOpt,
    GoldSeedOpt,
    JsonOpt,
    WorkspaceOpt,
    finish,
    guarded,
    labelstudio_app,
    progress_bar,
    sync_app,
    workspace,
)
from datatool.cli.labels import show_sync_report
from datatool.cli.render import Block, Table
from datatool.labels.labelstudio.modes import ReviewStoreAs, ServeMode

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.assist.connect import ConnectReport
    from datatool.labels.labelstudio.push import PushReport
    from datatool.labels.labelstudio.review import ReviewPushReport, ReviewSyncReport

# No envvar on these: the services read LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY themselves,
# after the rater's recorded server and the rater's own token variable.
UrlOpt = typer.Option(
    None,
    "--url",
    show_default=False,
    help="The Label Studio server, e.g. http://127.0.0.1:8080. Default: the rater's own server "
    "(recorded by their first 'labelstudio push'), else LABEL_STUDIO_URL.",
)
TokenOpt = typer.Option(
    None,
    "--token",
    show_default=False,
    help="Your Label Studio access token (Account & Settings). Default: "
    "LABEL_STUDIO_API_KEY_<RATER> (the rater's name upper-cased, other characters as _), else "
    "LABEL_STUDIO_API_KEY. Prefer the environment; never stored or printed.",
)


def _push_view(r: PushReport) -> Iterator[Block]:
    table = Table(
        f"rater {r.rater}: project {r.project_id}" + (" (new)" if r.project_created else ""),
        ["outcome", "images"],
    )
    table.add("tasks created", r.tasks_created)
    table.add("already pushed", r.already_pushed)
    if r.recovered:
        table.add("recorded from an interrupted push", r.recovered)
    table.add("deleted on the server", len(r.missing_on_server))
    if r.gold is not None:
        table.add(f"gold tasks in the project ({r.gold.new} new)", len(r.gold.gold))
    yield table
    served = "the local files storage" if r.serve is ServeMode.local else "upload"
    yield f"project {r.project_id} '{r.title}'; images served by {served}"
    if r.interactive:
        yield (
            "smart KeyPointLabels tool "
            + ("added to the project's config" if r.config_updated else "in the project's config")
            + ": register an interactive run's backend with 'datatool labelstudio connect "
            "--interactive'"
        )


def _review_push_view(r: ReviewPushReport) -> Iterator[Block]:
    table = Table(
        "review projects",
        ["rater", "project", "stores as", "flagged labels", "tasks created", "updated",
         "already there"],
        name="review",
    )  # fmt: skip
    for p in r.projects:
        stores = p.store_as.value + (f" {p.reviewer}" if p.reviewer else "")
        table.add(
            p.rater,
            f"{p.project_id}" + (" (new)" if p.created else ""),
            stores,
            p.labels,
            p.tasks_created,
            p.tasks_updated,
            p.already + p.recovered,
        )
    yield table
    yield (
        "each task: the flags in words, the label in question pre-loaded, the model's draft and "
        "the other raters' labels as predictions; bring the reviews in with "
        "'datatool sync labelstudio --review'"
    )


def _review_push(rater, store_as, reviewer, run, title, serve, local_root, url, token,
                 json_out, csv_out, ws_path) -> None:  # fmt: skip
    from datatool.labels.labelstudio.review import push_review

    result = push_review(
        workspace(ws_path),
        rater,
        url=url,
        token=token,
        store_as=store_as,
        reviewer=reviewer,
        run=run,
        serve=serve,
        local_root=local_root,
        title=title,
    )
    render.notes(result.notes)
    render.show(result, _review_push_view, json_out, csv_out)


@labelstudio_app.command("push")
@guarded
def push(
    rater: str | None = typer.Option(
        None,
        "--rater",
        help="The rater whose own project gets the images (with --review: whose flagged labels "
        "are reviewed; default every rater with open flags).",
    ),
    review: bool = typer.Option(
        False,
        "--review",
        help="Push the review project instead: one task per label version with open QA "
        "flags ('datatool qa'), the label in question pre-loaded, the model's draft and the "
        "other raters' labels as predictions beside it.",
    ),
    store_as: ReviewStoreAs | None = typer.Option(
        None,
        "--store-as",
        help="With --review, when the project is made: rater (a review becomes the reviewed "
        "rater's next label version; the default) or reviewer (the --reviewer's own label).",
    ),
    reviewer: str | None = typer.Option(
        None, "--reviewer", help="With --review --store-as reviewer: the reviewing rater."
    ),
    run: int | None = typer.Option(
        None,
        "--run",
        help="With --review: whose drafts to show (default: the run of the label's model flags).",
    ),
    title: str | None = typer.Option(
        None, help="Title of a new project (3-50 characters; default 'RATER (protocol)')."
    ),
    project_id: int | None = typer.Option(
        None,
        "--project-id",
        min=1,
        max=MAX_INT,
        help="Use this existing project: the rater's recorded one, or an "
        "empty one to adopt. Never another rater's.",
    ),
    images: str | None = typer.Option(
        None,
        "--images",
        help="Only these images: comma-separated ids or names (1,2 or "
        "img000001). Default: every image in the catalogue.",
    ),
    serve: ServeMode = typer.Option(
        ServeMode.local,
        "--serve",
        help="local: copy the PNGs under the server's local files root "
        "(same machine); upload: upload them through the API.",
    ),
    local_root: Path | None = typer.Option(
        None,
        "--local-root",
        envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
        help="The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (for --serve local).",
    ),
    new_project: bool = typer.Option(
        False, "--new-project", help="Give a rater who has a project a second one."
    ),
    gold: int | None = GoldOpt,
    gold_reference: str = GoldReferenceOpt,
    gold_seed: int = GoldSeedOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    move_server: bool = typer.Option(
        False,
        "--move-server",
        help="Record --url as the rater's server instead of the one recorded (the server moved "
        "to a new address; the rater's projects must be on it).",
    ),
    interactive: bool = typer.Option(
        False,
        "--interactive",
        help="For an interactive run (train --interactive): add a smart KeyPointLabels tool "
        "beside the brush (same structures and colours; Alt-click places a negative point) "
        "whose points the backend of 'labelstudio connect --interactive' redraws from. An "
        "existing project gets the tool added.",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Put images into the rater's own Label Studio project (made on first use), one task per
    image not yet there. Re-running adds nothing. One project per rater: double-blind.

    Truly blind: Label Studio Community lets any login list every project of its server, so
    give each rater a server of their own. The first push records the server (--url, else
    LABEL_STUDIO_URL) as the rater's, and every later command for the rater (push, sync
    labelstudio, prelabel, labelstudio connect, next --push) goes there without --url; another
    --url is refused unless --move-server. Only the address is recorded: the token comes from
    --token, LABEL_STUDIO_API_KEY_<RATER> (e.g. LABEL_STUDIO_API_KEY_RATER1) or
    LABEL_STUDIO_API_KEY, never from the catalogue.

    Each frame of a cine is an image: a task of its own, whose 'name' says its file and frame
    (img000123 (cine file 7, frame 3 of 8); the file by its catalogue number, never a path).

    With --gold N: N gold-standard images (with a reference label) go among the rater's tasks,
    looking like every other task, and the new tasks come in a seeded random order; the rater's
    labels of them are scored by 'datatool raters'.

    With --review: the review project of each rater with open QA flags (or of --rater), where a
    reviewer corrects the flagged labels; re-running adds the labels flagged since. A review
    project shows other raters' labels, so it goes to --url / LABEL_STUDIO_URL (the reviewers'
    server), never to a rater's recorded one.
    """
    if review:
        if (images is not None or project_id is not None or new_project or gold is not None
                or move_server or interactive):  # fmt: skip
            raise typer.BadParameter(
                "--images, --project-id, --new-project, --gold, --move-server and --interactive "
                "are not for --review",
                param_hint="--review",
            )
        _review_push(rater, store_as, reviewer, run, title, serve, local_root, url, token,
                     json_out, csv_out, ws_path)  # fmt: skip
        return
    if rater is None:
        raise typer.BadParameter("--rater is needed (the rater whose project gets the images)")
    if store_as is not None or reviewer is not None or run is not None:
        raise typer.BadParameter(
            "--store-as, --reviewer and --run go with --review", param_hint="--review"
        )
    from datatool.labels.labelstudio.push import push as run_push
    from datatool.labels.matching import parse_image_ids

    ids = None if images is None else parse_image_ids(images)
    result = run_push(
        workspace(ws_path),
        rater,
        url=url,
        token=token,
        title=title,
        project_id=project_id,
        image_ids=ids,
        serve=serve,
        local_root=local_root,
        new_project=new_project,
        gold=gold,
        gold_reference=gold_reference,
        gold_seed=gold_seed,
        move_server=move_server,
        interactive=interactive,
    )
    render.notes(
        f"task {task_id} of project {result.project_id} was deleted on the server; not re-created"
        for task_id in result.missing_on_server
    )
    if result.server_recorded:
        render.notes(
            [
                f"this server is now rater {result.rater}'s own ({result.server_recorded}): "
                f"later commands for {result.rater} go there without --url"
            ]
        )
    render.show(result, _push_view, json_out, csv_out)


def _connect_view(r: ConnectReport) -> Iterator[Block]:
    table = Table(
        f"rater {r.rater}: ML backend {r.backend_url} ({r.model_version})",
        ["project", "backend", "registration", "state", "webhook"],
    )
    for p in r.projects:
        table.add(p.project_id, p.backend_id, "new" if p.created else "updated", p.state, p.webhook)
    yield table
    yield (
        f"Label Studio asks the backend (HTTP Basic auth, user {r.user}) for a draft when the "
        "rater opens a task without one; the project shows model version "
        f"{r.model_version}"
    )
    if r.interactive:
        yield (
            "interactive: each point the rater places with the clicks tool (Alt-click: a "
            "negative one) goes to the backend, which redraws the structure's brush region"
        )


@labelstudio_app.command("connect")
@guarded
def connect(
    rater: str = typer.Option(..., "--rater", help="The rater whose own project(s) get it."),
    backend_url: str = typer.Option(
        ...,
        "--backend-url",
        help="Where Label Studio reaches 'datatool serve', e.g. http://127.0.0.1:9090.",
    ),
    backend_credentials: Path | None = typer.Option(
        None,
        "--backend-credentials",
        dir_okay=False,
        help="The credentials file 'datatool serve' wrote (default: DATATOOL_SERVE_USER and "
        "DATATOOL_SERVE_PASSWORD, else the file serve wrote for the backend's run).",
    ),
    interactive: bool = typer.Option(
        False,
        "--interactive",
        help="Register the backend for interactive pre-annotations: each point a rater places "
        "with the smart KeyPointLabels tool ('labelstudio push --interactive') goes to it and "
        "it redraws the structure. The backend must serve an interactive run.",
    ),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Register datatool's ML backend (datatool serve) on the rater's Label Studio project(s),
    with its HTTP Basic auth, and make the project show its drafts. Running it again updates
    the registration."""
    from datatool.assist.connect import connect_backend

    result = connect_backend(
        workspace(ws_path),
        rater,
        backend_url,
        url=url,
        token=token,
        credentials_file=backend_credentials,
        interactive=interactive,
    )
    render.notes(result.notes)
    render.show(result, _connect_view, json_out, csv_out)


def _review_sync_view(r: ReviewSyncReport) -> Iterator[Block]:
    table = Table(f"review sync: projects {', '.join(map(str, r.projects))}", ["outcome", "tasks"])
    table.add("seen", r.seen)
    table.add("new label versions", r.new_versions)
    table.add("unchanged", r.unchanged)
    table.add("rejected", len(r.rejected))
    table.add("flags fixed", len(r.flags_fixed))
    table.add("flags accepted", len(r.flags_accepted))
    yield table


@sync_app.command("labelstudio")
@guarded
def sync_labelstudio(
    rater: str | None = typer.Option(
        None,
        "--rater",
        help="The rater whose labels these are (with --review: whose review project; default all).",
    ),
    review: bool = typer.Option(
        False,
        "--review",
        help="Bring the reviews in from the review project(s) made by 'labelstudio push "
        "--review', stored as the project was set up to; the flags shown are closed.",
    ),
    export: Path | None = typer.Option(
        None,
        "--export",
        help="A Label Studio JSON export of a project made before datatool "
        "(instead of pulling from the server).",
    ),
    dicom_root: Path | None = typer.Option(
        None,
        "--dicom-root",
        help="With --export: the folder the tasks' DICOM paths are relative to (the original "
        "exams). A path may not leave it: an absolute path, '..' or a link out of it is "
        "rejected.",
    ),
    field: str | None = typer.Option(
        None,
        "--field",
        help="With --export: the task data field naming the DICOM file or SOP "
        "Instance UID (default: found by its value; several fields may name it if they all "
        "name the same image).",
    ),
    project_id: int | None = typer.Option(
        None, "--project-id", min=1, max=MAX_INT, help="Only this one of the rater's projects."
    ),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Store submitted annotations with nothing drawn."
    ),
    allow_copy: str | None = AllowCopyOpt,
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="List each task not annotated yet (by default one line says how many).",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Bring a rater's labels in from their Label Studio project (or a JSON export).

    Each task's latest submitted annotation becomes the rater's next label version for the
    image (nothing when unchanged). Exit code 1 when a task was rejected (one line each on
    stderr: also a label identical to another rater's current one, unless --allow-copy);
    skipped tasks are noted, and one line says how many are not annotated yet (--verbose
    lists them). A label equal to a model draft datatool handed the rater keeps the draft's
    provenance. Label Studio loses an annotation's parent_prediction when it restores the
    rater's autosaved working copy (a task labelled over two sittings): an annotation without
    it that is close to a draft handed to that rater for that task (IoU >= 0.9 on more than
    half of the structures present in the label or the draft) is stored as started from that
    draft, the link marked as found by overlap with the IoU per structure, and agreement
    leaves it out like any draft-started label. With --review: the reviews of flagged
    labels, from the review projects.

    With --export (a project made before datatool): a task may name its DICOM image in several
    fields (path, the server's URL of it, SOP Instance UID) if they all name the same image;
    fields naming different images, an annotation whose 'task' is another task, and a path
    leaving --dicom-root are rejected, one line each.
    """
    ws = workspace(ws_path)
    if review:
        if export is not None or project_id is not None or allow_copy is not None:
            raise typer.BadParameter(
                "--export, --project-id and --allow-copy are not for --review",
                param_hint="--review",
            )
        from datatool.labels.labelstudio.review import sync_review

        with progress_bar("sync review", enabled=not json_out) as progress:
            result = sync_review(
                ws, rater, url=url, token=token, allow_empty=allow_empty, progress=progress
            )
        render.problems(result.rejected, "rejected")
        if not json_out:
            render.notes(result.notes)
            if verbose:
                render.notes((item, "no annotation yet") for item in result.not_annotated)
            elif result.not_annotated:
                render.notes(
                    [f"{len(result.not_annotated)} tasks not annotated yet (--verbose lists them)"]
                )
        render.show(result, _review_sync_view, json_out, csv_out)
        finish(result.exit_code)
    if rater is None:
        raise typer.BadParameter("--rater is needed (the rater whose labels these are)")
    from datatool.labels.labelstudio.sync import sync_from_export, sync_from_server

    if export is None and (dicom_root is not None or field is not None):
        raise typer.BadParameter("--dicom-root and --field go with --export", param_hint="--export")
    with progress_bar("sync labelstudio", enabled=not json_out) as progress:
        if export is not None:
            report = sync_from_export(
                ws,
                rater,
                export,
                dicom_root=dicom_root,
                field=field,
                allow_empty=allow_empty,
                progress=progress,
                allow_copy=allow_copy,
            )
        else:
            report = sync_from_server(
                ws,
                rater,
                url=url,
                token=token,
                allow_empty=allow_empty,
                progress=progress,
                project_id=project_id,
                allow_copy=allow_copy,
            )
    show_sync_report(report, json_out, csv_out, verbose)
