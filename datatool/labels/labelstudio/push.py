"""Label Studio push: images into a rater's own project, one task per image.

Rules:

* ``push`` uses the project recorded for the rater, or creates one. It never puts a rater's
  images into a project recorded for another rater, and never gives a rater a second project
  unless asked (``new_project=True``; sync then reads all of the rater's projects, oldest
  first). An existing server project given by id is adopted only while it holds no tasks.
* Task data is ``{"image": URL, "image_id": "img000123"}`` and nothing else about the image;
  a frame of a cine (an image like a still, pushed like one) also has a ``name`` saying its
  file and frame for people (``img000123 (cine file 7, frame 3 of 8)``, see ``frames``).
  Re-pushing adds nothing; tasks of a push interrupted between the server and the catalogue
  are recognised by their data and recorded instead of being created twice. Tasks recorded
  in the catalogue but deleted on the server are reported, not re-created.
* Images are served by the server's local-files storage (``serve="local"``: the PNG is copied
  to ``LOCAL_ROOT/datatool/<project>/img000123.png``; the server must run with
  ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and that folder as
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) or uploaded through the API (``serve="upload"``,
  for a server on another machine).

With ``interactive=True`` (``--interactive``) the project's labelling config also has a smart
KeyPointLabels tool (``formats.CLICKS_NAME``, the same structure names and colours as the
brush): the points a rater places go to the project's interactive ML backend (``labelstudio
connect --interactive`` of a ``datatool serve`` of an interactive run), which redraws the
clicked structure's brush region. A project pushed before gets the tool added to its config;
a push without the flag never takes it away.

``annotate`` makes an annotation on the server (to play a rater in tests, or to pre-fill).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy import select

from datatool.core.atomic import write_bytes_atomic
from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask, Rater, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    labelling_rater,
)
from datatool.labels.frames import frame_names
from datatool.labels.gold import DEFAULT_REFERENCE, GoldHanding, hand_gold
from datatool.labels.labelstudio.connection import (
    Connection,
    RaterServer,
    _cap,
    _detail,
    _rater_projects,
    _recorded_project,
    _server_project,
    _server_tasks,
    connect,
    rater_server,
    record_server,
)
from datatool.labels.labelstudio.formats import (
    CLICKS_NAME,
    mask_to_results,
)
from datatool.labels.labelstudio.modes import ServeMode
from datatool.labels.matching import (
    image_id_from_name,
    image_name,
    parse_image_ids,
)

LOCAL_PREFIX = "datatool"  # folder under the server's document root
TITLE_LEN = (3, 50)  # Label Studio's limits on a project title
IMPORT_BATCH = 250
UPLOAD_BATCH = 25
ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"


# --------------------------------------------------------------------------- push


def _local_url(project_id: int, name: str) -> str:
    return f"/data/local-files/?d={LOCAL_PREFIX}/{project_id}/{name}.png"


def _task_data(url: str, name: str, frame: str | None) -> dict:
    """A task's data: the image's URL and name, and a cine frame's file and frame."""
    data = {"image": url, "image_id": name}
    if frame is not None:
        data["name"] = frame
    return data


def _is_our_task_data(data: dict, project_id: int, name: str, frame: str | None = None) -> bool:
    """Data exactly as datatool's push writes it for this image (local or uploaded)."""
    keys = {"image", "image_id"} if frame is None else {"image", "image_id", "name"}
    if not isinstance(data, dict) or set(data) != keys:
        return False
    if data["image_id"] != name or data.get("name") != frame:
        return False
    image = str(data["image"])
    return image == _local_url(project_id, name) or (
        image.startswith(f"/data/upload/{project_id}/") and image.endswith(f"{name}.png")
    )


def _check_title(title: str) -> str:
    title = title.strip()
    if not TITLE_LEN[0] <= len(title) <= TITLE_LEN[1]:
        raise UsageError(
            f"a Label Studio project title must have {TITLE_LEN[0]}-{TITLE_LEN[1]} "
            f"characters, {title!r} has {len(title)}"
        )
    return title


