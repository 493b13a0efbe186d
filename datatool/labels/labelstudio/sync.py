"""Label Studio: push images to a rater's own project, bring the rater's labels back.

Double-blind in Label Studio Community means one project per rater (Community cannot hide
one annotator's work from another inside a project). The catalogue records each rater's
project (``labelstudio_projects``) and which image every task shows (``labelstudio_tasks``);
the server's URL and token are never stored, logged or printed (error messages name the
server as "the server of --url / LABEL_STUDIO_URL").

Rules:

* ``push`` uses the project recorded for the rater, or creates one. It never puts a rater's
  images into a project recorded for another rater, and never gives a rater a second project
  unless asked (``new_project=True``; sync then reads all of the rater's projects, oldest
  first). An existing server project given by id is adopted only while it holds no tasks.
* Task data is ``{"image": URL, "image_id": "img000123"}`` and nothing else about the image.
  Re-pushing adds nothing; tasks of a push interrupted between the server and the catalogue
  are recognised by their data and recorded instead of being created twice. Tasks recorded
  in the catalogue but deleted on the server are reported, not re-created.
* Images are served by the server's local-files storage (``serve="local"``: the PNG is copied
  to ``LOCAL_ROOT/datatool/<project>/img000123.png``; the server must run with
  ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and that folder as
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) or uploaded through the API (``serve="upload"``,
  for a server on another machine).
* Sync takes each task's latest submitted (not cancelled) annotation. Everything not stored is
  reported: skipped or unlabelled tasks (notes), tasks datatool did not push, tasks whose
  image does not match the catalogue, unknown labels, wrong sizes (rejected).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.atomic import write_bytes_atomic
from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask, Rater, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.files import not_regular
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    DraftOrigin,
    SyncReport,
    draft_origin,
    get_rater,
    store_annotation,
)
from datatool.labels.gold import DEFAULT_REFERENCE, GoldHanding, hand_gold
from datatool.labels.labelstudio.formats import (
    BadExport,
    mask_to_results,
    parse_export,
    results_to_mask,
)
from datatool.labels.labelstudio.modes import ServeMode
from datatool.labels.labelstudio.news import read_news, take_news
from datatool.labels.masks import BadLabel, validate_mask
from datatool.labels.matching import (
    NoImage,
    image_by_id,
    image_for_dicom,
    image_for_sop_uid,
    image_id_from_name,
    image_name,
    parse_image_ids,
)

URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
LOCAL_PREFIX = "datatool"  # folder under the server's document root
TITLE_LEN = (3, 50)  # Label Studio's limits on a project title
IMPORT_BATCH = 250
UPLOAD_BATCH = 25
PAGE_SIZE = 500
UID_RE = re.compile(r"^\d+(\.\d+){2,}$")


# --------------------------------------------------------------------------- connection


#: Words an error answer of the server its own way, or None to leave it to the general message.
Explain = Callable[[ApiError], DatatoolError | None]


class Connection:
    """An SDK client, and how messages name the server (never by its URL or token)."""

    def __init__(self, client: LabelStudio, where: str, token: str):
        self.client = client
        self.where = where
        self._token = token

    def __repr__(self) -> str:
        return f"Connection({self.where})"

    def redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    @contextmanager
    def answering(self, what: str, explain: Explain | None = None) -> Iterator[None]:
        """Around every exchange with the server: an HTTP error answer or a server that cannot
        be reached becomes one DatatoolError saying what to do. ``explain`` may word an error
        answer its own way (it returns None to leave it to the general message)."""
        try:
            yield
        except ApiError as exc:
            raise (explain(exc) if explain else None) or self._api_error(what, exc) from None
        except httpx.HTTPError as exc:
            raise DatatoolError(
                f"cannot reach {self.where} ({type(exc).__name__}) while "
                f"trying to {what}: start the server (for a local one: 'make labelstudio') "
                f"or fix --url / {URL_ENV}"
            ) from None

    def call(self, what: str, func: Callable, *args, explain: Explain | None = None, **kwargs):
        """Run one SDK call; failures become a DatatoolError that says what to do."""
        with self.answering(what, explain):
            return func(*args, **kwargs)

    def _api_error(self, what: str, exc: ApiError) -> DatatoolError:
        status = exc.status_code
        if status in (401, 403):
            return DatatoolError(
                f"{_cap(self.where)} refused the token (HTTP {status}) when trying to "
                f"{what}: pass a valid token with --token or {TOKEN_ENV} (Label Studio: "
                "Account & Settings > Personal Access Token, or the legacy token where the "
                "organisation allows legacy tokens)"
            )
        return DatatoolError(
            f"{_cap(self.where)} could not {what} (HTTP {status}): {self.redact(_detail(exc.body))}"
        )

    def request(self, what: str, method: str, path: str, check: bool = True, **kwargs):
        """A request (path relative to the server's root) through the SDK's authenticated
        HTTP client; with ``check`` an HTTP error status raises a DatatoolError."""
        http = self.client._client_wrapper.httpx_client
        with self.answering(what):
            response = http.request(path, method=method, **kwargs)
            if check and response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:200]
                raise ApiError(status_code=response.status_code, body=body)
        return response


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _detail(body) -> str:
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if errors:
            if isinstance(errors, dict):
                return "; ".join(
                    f"{' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for v in errors.values()
                )
            return str(errors)
        if body.get("detail"):
            return str(body["detail"])
    text = str(body)
    if text.lstrip().startswith("<"):
        return "the answer is a web page, not the API: is --url the server's root address?"
    return text[:300]


def connect(url: str | None = None, token: str | None = None) -> Connection:
    """Connect to a Label Studio server (``url``/``token`` or ``LABEL_STUDIO_URL`` /
    ``LABEL_STUDIO_API_KEY``) and check that it answers and accepts the token."""
    url = (url or os.environ.get(URL_ENV) or "").strip()
    token = (token or os.environ.get(TOKEN_ENV) or "").strip()
    if not url:
        raise UsageError(
            f"no Label Studio server given: pass --url or set {URL_ENV} "
            "(for example http://127.0.0.1:8080)"
        )
    if not token:
        raise UsageError(
            f"no Label Studio token given: pass --token or set {TOKEN_ENV} "
            "(Label Studio: Account & Settings > Personal Access Token)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            "the Label Studio URL must start with http:// or https:// and name a "
            "host (for example http://127.0.0.1:8080)"
        )
    where = f"the Label Studio server of --url / {URL_ENV}"  # the URL itself is never printed
    client = LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=120)
    conn = Connection(client, where, token)
    try:
        conn.call("check the token", client.users.whoami)
    except DatatoolError:
        raise
    except Exception as exc:  # e.g. a malformed personal access token the SDK cannot refresh
        raise DatatoolError(
            f"{_cap(where)} did not accept the token "
            f"({type(exc).__name__}): pass a valid token with --token or "
            f"{TOKEN_ENV}"
        ) from None
    return conn


def _plain(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return obj.dict()


def _server_tasks(conn: Connection, project_id: int, annotations: bool) -> list[dict]:
    with conn.answering("list the project's tasks"):  # later pages come while iterating
        pager: Iterable = conn.client.tasks.list(
            project=project_id,
            fields="all" if annotations else "task_only",
            resolve_uri=False,
            page_size=PAGE_SIZE,
        )
        return [_plain(t) for t in pager]


def _server_project(conn: Connection, project_id: int, rater: str | None = None):
    def deleted(exc: ApiError) -> DatatoolError | None:
        if exc.status_code != 404:
            return None
        whose = f" recorded for rater {rater}" if rater else ""
        return DatatoolError(
            f"Label Studio project {project_id}{whose} does not exist on {conn.where}: "
            "it was deleted there, or that is another server than the one pushed to"
        )

    return conn.call(
        f"read project {project_id}", conn.client.projects.get, project_id, explain=deleted
    )


# --------------------------------------------------------------------------- catalogue


def _rater_projects(session: Session, rater_id: int) -> list[LabelStudioProject]:
    """The rater's recorded projects, oldest first."""
    return list(
        session.scalars(
            select(LabelStudioProject)
            .where(LabelStudioProject.rater_id == rater_id)
            .order_by(LabelStudioProject.id)
        )
    )


def _recorded_project(session: Session, project_id: int) -> LabelStudioProject | None:
    """The catalogue's record of a server project (any rater's), if datatool pushed it."""
    return session.scalar(
        select(LabelStudioProject).where(LabelStudioProject.project_id == project_id)
    )


# --------------------------------------------------------------------------- push


def _local_url(project_id: int, name: str) -> str:
    return f"/data/local-files/?d={LOCAL_PREFIX}/{project_id}/{name}.png"


def _is_our_task_data(data: dict, project_id: int, name: str) -> bool:
    """Data exactly as datatool's push writes it for this image (local or uploaded)."""
    if not isinstance(data, dict) or set(data) != {"image", "image_id"}:
        return False
    if data["image_id"] != name:
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
) -> PushReport:
    """Put images (all, or ``image_ids``: ids or names) into the rater's own Label Studio
    project, one task per image not yet pushed there; returns what was done. ``gold``: mix
    that many gold-standard images (labelled by ``gold_reference``) into the queue, chosen
    and ordered by ``gold_seed`` (see ``labels.gold``)."""
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

    conn = connect(url, token)
    if plan.project is not None:
        project = plan.project
        _server_project(conn, project.project_id, plan.rater)  # still there?
    else:
        project = _new_project(conn, ws, plan, protocol, project_id, title)
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
    created = _import_tasks(conn, ws, project, seen.todo, urls)
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
        r = get_rater(s, rater)
        recorded = _rater_projects(s, r.id)
        row = None
        if project_id is not None:
            row = _recorded_project(s, int(project_id))
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
        if row is None:
            return _PushPlan(r.name, r.id, images, None, {})
        tasks: dict[int, int] = dict(
            s.execute(
                select(LabelStudioTask.image_id, LabelStudioTask.task_id).where(
                    LabelStudioTask.project_id == row.id
                )
            ).all()
        )
        return _PushPlan(r.name, r.id, images, _Project(row.id, row.project_id, row.title), tasks)


