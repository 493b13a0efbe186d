"""Register datatool's ML backend (``datatool serve``) on a rater's Label Studio project(s).

The backend is added through the SDK with Label Studio's ``BASIC_AUTH`` method and the
backend's credentials (from ``DATATOOL_SERVE_USER`` / ``DATATOOL_SERVE_PASSWORD``, a
credentials file, or the file ``serve`` wrote for the run the backend names). Its title is
the run's model version, and the project is set to show that version's predictions, so Label
Studio asks the backend for a draft when a rater opens a task without one. The webhook Label
Studio makes for a backend (``URL/webhook``) gets the same Basic auth header, so annotation
events reach it; a server whose SSRF protection refuses local addresses keeps no such webhook
(reported, not an error). Connecting twice updates the existing registration.

With ``interactive`` (``--interactive``) the backend is registered with Label Studio's
interactive pre-annotation flag (``is_interactive``): each point a rater places with the
project's smart KeyPointLabels tool is sent to its ``/predict``, which redraws the clicked
structure. The project must have that tool (``labelstudio push --interactive``), and a backend
that says which kind of run it serves (``interactive`` in ``/health``) must serve an
interactive one.

Layering: reads the credentials ``serve`` writes (``assist.serving``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from datatool.core.catalogue import audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, run_of_draft_version
from datatool.labels.labelstudio.connection import (
    _plain,
    _rater_projects,
    _server_project,
    rater_server,
)
from datatool.labels.labelstudio.push import has_clicks_tool

WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]


@dataclass
class ConnectedProject:
    project_id: int
    backend_id: int
    created: bool  # False: the registration existed and was updated
    state: str  # Label Studio's state of the backend (Connected, Error, ...)
    webhook: bool  # annotation events reach the backend
    other_backends: int  # other ML backends on the project (Label Studio asks the first)


@dataclass
class ConnectReport:
    rater: str
    backend_url: str
    model_version: str
    user: str
    projects: list[ConnectedProject]
    notes: list[str] = field(default_factory=list)
    interactive: bool = False  # registered for interactive pre-annotations (clicks)


def _backend_credentials(ws: Workspace, version: str, credentials_file: Path | None):
    from datatool.assist.serving import (
        PASSWORD_ENV,
        credentials_from_env,
        read_credentials_file,
    )
    from datatool.assist.serving import (
        credentials_file as default_file,
    )

    if credentials_file is not None:
        return read_credentials_file(credentials_file)
    found = credentials_from_env()
    if found is not None:
        return found
    run = run_of_draft_version(version)
    path = default_file(ws, run) if run is not None else None
    if path is None or not path.exists():
        raise UsageError(
            f"no credentials for the backend: set {PASSWORD_ENV} (and DATATOOL_SERVE_USER) as "
            "for 'datatool serve', or pass --backend-credentials FILE (the file serve named)"
        )
    return read_credentials_file(path)


def _get(url: str, what: str, **kwargs) -> httpx.Response:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.HTTPError as exc:
        raise DatatoolError(
            f"cannot reach the ML backend at {what} ({type(exc).__name__}): start it with "
            "'datatool serve RUN', or fix --backend-url"
        ) from None


def connect_backend(
    ws: Workspace,
    rater: str,
    backend_url: str,
    url: str | None = None,
    token: str | None = None,
    credentials_file: Path | None = None,
    interactive: bool = False,
) -> ConnectReport:
    """Register the ML backend at ``backend_url`` on each of the rater's projects;
    ``interactive``: for interactive pre-annotations (the rater's clicks)."""
    parts = urlsplit(backend_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("--backend-url must be http(s)://HOST:PORT of 'datatool serve'")
    if parts.username or parts.password:
        raise UsageError("put no credentials in --backend-url: they come from the environment")
    backend_url = backend_url.rstrip("/")
    with ws.session() as s:
        r = get_rater(s, rater)
        rater = r.name
        where = rater_server(s, r, url)
        projects = [row.project_id for row in _rater_projects(s, r.id)]
    if not projects:
        raise DatatoolError(
            f"rater {rater} has no Label Studio project yet: run "
            f"'datatool labelstudio push --rater {rater}' first"
        )
    conn = where.connect(token)
    protocol = load_protocol(ws.protocol_name) if interactive else None
    for pid in projects:
        project = _server_project(conn, pid, rater)
        if protocol is not None and not has_clicks_tool(project.label_config, protocol):
            raise DatatoolError(
                f"Label Studio project {pid} of rater {rater} has no smart KeyPointLabels tool "
                f"for clicks: run 'datatool labelstudio push --rater {rater} --interactive' "
                "first"
            )
    health = _get(f"{backend_url}/health", backend_url)
    try:
        version = str(health.json()["model_version"]) if health.status_code == 200 else ""
    except (ValueError, KeyError, TypeError):
        version = ""
    if not version:
        raise DatatoolError(f"{backend_url} does not answer like datatool's ML backend")
    if interactive and _serves_interactive(health) is False:
        raise DatatoolError(
            f"the ML backend at {backend_url} serves {version}, which was not trained with "
            "--interactive: serve an interactive run ('datatool train --interactive'), or "
            "connect without --interactive"
        )
    credentials = _backend_credentials(ws, version, credentials_file)
    check = _get(
        f"{backend_url}/versions", backend_url, headers={"Authorization": credentials.header()}
    )
    if check.status_code == 401:
        raise DatatoolError(
            f"the ML backend at {backend_url} refused the credentials: use those of its "
            "'datatool serve'"
        )
    report = ConnectReport(rater, backend_url, version, credentials.user, [])
    report.interactive = interactive
    for pid in projects:
        report.projects.append(
            _connect_one(conn, pid, backend_url, version, credentials, report, interactive)
        )
    with ws.session() as s:
        audit(
            s,
            "labelstudio connect",
            "ml backend",
            rater=rater,
            projects=projects,
            model_version=version,
            created=sum(p.created for p in report.projects),
            interactive=interactive,
        )
    return report


def _serves_interactive(health: httpx.Response) -> bool | None:
    """Whether the backend says it serves an interactive run (``interactive`` in its
    ``/health``); None when it does not say."""
    try:
        said = health.json().get("interactive")
    except (ValueError, AttributeError):
        return None
    return said if isinstance(said, bool) else None


def _connect_one(
    conn, pid: int, backend_url: str, version: str, credentials, report, interactive: bool = False
) -> ConnectedProject:
    backends = [
        _plain(b) for b in conn.call("list the ML backends", conn.client.ml.list, project=pid) or []
    ]
    mine = [b for b in backends if str(b.get("url", "")).rstrip("/") == backend_url]
    auth = {
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": credentials.user,
        "basic_auth_pass": credentials.password,
        "title": version,
        "is_interactive": interactive,
    }
    if mine:
        backend = _plain(
            conn.call(
                "update the ML backend",
                conn.client.ml.update,
                mine[0]["id"],
                project=pid,  # Label Studio 1.23 checks the setup again and needs it
                url=backend_url,
                **auth,
            )
        )
        created = False
    else:
        backend = _plain(
            conn.call(
                "add the ML backend",
                conn.client.ml.create,
                project=pid,
                url=backend_url,
                description="datatool serve: model drafts of a training run",
                **auth,
            )
        )
        created = True
    others = len(backends) - len(mine)
    if others:
        report.notes.append(
            f"project {pid} has {others} other ML backend(s); Label Studio asks the first one "
            "added: remove the others in the project's Settings > Model"
        )
    webhook = _auth_webhook(conn, pid, backend_url, credentials, report)
    project = conn.call(f"read project {pid}", conn.client.projects.get, pid)
    if project.model_version != version or not project.show_collab_predictions:
        conn.call(
            "show the backend's drafts in the project",
            conn.client.projects.update,
            pid,
            model_version=version,
            show_collab_predictions=True,
        )
    return ConnectedProject(
        project_id=pid,
        backend_id=int(backend["id"]),
        created=created,
        state=str(backend.get("readable_state") or backend.get("state") or ""),
        webhook=webhook,
        other_backends=others,
    )


def _auth_webhook(conn, pid: int, backend_url: str, credentials, report) -> bool:
    """Give the backend's webhook the Basic auth header (making the webhook if Label Studio
    did not); False when the server refuses it."""
    from label_studio_sdk.core.api_error import ApiError

    hook_url = f"{backend_url}/webhook"
    headers = {"Authorization": credentials.header()}
    hooks = [
        _plain(h)
        for h in conn.call("list the webhooks", conn.client.webhooks.list, project=str(pid)) or []
    ]
    hook = next((h for h in hooks if str(h.get("url", "")).rstrip("/") == hook_url), None)
    try:
        if hook is not None:
            conn.client.webhooks.update(int(hook["id"]), url=hook_url, headers=headers)
        else:
            conn.client.webhooks.create(
                url=hook_url,
                project=pid,
                headers=headers,
                send_payload=True,
                send_for_all_actions=False,
                actions=WEBHOOK_ACTIONS,
            )
    except ApiError as exc:
        if exc.status_code != 400:
            raise DatatoolError(
                f"Label Studio could not set the backend's webhook (HTTP {exc.status_code})"
            ) from None
        report.notes.append(
            f"project {pid}: Label Studio refused a webhook to {hook_url} (a server with "
            "SSRF protection refuses local addresses; SSRF_PROTECTION_ENABLED=false on a "
            "local server allows it): sync will not hear of annotation events"
        )
        return False
    return True