@dataclass
class PushReport:
    """What a push did (no URL, no token)."""

    rater: str
    project_id: int
    title: str
    project_created: bool
    images: int  # images asked for
    tasks_created: int
    already_pushed: int
    recovered: int  # tasks of an interrupted push, recorded instead of created twice
    missing_on_server: list[int]  # recorded task ids deleted on the server (not re-created)
    serve: ServeMode
    gold: GoldHanding | None = None  # gold-standard tasks mixed in (--gold)
    # the rater's own server recorded by this push ("recorded": the first; "moved": --move-server)
    server_recorded: str | None = None
    interactive: bool = False  # the project's config has the smart KeyPointLabels tool
    config_updated: bool = False  # an existing project's config got the tool with this push


@dataclass
class _Project:
    """A rater's project: its catalogue row, its id and title on the server."""

    row_id: int
    project_id: int
    title: str
    created: bool = False


@dataclass
class _PushPlan:
    """What the catalogue knows before a push: the rater, the images to push, the rater's
    project (None: none yet, or a new one wanted) and its recorded tasks."""

    rater: str
    rater_id: int
    images: list[tuple[int, str]]  # (image id, store hash of its PNG)
    project: _Project | None
    tasks: dict[int, int]  # image id -> task id, as recorded
    frames: dict[int, str] = field(default_factory=dict)  # image id -> name, cine frames


@dataclass
class _Reconciled:
    """The server's tasks against the catalogue's records."""

    todo: list[tuple[int, str]]  # images that need a task
    recovered: int  # tasks of an interrupted push, now recorded
    missing_on_server: list[int]  # recorded task ids the server no longer has


def _serve_mode(serve: ServeMode | str) -> ServeMode:
    try:
        return ServeMode(serve)
    except ValueError:
        raise UsageError(
            f"--serve must be one of {', '.join(m.value for m in ServeMode)}"
        ) from None


def _local_root(local_root: Path | str | None) -> Path:
    """The server's local-files document root (``--serve local``), which must be a folder."""
    given = local_root or os.environ.get(ROOT_ENV)
    if not given:
        raise UsageError(
            f"--serve local needs the server's document root: pass --local-root DIR or set "
            f"{ROOT_ENV} (the folder the server was started with), or use --serve upload"
        )
    root = Path(os.path.abspath(os.path.expanduser(str(given))))
    if not root.is_dir():
        raise UsageError(
            f"local files root {root} is not a folder: pass the server's {ROOT_ENV} with "
            "--local-root"
        )
    return root