def _new_project(
    conn: Connection,
    ws: Workspace,
    plan: _PushPlan,
    protocol: Protocol,
    project_id: int | None,
    title: str | None,
) -> _Project:
    """Step 2 of a push for a rater without a project: adopt the empty server project
    ``project_id``, or create one; either way record it as the rater's."""
    config = protocol.labelstudio_config()
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
        )
        return _Project(row.id, pid, project_title, created)


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
            and _is_our_task_data(data, pid, names[image_id])
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
) -> int:
    """Step 5 of a push: one task per image (its URL and name, nothing else), imported and
    recorded batch by batch; returns how many were made."""
    created = 0
    for start in range(0, len(todo), IMPORT_BATCH):
        batch = todo[start : start + IMPORT_BATCH]
        request = [{"data": {"image": urls[i], "image_id": image_name(i)}} for i, _ in batch]
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


# --------------------------------------------------------------------------- sync


def _when(annotation: dict):
    value = annotation.get("updated_at") or annotation.get("created_at")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return float("-inf")


def _pick_annotation(task: dict, item: str, report: SyncReport) -> dict | None:
    """The task's latest submitted annotation, or None with a note saying why."""
    annotations = [_plain(a) for a in task.get("annotations") or []]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if annotations:
            report.notes.append(
                (item, "skipped by the rater (cancelled annotation): nothing stored")
            )
        else:
            report.notes.append((item, "no annotation yet"))
        return None
    return max(submitted, key=lambda a: (_when(a), int(a.get("id") or 0)))