def push(
    ws: Workspace,
    rater: str,
    url: str | None = None,
    token: str | None = None,
    title: str | None = None,
    project_id: int | None = None,
    image_ids: Iterable[int | str] | None = None,
    serve: ServeMode | str = ServeMode.local,
    local_root: Path | str | None = None,
    new_project: bool = False,
    gold: int | None = None,
    gold_reference: str = DEFAULT_REFERENCE,
    gold_seed: int = 0,
    move_server: bool = False,
    interactive: bool = False,
) -> PushReport:
    """Put images (all, or ``image_ids``: ids or names) into the rater's own Label Studio
    project, one task per image not yet pushed there; returns what was done. ``gold``: mix
    that many gold-standard images (labelled by ``gold_reference``) into the queue, chosen
    and ordered by ``gold_seed`` (see ``labels.gold``).

    The rater's server: ``url``, else the one recorded for the rater, else LABEL_STUDIO_URL;
    the first push records it (``raters.labelstudio_url``), and a ``url`` other than the
    recorded one is a usage error unless ``move_server`` (the rater's server moved there).
    ``interactive``: the project gets the smart KeyPointLabels tool for click-guided redrawing
    (added to an existing project's config)."""
    if move_server and not (url and url.strip()):
        raise UsageError("--move-server needs --url: the rater's new Label Studio server")
    with ws.session() as s:
        who = labelling_rater(s, rater, "'labelstudio push'")
        had_server = who.labelstudio_url is not None
        target = RaterServer(url, who.name, False) if move_server else rater_server(s, who, url)
    serve = _serve_mode(serve)
    root = _local_root(local_root) if serve is ServeMode.local else None
    protocol = load_protocol(ws.protocol_name)
    wanted = None if image_ids is None else parse_image_ids(image_ids)
    handed = None
    if gold:
        handed = hand_gold(ws, rater, gold, gold_reference, gold_seed, "labelstudio", wanted)
        wanted = handed.queue
    plan = _push_plan(ws, rater, project_id, new_project, wanted)
    if title is not None:
        title = _check_title(title)

    conn = target.connect(token)
    config_updated = False
    if plan.project is not None:
        project = plan.project
        server = _server_project(conn, project.project_id, plan.rater)  # still there?
        if interactive:
            config_updated = _add_clicks_tool(conn, ws, plan, protocol, project, server)
    else:
        project = _new_project(conn, ws, plan, protocol, project_id, title, interactive)
    with ws.session() as s:  # the server that holds the rater's project is theirs
        changed = record_server(s, s.get_one(Rater, plan.rater_id), conn.url, move=move_server)
        if changed:
            audit(s, "labelstudio push", "rater server", rater=plan.rater, moved=had_server)
    seen = _reconcile(conn, ws, plan, project)
    if handed is not None:  # gold tasks must not come as one block: all new tasks mixed
        seen.todo = handed.mixed(seen.todo)
    urls: dict[int, str] = {}
    if seen.todo:
        urls = (
            _serve_local(conn, ws, project.project_id, root, seen.todo)
            if root is not None
            else _serve_upload(conn, ws, project.project_id, seen.todo)
        )
    created = _import_tasks(conn, ws, project, seen.todo, urls, plan.frames)
    already = len(plan.images) - len(seen.todo) - seen.recovered
    with ws.session() as s:
        audit(
            s,
            "labelstudio push",
            "tasks import",
            project_id=project.project_id,
            rater=plan.rater,
            created=created,
            adopted=seen.recovered,
            already=already,
            serve=serve.value,
        )
    return PushReport(
        rater=plan.rater,
        project_id=project.project_id,
        title=project.title,
        project_created=project.created,
        images=len(plan.images),
        tasks_created=created,
        already_pushed=already,
        recovered=seen.recovered,
        missing_on_server=seen.missing_on_server,
        serve=serve,
        gold=handed,
        server_recorded=("moved" if had_server else "recorded") if changed else None,
        interactive=interactive,
        config_updated=config_updated,
    )


def _push_plan(
    ws: Workspace,
    rater: str,
    project_id: int | None,
    new_project: bool,
    wanted: list[int] | None,
) -> _PushPlan:
    """Step 1 of a push, in one short transaction (no network inside): the rater, the project
    to use (the rater's latest, the one given if it is theirs, or none: a new one is made)
    and the images. Never another rater's project; never a second one unless asked."""
    with ws.session() as s:
        r = labelling_rater(s, rater, "'labelstudio push'")
        recorded = _rater_projects(s, r.id)
        row = None
        if project_id is not None:
            row = _recorded_project(s, int(project_id), r)
            if row is not None and row.rater_id != r.id:
                raise DatatoolError(
                    f"Label Studio project {project_id} belongs to rater {row.rater.name}: each "
                    f"rater labels in a project of their own (double-blind). Push {r.name} "
                    "without --project-id to use or create their own project"
                )
            if row is None and recorded and not new_project:
                raise DatatoolError(
                    f"rater {r.name} already has Label Studio project "
                    f"{recorded[-1].project_id}; pass --new-project to give them another one"
                )
        elif recorded and not new_project:
            row = recorded[-1]
        query = select(Image.id, Image.store_hash).order_by(Image.id)
        if wanted is not None:
            query = query.where(Image.id.in_(wanted))
        images = [(i, h) for i, h in s.execute(query)]
        if wanted is not None:
            missing = sorted(set(wanted) - {i for i, _ in images})
            if missing:
                raise UsageError(
                    "no such image(s) in this catalogue: "
                    + ", ".join(image_name(i) for i in missing)
                )
        frames = frame_names(s, [i for i, _ in images])
        if row is None:
            return _PushPlan(r.name, r.id, images, None, {}, frames)
        tasks: dict[int, int] = dict(
            s.execute(
                select(LabelStudioTask.image_id, LabelStudioTask.task_id).where(
                    LabelStudioTask.project_id == row.id
                )
            ).all()
        )
        project = _Project(row.id, row.project_id, row.title)
        return _PushPlan(r.name, r.id, images, project, tasks, frames)