def _draft_of(
    s, ws: Workspace, task: dict, annotation: dict, protocol: Protocol, shape: tuple[int, int]
) -> DraftOrigin | None:
    """The model draft an annotation started from: Label Studio's ``parent_prediction``,
    looked up among the task's predictions for its model version and label map. A parent
    prediction the task no longer lists still counts as a draft (of unknown origin)."""
    parent = annotation.get("parent_prediction")
    if parent is None or parent == "":
        return None
    parent_id = parent.get("id") if isinstance(parent, dict) else parent
    for item in task.get("predictions") or []:
        prediction: dict = _plain(item) if not isinstance(item, int) else {"id": item}
        if str(prediction.get("id")) != str(parent_id):
            continue
        version = str(prediction.get("model_version") or f"prediction {parent_id}")
        try:
            drafted = results_to_mask(prediction.get("result") or [], protocol, shape).mask
        except BadLabel:
            return draft_origin(s, version)
        return draft_origin(s, version, ws.store.put_array(drafted))
    return DraftOrigin(f"prediction {parent_id}")


def _store_task(
    s,
    ws: Workspace,
    image: Image,
    rater: Rater,
    annotation: dict,
    protocol: Protocol,
    item: str,
    ref: str,
    allow_empty: bool,
    report: SyncReport,
    task: dict | None = None,
) -> None:
    shape = (image.rows, image.cols)
    try:
        converted = results_to_mask(annotation.get("result") or [], protocol, shape)
        mask = validate_mask(converted.mask, protocol, shape, allow_empty=allow_empty)
    except BadLabel as exc:
        report.rejected.append((item, str(exc)))
        return
    for note in converted.notes:
        report.notes.append((item, note))
    draft = _draft_of(s, ws, task or {}, annotation, protocol, shape)
    stored = store_annotation(
        s, ws.store, image, rater, mask, "labelstudio", ref, protocol, draft=draft
    )
    if stored.created:
        report.new_versions += 1
    else:
        report.unchanged += 1


def sync_from_server(
    ws: Workspace,
    rater: str,
    url: str | None = None,
    token: str | None = None,
    allow_empty: bool = False,
    progress: Callable[[int, int], None] | None = None,
    project_id: int | None = None,
) -> SyncReport:
    """Bring the rater's labels from their Label Studio project(s) into the catalogue."""
    protocol = load_protocol(ws.protocol_name)
    report = SyncReport(source="labelstudio", rater=rater)
    with ws.session() as s:
        r = get_rater(s, rater)
        report.rater = r.name
        if project_id is not None:
            row = _recorded_project(s, int(project_id))
            if row is None:
                raise DatatoolError(
                    f"Label Studio project {project_id} was not pushed by datatool: sync only "
                    "reads projects made by 'datatool labelstudio push' (for a project of your "
                    "own, export it as JSON and use --export)"
                )
            if row.rater_id != r.id:
                raise DatatoolError(
                    f"Label Studio project {project_id} belongs to rater {row.rater.name}, not "
                    f"{r.name}: a rater's labels come only from their own project "
                    "(double-blind)"
                )
            rows = [row]
        else:
            rows = _rater_projects(s, r.id)
        if not rows:
            raise DatatoolError(
                f"rater {r.name} has no Label Studio project yet: run "
                f"'datatool labelstudio push --rater {r.name}' first"
            )
        projects = [(row.id, row.project_id) for row in rows]
        mappings = {
            row_id: dict(
                s.execute(
                    select(LabelStudioTask.task_id, LabelStudioTask.image_id).where(
                        LabelStudioTask.project_id == row_id
                    )
                ).all()
            )
            for row_id, _ in projects
        }

    conn = connect(url, token)
    fetched = []
    for row_id, pid in projects:
        _server_project(conn, pid, report.rater)
        fetched.append((row_id, pid, _server_tasks(conn, pid, annotations=True)))
    total = sum(len(tasks) for _, _, tasks in fetched)
    done = 0
    with ws.session() as s:
        r = get_rater(s, report.rater)
        for row_id, pid, tasks in fetched:
            mapping = mappings[row_id]
            on_server = set()
            for task in sorted(tasks, key=lambda t: int(t["id"])):
                tid = int(task["id"])
                on_server.add(tid)
                report.seen += 1
                item = f"project {pid} task {tid}"
                data = task.get("data") or {}
                if tid not in mapping:
                    report.rejected.append(
                        (
                            item,
                            "not a task datatool pushed (made on the server "
                            "or by a storage sync): not stored",
                        )
                    )
                elif str(data.get("image_id")) != image_name(mapping[tid]):
                    report.rejected.append(
                        (
                            item,
                            f"its data names image "
                            f"{data.get('image_id')!r}, but datatool "
                            f"pushed {image_name(mapping[tid])} as this "
                            "task: not stored",
                        )
                    )
                else:
                    item = f"{item} ({image_name(mapping[tid])})"
                    annotation = _pick_annotation(task, item, report)
                    if annotation is not None:
                        ref = f"project {pid} task {tid} annotation {annotation.get('id')}"
                        _store_task(
                            s,
                            ws,
                            image_by_id(s, mapping[tid]),
                            r,
                            annotation,
                            protocol,
                            item,
                            ref,
                            allow_empty,
                            report,
                            task,
                        )
                done += 1
                if progress:
                    progress(done, total)
            for tid in sorted(set(mapping) - on_server):
                report.notes.append(
                    (
                        f"project {pid} task {tid} ({image_name(mapping[tid])})",
                        "recorded by datatool but deleted on the server",
                    )
                )
        _news_notes(s, ws, [pid for _, pid in projects], report)
        audit(
            s,
            "sync labelstudio",
            "server",
            rater=report.rater,
            projects=[pid for _, pid in projects],
            seen=report.seen,
            new_versions=report.new_versions,
            unchanged=report.unchanged,
            rejected=len(report.rejected),
        )
    return report