def _new_project(
    conn: Connection,
    ws: Workspace,
    plan: _PushPlan,
    protocol: Protocol,
    project_id: int | None,
    title: str | None,
    interactive: bool = False,
) -> _Project:
    """Step 2 of a push for a rater without a project: adopt the empty server project
    ``project_id``, or create one; either way record it as the rater's."""
    config = protocol.labelstudio_config(interactive=interactive, clicks_name=CLICKS_NAME)
    created = False
    if project_id is not None:
        pid = int(project_id)
        server = _server_project(conn, pid)
        if _server_tasks(conn, pid, annotations=False):
            raise DatatoolError(
                f"Label Studio project {pid} already holds tasks that datatool did not "
                "push: datatool adopts only an empty project (or leave out --project-id to "
                "create the rater's own)"
            )
        if (server.label_config or "").strip() != config.strip():
            conn.call(
                "set the labelling config", conn.client.projects.update, pid, label_config=config
            )
        project_title = server.title or title or ""
    else:
        project_title = title or _check_title(f"{plan.rater} ({protocol.name})"[: TITLE_LEN[1]])
        made = conn.call(
            "create a project",
            conn.client.projects.create,
            title=project_title,
            label_config=config,
            description=f"datatool: {protocol.title or protocol.name}. "
            f"Labels of rater {plan.rater} only.",
        )
        pid, created = int(made.id), True
    with ws.session() as s:
        row = LabelStudioProject(project_id=pid, rater_id=plan.rater_id, title=project_title)
        s.add(row)
        s.flush()
        audit(
            s,
            "labelstudio push",
            "project " + ("create" if created else "adopt"),
            project_id=pid,
            rater=plan.rater,
            title=project_title,
            protocol=protocol.name,
            interactive=interactive,
        )
        return _Project(row.id, pid, project_title, created)