def _news_notes(s, ws: Workspace, synced: list[int], report: SyncReport) -> None:
    """What the ML backend's webhooks heard: for the projects just synced (then forgotten),
    and which other datatool projects have news waiting."""
    for news in take_news(ws.meta_dir, synced):
        report.notes.append(
            (
                f"project {news.project_id}",
                f"{news.events} Label Studio events since the last sync (last {news.last})",
            )
        )
    waiting = {n.project_id: n for n in read_news(ws.meta_dir)}
    if waiting:
        for row in s.scalars(
            select(LabelStudioProject).where(LabelStudioProject.project_id.in_(list(waiting)))
        ):
            report.notes.append(
                (
                    f"project {row.project_id}",
                    f"has news ({waiting[row.project_id].events} events): sync it with "
                    f"--rater {row.rater.name}",
                )
            )


# --------------------------------------------------------------------------- export


def _local_files_path(value: str) -> str | None:
    parts = urlsplit(value)
    if "local-files" in parts.path and parts.query:
        d = parse_qs(parts.query).get("d")
        return d[0] if d else None
    return None


def _resolve_path(text: str, dicom_root: Path | None) -> Path | None:
    """An existing file for a path named in a task: absolute, or under ``dicom_root`` (also
    after dropping leading folders, for paths relative to another root)."""
    path = Path(text)
    if path.is_absolute():
        return path if path.is_file() else None
    if dicom_root is None:
        return None
    parts = path.parts
    for k in range(len(parts)):
        candidate = dicom_root.joinpath(*parts[k:])
        if candidate.is_file():
            return candidate
    return None