def has_clicks_tool(config: str | None, protocol: Protocol) -> bool:
    """Whether a labelling config has the smart KeyPointLabels tool (``CLICKS_NAME``) on the
    image with every structure of the protocol."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        control = LabelInterface(config or "").get_control(CLICKS_NAME)
    except Exception:
        return False
    labels = set(getattr(control, "labels", None) or [])
    smart = str(control.attr.get("smart", "")).lower() == "true"
    return (
        control.tag.lower() == "keypointlabels"
        and smart
        and "image" in (control.to_name or [])
        and all(s.name in labels for s in protocol.structures)
    )


def _add_clicks_tool(
    conn: Connection, ws: Workspace, plan: _PushPlan, protocol: Protocol, project: _Project, server
) -> bool:
    """Give the rater's existing project the smart KeyPointLabels tool (a push with
    ``interactive``); False when its config has it already. Only the tool is added: the
    brush labels (and any region the rater drew) stay as they are."""
    if has_clicks_tool(server.label_config, protocol):
        return False
    config = protocol.labelstudio_config(interactive=True, clicks_name=CLICKS_NAME)
    conn.call(
        "add the clicks tool to the labelling config",
        conn.client.projects.update,
        project.project_id,
        label_config=config,
    )
    with ws.session() as s:
        audit(
            s,
            "labelstudio push",
            "project config",
            project_id=project.project_id,
            rater=plan.rater,
            interactive=True,
        )
    return True


def _reconcile(conn: Connection, ws: Workspace, plan: _PushPlan, project: _Project) -> _Reconciled:
    """Step 3 of a push: compare the server's tasks with the catalogue's. Recorded tasks
    deleted on the server are listed (not re-created); tasks of a push interrupted between
    the server and the catalogue are recognised by their data and recorded; what is left
    needs a task."""
    pid = project.project_id
    names = {image_id: image_name(image_id) for image_id, _ in plan.images}
    server_tasks = {int(t["id"]): t.get("data") or {} for t in _server_tasks(conn, pid, False)}
    recorded = plan.tasks
    missing = sorted(tid for tid in recorded.values() if tid not in server_tasks)
    if recorded and len(missing) == len(recorded):
        raise DatatoolError(
            f"none of the {len(recorded)} tasks recorded for project {pid} is on {conn.where}: "
            "is that the server datatool pushed to?"
        )
    known = set(recorded.values())
    adopted: dict[int, int] = {}
    for tid, data in server_tasks.items():
        if tid in known:
            continue
        image_id = image_id_from_name(str(data.get("image_id", "")))
        if (
            image_id in names
            and image_id not in recorded
            and image_id not in adopted
            and _is_our_task_data(data, pid, names[image_id], plan.frames.get(image_id))
        ):
            adopted[image_id] = tid
    if adopted:
        with ws.session() as s:
            s.add_all(
                LabelStudioTask(project_id=project.row_id, task_id=t, image_id=i)
                for i, t in adopted.items()
            )
    todo = [(i, h) for i, h in plan.images if i not in recorded and i not in adopted]
    return _Reconciled(todo, len(adopted), missing)


def import_task_batch(
    conn: Connection, project_id: int, request: list[dict], what: str, command: str
) -> list[int]:
    """Import one batch of tasks into a project; returns their ids in the request's order.
    Label Studio answering with another number of ids is an error telling to run ``command``
    again (what was imported is found again by its image then)."""
    answer = conn.call(
        "import tasks",
        conn.client.projects.import_tasks,
        project_id,
        request=request,
        return_task_ids=True,
    )
    task_ids = [int(t) for t in answer.task_ids or []]
    if len(task_ids) != len(request):
        raise DatatoolError(
            f"Label Studio imported {len(task_ids)} tasks for {len(request)} {what} into "
            f"project {project_id}; run {command} again"
        )
    return task_ids


def _import_tasks(
    conn: Connection,
    ws: Workspace,
    project: _Project,
    todo: list[tuple[int, str]],
    urls: dict[int, str],
    frames: dict[int, str],
) -> int:
    """Step 5 of a push: one task per image (its URL and name, a cine frame's file and
    frame, nothing else), imported and recorded batch by batch; returns how many were
    made."""
    created = 0
    for start in range(0, len(todo), IMPORT_BATCH):
        batch = todo[start : start + IMPORT_BATCH]
        request = [{"data": _task_data(urls[i], image_name(i), frames.get(i))} for i, _ in batch]
        task_ids = import_task_batch(conn, project.project_id, request, "images", "push")
        with ws.session() as s:
            s.add_all(
                LabelStudioTask(project_id=project.row_id, task_id=int(t), image_id=i)
                for (i, _), t in zip(batch, task_ids)
            )
        created += len(batch)
    return created


def _serve_local(
    conn: Connection, ws: Workspace, project_id: int, root: Path, todo: list[tuple[int, str]]
) -> dict[int, str]:
    folder = root / LOCAL_PREFIX / str(project_id)
    folder.mkdir(parents=True, exist_ok=True)
    storages = conn.call(
        "list local storages", conn.client.import_storage.local.list, project=project_id
    )
    if not any(
        os.path.normpath(str(st.path or "")) == os.path.normpath(str(folder)) for st in storages
    ):

        def refused(exc: ApiError) -> DatatoolError | None:
            if exc.status_code != 400:
                return None
            return DatatoolError(
                f"{_cap(conn.where)} will not serve {folder}: "
                f"{conn.redact(_detail(exc.body))}. --local-root must be the server's "
                f"{ROOT_ENV}, with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true, on the "
                "machine that runs datatool; else use --serve upload"
            )

        conn.call(
            "create the local files storage",
            conn.client.import_storage.local.create,
            explain=refused,
            project=project_id,
            path=str(folder),
            title="datatool images",
            regex_filter="^$",  # matches no file: a 'Sync' in the web UI imports nothing
            use_blob_urls=True,
            description="images pushed by datatool; do not sync",
        )
    store = ws.store
    urls: dict[int, str] = {}
    for image_id, digest in todo:
        name = image_name(image_id)
        data = store.path_for(digest).read_bytes()
        dest = folder / f"{name}.png"
        if not (dest.is_file() and dest.read_bytes() == data):
            write_bytes_atomic(dest, data)
        urls[image_id] = _local_url(project_id, name)
    # the server must find the files where it was told to look
    first = image_name(todo[0][0])
    response = conn.request(
        "read an image back",
        "GET",
        "data/local-files/",
        check=False,
        params={"d": f"{LOCAL_PREFIX}/{project_id}/{first}.png"},
    )
    if response.status_code != 200:
        raise DatatoolError(
            f"{_cap(conn.where)} does not serve {folder / (first + '.png')} "
            f"(HTTP {response.status_code}): --local-root must be the server's own {ROOT_ENV} "
            "(not a folder inside it); no tasks were created"
        )
    return urls


def _serve_upload(
    conn: Connection, ws: Workspace, project_id: int, todo: list[tuple[int, str]]
) -> dict[int, str]:
    """Upload PNGs without making tasks of them, then read back where the server keeps them."""
    store = ws.store
    urls: dict[int, str] = {}
    for start in range(0, len(todo), UPLOAD_BATCH):
        batch = todo[start : start + UPLOAD_BATCH]
        files = {}
        for image_id, digest in batch:
            name = f"{image_name(image_id)}.png"
            files[name] = (name, store.path_for(digest).read_bytes(), "image/png")
        answer = conn.request(
            "upload images",
            "POST",
            f"api/projects/{project_id}/import",
            params={"commit_to_project": "false"},
            files=files,
        ).json()
        ids = answer.get("file_upload_ids") or []
        listing = conn.request(
            "list uploaded files",
            "GET",
            f"api/projects/{project_id}/file-uploads",
            params={"ids": json.dumps(ids)},
        ).json()
        by_name: dict[str, str] = {}
        for item in listing:
            stored = str(item.get("file", ""))
            base = stored.rsplit("/", 1)[-1]
            by_name[base.split("-", 1)[1] if "-" in base else base] = stored
        for image_id, _ in batch:
            kept_as = by_name.get(f"{image_name(image_id)}.png")
            if kept_as is None:
                raise DatatoolError(
                    f"Label Studio did not keep the upload of "
                    f"{image_name(image_id)}; run push again"
                )
            urls[image_id] = "/data/" + kept_as.lstrip("/")
    return urls


# --------------------------------------------------------------------------- annotate


def annotate(
    url: str | None,
    token: str | None,
    project_id: int,
    task_id: int,
    mask: np.ndarray,
    protocol: Protocol | None = None,
    was_cancelled: bool = False,
) -> int:
    """Create an annotation of a task from a label map (to play a rater in tests, or to
    pre-fill); returns the annotation id."""
    protocol = protocol or load_protocol()
    conn = connect(url, token)
    results = mask_to_results(mask, protocol)
    created = conn.call(
        "create an annotation",
        conn.client.annotations.create,
        int(task_id),
        result=results,
        was_cancelled=was_cancelled,
        project=int(project_id),
    )
    return int(created.id)