def _reference(data: dict, field: str | None, dicom_root: Path | None) -> tuple[str, str]:
    """('uid', UID) or ('path', PATH) naming the DICOM image of a task; raises NoImage."""
    if field is not None:
        if field not in data:
            raise NoImage(f"its data has no field {field!r} (fields: {', '.join(sorted(data))})")
        values = [(field, data[field])]
    else:
        values = list(data.items())
    strong, weak = [], []
    for key, value in values:
        if not isinstance(value, str) or not value.strip():
            continue
        text = value.strip()
        text = _local_files_path(text) or text
        if UID_RE.match(text) and len(text) <= 64:
            strong.append((key, "uid", text))
            continue
        resolved = _resolve_path(text, dicom_root)
        if resolved is None and dicom_root is not None and not Path(text).is_absolute():
            unresolved = str(dicom_root / text)  # named in messages; never read from the cwd
        else:
            unresolved = text
        if text.lower().endswith(".dcm"):
            strong.append((key, "path", str(resolved or unresolved)))
        elif resolved is not None:
            weak.append((key, "path", str(resolved)))
        elif field is not None:
            strong.append((key, "path", unresolved))
    found = strong or weak
    distinct = {(kind, ref) for _, kind, ref in found}
    if not distinct:
        raise NoImage(
            "no field names a DICOM file or SOP Instance UID "
            f"(fields: {', '.join(sorted(data)) or 'none'}); pass --field NAME"
        )
    if len(distinct) > 1:
        raise NoImage(
            "several fields could name its DICOM image "
            f"({', '.join(sorted({k for k, _, _ in found}))}): pass --field NAME"
        )
    kind, ref = distinct.pop()
    if kind == "path" and not Path(ref).is_absolute() and dicom_root is None:
        raise NoImage(
            f"it names the relative path {ref}: pass --dicom-root, the folder it is relative to"
        )
    return kind, ref


def sync_from_export(
    ws: Workspace,
    rater: str,
    export_file: Path | str,
    dicom_root: Path | str | None = None,
    field: str | None = None,
    allow_empty: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SyncReport:
    """Bring a rater's labels in from a Label Studio JSON export of a project made before
    datatool, matching each task to its image through the DICOM file (or SOP Instance UID)
    its data names. Paths from the export are used for matching only, never stored."""
    protocol = load_protocol(ws.protocol_name)
    export_file = Path(export_file)
    root = Path(dicom_root).expanduser().resolve() if dicom_root else None
    if root is not None and not root.is_dir():
        raise UsageError(f"--dicom-root {dicom_root} is not a folder")
    odd = not_regular(export_file)
    if odd is not None:
        raise UsageError(f"{export_file}: {odd}, not a Label Studio export file")
    try:
        items = parse_export(export_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no export file {export_file}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{export_file} is not UTF-8 text, not a Label Studio export") from None
    except OSError as exc:
        raise UsageError(f"{export_file}: cannot read it ({exc.strerror or exc})") from None
    except BadExport as exc:
        raise UsageError(f"{export_file}: {exc}") from None
    report = SyncReport(source="labelstudio", rater=rater)
    seen_images: dict[int, str] = {}
    with ws.session() as s:
        r = get_rater(s, rater)
        report.rater = r.name
        for entry in items:
            n = entry.index
            report.seen += 1
            item = entry.name
            if entry.problem is not None or entry.task is None:
                report.rejected.append((item, entry.problem or "not a task"))
                if progress:
                    progress(n, len(items))
                continue
            task = entry.task
            tid = task.get("id", f"#{n}")
            data = task.get("data") or {}
            try:
                kind, ref = _reference(data, field, root)
                image = (
                    image_for_sop_uid(s, ws.key, ref)
                    if kind == "uid"
                    else image_for_dicom(s, ws.key, Path(ref))
                )
            except NoImage as exc:
                report.rejected.append((item, str(exc)))
            else:
                name = image_name(image.id)
                item = f"{item} ({name})"
                if image.id in seen_images:
                    report.rejected.append(
                        (
                            item,
                            f"{seen_images[image.id]} of this export "
                            "already labels the same image: not stored",
                        )
                    )
                else:
                    seen_images[image.id] = f"task {tid}"
                    annotation = _pick_annotation(task, item, report)
                    if annotation is not None:
                        project = annotation.get("project") or task.get("project")
                        ref_text = (
                            f"export project {project} " if project else "export "
                        ) + f"task {tid} annotation {annotation.get('id')}"
                        _store_task(
                            s,
                            ws,
                            image,
                            r,
                            annotation,
                            protocol,
                            item,
                            ref_text,
                            allow_empty,
                            report,
                            task,
                        )
            if progress:
                progress(n, len(items))
        audit(
            s,
            "sync labelstudio",
            "export",
            rater=report.rater,
            seen=report.seen,
            new_versions=report.new_versions,
            unchanged=report.unchanged,
            rejected=len(report.rejected),
        )
    return report
