"""A Label Studio ML backend for a run's drafts (``datatool serve``).

It speaks the protocol Label Studio 1.23 uses with ML backends (``ml/api_connector.py`` of
the server), implemented directly on Starlette:

* ``GET /health`` -> ``{"status": "UP", "model_version": ..., "interactive": bool}`` (the one
  route without auth; ``interactive``: the run redraws from clicks);
* ``POST /setup`` (``project``, ``schema``, ``hostname``, ``access_token``, ``extra_params``)
  -> ``{"model_version": ...}``, after checking that the project is one datatool pushed and
  its labelling config has the protocol's brush labels;
* ``POST /predict`` (``tasks``, ``project``, ``label_config``, ``params``) -> ``{"results":
  [one per task, in order: {"result": [...], "score": ..., "model_version": ...}]}``; with a
  rater's points in ``params.context`` (Label Studio's interactive pre-annotation) an
  interactive run redraws the clicked structure of the one task (``interactive_predict``);
* ``POST /webhook``: annotation events are counted per project (``labels.labelstudio.news``)
  so that ``datatool sync labelstudio`` can say which projects have news; ``START_TRAINING``
  is answered that training runs with ``datatool train``;
* ``GET /versions`` -> ``{"versions": [...]}``.

A task is answered only when ``datatool labelstudio push`` made it: the catalogue must record
that task id in that project for an image, and the task's data must name that image; the
image is then read from the workspace store. Any other task refuses the whole request with a
reason (nothing is fetched from a URL a task names). The score and label map are those of
``learning.inference``: the task score is the mean max-softmax over the drafted foreground.

Security: HTTP Basic auth (Label Studio's ``BASIC_AUTH`` for ML backends) on every route but
``/health``, always; the credentials come from ``DATATOOL_SERVE_USER`` /
``DATATOOL_SERVE_PASSWORD``, or a random password is made for this run of the server and
written to a file only its owner can read (kept across restarts: a second ``serve`` of the run
reuses it). Without credentials in the environment the server listens on loopback only; beyond
it, the password needs ``MIN_PASSWORD`` characters. Bodies over ``max_body`` bytes (8 MiB) or
with more than ``MAX_CONTAINERS`` JSON objects and arrays or ``MAX_VALUES`` values, requests
for more than ``max_tasks`` tasks, ids outside 1..2**63-1, malformed JSON, wrong shapes and
unauthenticated requests get a 4xx with a one-line JSON reason (``{"error": ...}``), never a
traceback. Bodies are parsed in a worker thread, one at a time (:class:`BodyLimits`); idle
connections, the connection cap and log throttling are ``serving_guard``'s. The log names
routes, counts and times: no credential, no task data, no pixel; a webhook's action is logged
escaped.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from datatool.assist.interactive_predict import BadContext, Point, context_of, points_of
from datatool.assist.interactive_predict import answer as interactive_answer
from datatool.assist.serving_credentials import (
    DEFAULT_HOST,
    LOOPBACK,
    PASSWORD_ENV,
    USER_ENV,
    Credentials,
    credentials_file,
    credentials_from_env,
    generate_credentials,
    read_credentials_file,
)
from datatool.assist.serving_guard import (
    HEADER_TIMEOUT,
    KEEP_ALIVE,
    MAX_CONNECTIONS,
    Guard,
    connection_cap,
    make_server,
    serve,
)
from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask
from datatool.core.errors import UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.labelstudio.formats import FROM_NAME, TO_NAME, mask_to_results
from datatool.labels.labelstudio.news import escape_action, record_event
from datatool.labels.matching import image_name

DEFAULT_PORT = 9090
MAX_BODY = 8 * 1024 * 1024  # bytes: Label Studio sends each task with its annotations
MAX_CONTAINERS = 200_000  # JSON objects and arrays in one body (what parsing costs in memory)
MAX_VALUES = 1_000_000  # JSON values in one body (what parsing costs in time and memory)
BODY_BUDGET = 4 * MAX_BODY  # bytes of request bodies held at once, all requests together
BODY_TIMEOUT = 60.0  # seconds to receive a whole body
MAX_TASKS = 256  # tasks per /predict request
MAX_ID = 2**63 - 1  # the largest id the catalogue stores
REALM = "datatool"

log = logging.getLogger("datatool.serve")


# --------------------------------------------------------------------------- refusals


class Refused(Exception):
    """A request answered with a 4xx and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _json_response(status: int, data: dict, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status, headers=headers)


def _error(status: int, reason: str, headers: dict | None = None):
    return _json_response(status, {"error": reason}, headers)


Handler = Callable[[Any], Awaitable[Any]]


def _answering(route: str) -> Callable[[Handler], Handler]:
    """A refusal becomes its 4xx; anything else a 500 with one line (the log names only the
    route and the exception's type)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request):
            try:
                return await handler(request)
            except Refused as exc:
                log.info("refused %s: %d %s", route, exc.status, exc.reason)
                return _error(exc.status, exc.reason)
            except Exception as exc:  # never a traceback to the client, nor data in the log
                log.error("failed %s: %s", route, type(exc).__name__)
                return _error(500, f"internal error ({type(exc).__name__}); see the server log")

        return run

    return wrap


class _Auth:
    """ASGI middleware: HTTP Basic on every path but /health, before any routing."""

    def __init__(self, app, credentials: Credentials):
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                header = value.decode("latin-1")
        if not self.credentials.accepts(header):
            reason = "authentication required" if header is None else "wrong credentials"
            log.info("refused %s %s: 401 %s", scope.get("method"), scope.get("path"), reason)
            response = _error(
                401,
                f"{reason}: this ML backend takes HTTP Basic auth (Label Studio: "
                "Authentication method 'Basic Auth' with the user and password of "
                "'datatool serve')",
                {"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimits:
    """How much of the clients' bodies the server holds and parses at once.

    A body is read up to ``max_body`` bytes (413 beyond), counted against ``budget`` bytes for
    all requests together (503 while others hold it), and parsed only when it holds at most
    ``max_containers`` JSON objects and arrays and ``max_values`` values (counted, as an upper
    bound, by the bytes ``{``, ``[`` and ``,``): what makes Python's parsed JSON many times the
    size of its text, and the parse long (about 0.1-0.5 s for a million values). Parsing runs
    in a worker thread, one body at a time, so the event loop keeps answering (``/health``)
    and only one parsed body is being built at any moment."""

    def __init__(
        self,
        max_body: int = MAX_BODY,
        max_containers: int = MAX_CONTAINERS,
        max_values: int = MAX_VALUES,
        budget: int | None = None,
        timeout: float = BODY_TIMEOUT,
    ):
        self.max_body = max_body
        self.max_containers = max_containers
        self.max_values = max_values
        self.budget = max(budget if budget is not None else 4 * max_body, max_body)
        self.timeout = timeout
        self.held = 0
        self._parsing: Any = None  # an asyncio.Semaphore, made on the server's loop

    def _hold(self, size: int) -> None:
        if self.held + size > self.budget:
            raise Refused(
                503, "the backend is busy receiving other requests' bodies: retry in a moment"
            )
        self.held += size

    async def read(self, request) -> dict:
        """The request's JSON object."""
        import asyncio

        from starlette.concurrency import run_in_threadpool

        limit = self.max_body
        declared = request.headers.get("content-length")
        if declared is not None:
            declared = declared.strip()
            if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
                raise Refused(400, "the Content-Length header is not a number")
            if int(declared) > limit:
                raise Refused(
                    413, f"the body has {int(declared)} bytes; this backend takes at most {limit}"
                )
        buffer, held = bytearray(), 0
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    async for chunk in request.stream():
                        if len(buffer) + len(chunk) > limit:
                            raise Refused(
                                413, f"the body is over {limit} bytes, this backend's limit"
                            )
                        self._hold(len(chunk))
                        held += len(chunk)
                        buffer += chunk
            except TimeoutError:
                raise Refused(408, f"the body did not arrive within {self.timeout:g} s") from None
            containers = buffer.count(b"{") + buffer.count(b"[")
            if containers > self.max_containers:
                raise Refused(
                    413,
                    f"the body holds {containers} JSON objects and arrays; this backend parses "
                    f"at most {self.max_containers}",
                )
            values = containers + buffer.count(b",") + 1
            if values > self.max_values:
                raise Refused(
                    413,
                    f"the body holds up to {values} JSON values; this backend parses at most "
                    f"{self.max_values}",
                )
            if self._parsing is None:
                self._parsing = asyncio.Semaphore(1)
            async with self._parsing:
                body = await run_in_threadpool(_parse_json, buffer)
        finally:
            self.held -= held
        if not isinstance(body, dict):
            raise Refused(422, f"the body must be a JSON object, not {type(body).__name__}")
        return body


def _parse_json(text: bytearray) -> Any:
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise Refused(400, "the body is not valid JSON") from None
    except ValueError as exc:
        if "digits" in str(exc):  # an integer longer than Python converts (4300 digits)
            raise Refused(400, "the body holds a number too long to parse") from None
        raise Refused(400, "the body is not valid JSON") from None
    except RecursionError:  # valid JSON, but nested deeper than the parser goes
        raise Refused(400, "the body's JSON is nested too deeply") from None


def _id(value: Any) -> int | None:
    """A catalogue id (1 to 2**63-1) from an int or a string of ASCII digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            return None
        value = int(value)
    if isinstance(value, int) and 0 < value <= MAX_ID:
        return value
    return None


def _project_id(value: Any, what: str = "project") -> int | None:
    """A project id from Label Studio's ``"<id>.<created timestamp>"``, an int, or None."""
    if value is None:
        return None
    head = value.split(".", 1)[0] if isinstance(value, str) else value
    pid = _id(head)
    if pid is None:
        raise Refused(
            422, f'{what} must be a project id (1 to 2**63-1) such as "12" or "12.1700000000"'
        )
    return pid


# --------------------------------------------------------------------------- the backend


@dataclass
class Backend:
    """What the routes share: the workspace, the run's model, the protocol and the limits."""

    ws: Workspace
    model: Any  # learning.inference.RunModel
    protocol: Protocol
    credentials: Credentials
    batch: int = 8
    max_tasks: int = MAX_TASKS
    limits: BodyLimits = field(default_factory=BodyLimits)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    configs_ok: set[int] = field(default_factory=set, repr=False)  # hashes of checked configs

    @property
    def model_version(self) -> str:
        return str(self.model.model_version)

    # ---------------------------------------------------------------- checks

    def check_config(self, config: Any) -> None:
        """The labelling config must hold the protocol's brush labels under datatool's names."""
        if config is None:
            return
        if not isinstance(config, str):
            raise Refused(422, "the labelling config (schema, label_config) must be a string")
        key = hash(config)
        if key in self.configs_ok:
            return
        expected = self.protocol.labelstudio_config()
        if config.strip() != expected.strip():
            self._check_interface(config)
        self.configs_ok.add(key)

    def _check_interface(self, config: str) -> None:
        from label_studio_sdk.label_interface import LabelInterface

        try:
            interface = LabelInterface(config)
            control = interface.get_control(FROM_NAME)
        except Exception:
            raise Refused(
                422,
                f"the project's labelling config has no brush labels named {FROM_NAME!r}: "
                "use the config 'datatool labelstudio push' made",
            ) from None
        labels = set(getattr(control, "labels", None) or [])
        missing = [s.name for s in self.protocol.structures if s.name not in labels]
        if control.tag.lower() != "brushlabels" or TO_NAME not in (control.to_name or []):
            raise Refused(
                422, f"{FROM_NAME!r} in the labelling config is not a BrushLabels on {TO_NAME!r}"
            )
        if missing:
            raise Refused(
                422, f"the labelling config lacks the protocol's labels {', '.join(missing)}"
            )

    def project_known(self, project_id: int) -> bool:
        with self.ws.session() as s:
            return (
                s.scalar(
                    select(LabelStudioProject.id)
                    .where(LabelStudioProject.project_id == project_id)
                    .limit(1)
                )
                is not None
            )

    def resolve(self, tasks: list[Any], project: int | None) -> list[tuple[int, str]]:
        """(image id, store hash) of every task, in order; any task datatool did not push
        refuses the request."""
        wanted: list[tuple[int, int, str]] = []  # (project, task, image name in its data)
        for k, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise Refused(422, f"task {k + 1} of the request is not a JSON object")
            tid = task.get("id")
            if not isinstance(tid, int) or _id(tid) is None:
                raise Refused(422, f"task {k + 1} of the request has no integer id (1 to 2**63-1)")
            pid = _project_id(task.get("project"), f"task {tid}'s project")
            if pid is None:
                pid = project
            elif project is not None and pid != project:
                raise Refused(422, f"task {tid} belongs to project {pid}, not to {project}")
            if pid is None:
                raise Refused(422, f"task {tid}: no project given")
            data = task.get("data")
            if not isinstance(data, dict):
                raise Refused(422, f"task {tid} has no data object")
            wanted.append((pid, tid, str(data.get("image_id", ""))))
        # a task id may be recorded twice: two raters' servers both number from 1 (one
        # backend serves every rater's server); the image the task names tells them apart
        found: dict[tuple[int, int], list[tuple[int, str]]] = {}
        with self.ws.session() as s:
            for pid in sorted({p for p, _, _ in wanted}):
                ids = [t for p, t, _ in wanted if p == pid]
                for tid, image_id, digest in s.execute(
                    select(LabelStudioTask.task_id, LabelStudioTask.image_id, Image.store_hash)
                    .join(LabelStudioProject, LabelStudioProject.id == LabelStudioTask.project_id)
                    .join(Image, Image.id == LabelStudioTask.image_id)
                    .where(LabelStudioProject.project_id == pid, LabelStudioTask.task_id.in_(ids))
                ):
                    found.setdefault((pid, tid), []).append((image_id, digest))
        answer = []
        for pid, tid, named in wanted:
            hits = found.get((pid, tid))
            if not hits:
                raise Refused(
                    422,
                    f"task {tid} of project {pid} was not made by 'datatool labelstudio push' "
                    "in this workspace: this backend answers only those tasks",
                )
            hit = next((h for h in hits if image_name(h[0]) == named), None)
            if hit is None:
                raise Refused(
                    422,
                    f"task {tid} of project {pid} does not name the image datatool pushed "
                    "as this task",
                )
            answer.append(hit)
        return answer

    def points(self, body: dict, tasks: int) -> list[Point]:
        """The rater's points in an interactive request (none in a plain one)."""
        try:
            points = points_of(context_of(body), self.protocol)
        except BadContext as e:
            raise Refused(422, str(e)) from None
        if points and not self.model.interactive:
            raise Refused(
                422,
                f"run {self.model.run_id} was not trained with clicks: serve an interactive run "
                "('datatool train --interactive') to redraw from a rater's points",
            )
        if points and tasks != 1:
            raise Refused(422, f"points for {tasks} tasks: an interactive request has one task")
        return points

    # ---------------------------------------------------------------- work

    def redraw(self, image: tuple[int, str], points: list[Point]) -> dict:
        """The clicked structures of one image redrawn from the points (blocking)."""
        array = self.ws.store.get_array(image[1])
        with self.lock:
            return interactive_answer(self.model, array, points, self.protocol)

    def predict(self, images: list[tuple[int, str]]) -> list[dict]:
        """One Label Studio prediction per image (blocking: run it in a worker thread)."""
        from datatool.learning.inference import predict

        arrays = [self.ws.store.get_array(digest) for _, digest in images]
        with self.lock:
            drafts = predict(self.model, arrays, batch=self.batch)
        return [
            {
                "result": mask_to_results(d.labels, self.protocol),
                "score": float(d.score),
                "model_version": self.model_version,
            }
            for d in drafts
        ]


def create_app(
    ws: Workspace,
    run_id: int,
    credentials: Credentials,
    *,
    device: str = "auto",
    checkpoint: str = "best",
    batch: int = 8,
    max_tasks: int = MAX_TASKS,
    max_body: int = MAX_BODY,
):
    """The ML backend of a run as an ASGI app (for uvicorn, or a test client)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from datatool.learning.inference import load_run_model

    if batch < 1 or max_tasks < 1 or max_body < 1024:
        raise UsageError("--batch and --max-tasks must be at least 1, the body limit 1 KiB")
    backend = Backend(
        ws=ws,
        model=load_run_model(ws, run_id, checkpoint, device),
        protocol=load_protocol(ws.protocol_name),
        credentials=credentials,
        batch=batch,
        max_tasks=max_tasks,
        limits=BodyLimits(max_body),
    )

    async def health(request):
        return _json_response(
            200,
            {
                "status": "UP",
                "model_class": "datatool",
                "model_version": backend.model_version,
                "interactive": bool(getattr(backend.model, "interactive", False)),
            },
        )

    @_answering("/setup")
    async def setup(request):
        body = await backend.limits.read(request)
        pid = _project_id(body.get("project"))
        if pid is None:
            raise Refused(422, "setup needs the project")
        backend.check_config(body.get("schema"))
        if not await run_in_threadpool(backend.project_known, pid):
            raise Refused(
                422,
                f"project {pid} was not made by 'datatool labelstudio push' in this workspace: "
                "this backend drafts only datatool's projects",
            )
        log.info("setup: project %d", pid)
        return _json_response(200, {"model_version": backend.model_version})

    @_answering("/predict")
    async def predict(request):
        started = time.perf_counter()
        body = await backend.limits.read(request)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise Refused(422, "predict needs 'tasks', a list of Label Studio tasks")
        if not tasks:
            raise Refused(422, "predict got an empty list of tasks")
        if len(tasks) > backend.max_tasks:
            raise Refused(
                413,
                f"{len(tasks)} tasks in one request; this backend answers at most "
                f"{backend.max_tasks} (select fewer tasks, or start it with a larger --max-tasks)",
            )
        project = _project_id(body.get("project"))
        backend.check_config(body.get("label_config"))
        points = backend.points(body, len(tasks))
        images = await run_in_threadpool(backend.resolve, tasks, project)
        if points:
            results = [await run_in_threadpool(backend.redraw, images[0], points)]
        else:
            results = await run_in_threadpool(backend.predict, images)
        log.info(
            "predict: %d tasks%s in %.0f ms",
            len(results),
            f", {len(points)} clicks" if points else "",
            1000 * (time.perf_counter() - started),
        )
        return _json_response(200, {"results": results, "model_version": backend.model_version})

    @_answering("/webhook")
    async def webhook(request):
        body = await backend.limits.read(request)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise Refused(422, "a webhook event needs its 'action'")
        if action == "START_TRAINING":
            log.info("webhook: START_TRAINING answered (training runs with 'datatool train')")
            return _json_response(
                200,
                {
                    "status": "ignored",
                    "message": "this backend does not train: training runs with "
                    "'datatool train --split NAME', after 'datatool sync labelstudio'",
                },
            )
        project = body.get("project")
        pid = _project_id(project.get("id") if isinstance(project, dict) else project)
        if pid is None:
            raise Refused(422, "a webhook event needs its project")
        if not action.upper().startswith("ANNOTATION"):
            return _json_response(200, {"status": "ignored", "action": escape_action(action)})
        if not await run_in_threadpool(backend.project_known, pid):
            return _json_response(200, {"status": "ignored", "reason": "not a datatool project"})
        await run_in_threadpool(record_event, ws.meta_dir, pid, action)
        log.info("webhook: %s in project %d recorded", escape_action(action), pid)
        return _json_response(200, {"status": "recorded"})

    async def versions(request):
        return _json_response(200, {"versions": [backend.model_version]})

    async def http_error(request, exc):
        return _error(exc.status_code, str(exc.detail))

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/setup", setup, methods=["POST"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/webhook", webhook, methods=["POST"]),
            Route("/versions", versions, methods=["GET"]),
        ],
        middleware=[Middleware(_Auth, credentials=credentials)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.backend = backend
    return app


# --------------------------------------------------------------------------- serving


@dataclass
class Serving:
    """A backend ready to listen: where, as which model, with which credentials."""

    run: int
    host: str
    port: int
    url: str
    model_version: str
    device: str
    user: str
    credentials_from: str  # "environment", or the file holding the generated password
    max_tasks: int
    max_body: int
    max_connections: int  # open connections at once (lowered to fit the open-file limit)
    header_timeout: float  # seconds for a request's headers
    keep_alive: float  # seconds an idle keep-alive connection stays open
    app: Any = field(repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "app"}


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def prepare(
    ws: Workspace,
    run_id: int,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    device: str = "auto",
    checkpoint: str = "best",
    batch: int = 8,
    max_tasks: int = MAX_TASKS,
    max_body: int = MAX_BODY,
    max_connections: int = MAX_CONNECTIONS,
) -> Serving:
    """Check where to listen, settle the credentials and load the run's model."""
    if not 0 < port < 65536:
        raise UsageError("--port must be 1-65535")
    credentials = credentials_from_env(host)
    if host not in LOOPBACK and credentials is None:
        raise UsageError(
            f"--host {host} listens beyond this machine: set {USER_ENV} and {PASSWORD_ENV} "
            "first (a generated password is for loopback only), or keep --host 127.0.0.1"
        )
    url = _url(host, port)
    from datatool.learning.training import run_summary

    run_summary(ws, run_id)  # an unknown run is refused before any credentials file is made
    cap = connection_cap(max_connections)
    app_credentials = credentials or generate_credentials(ws, run_id, url)
    app = create_app(
        ws,
        run_id,
        app_credentials,
        device=device,
        checkpoint=checkpoint,
        batch=batch,
        max_tasks=max_tasks,
        max_body=max_body,
    )
    backend: Backend = app.state.backend
    return Serving(
        run=int(run_id),
        host=host,
        port=port,
        url=url,
        model_version=backend.model_version,
        device=str(backend.model.device),
        user=app_credentials.user,
        credentials_from=app_credentials.source,
        max_tasks=max_tasks,
        max_body=max_body,
        max_connections=cap,
        header_timeout=HEADER_TIMEOUT,
        keep_alive=KEEP_ALIVE,
        app=app,
    )


def run(serving: Serving) -> None:
    """Listen until stopped (Ctrl-C), with the connection limits of ``serving_guard``."""
    import asyncio

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    guard = Guard(max_connections=serving.max_connections, header_timeout=serving.header_timeout)
    server = make_server(
        serving.app, serving.host, serving.port, guard, keep_alive=serving.keep_alive
    )
    try:
        asyncio.run(serve(server, guard))
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly; nothing was interrupted
        log.info("stopped")


__all__ = [
    "MAX_BODY",
    "MAX_CONTAINERS",
    "MAX_TASKS",
    "PASSWORD_ENV",
    "USER_ENV",
    "Credentials",
    "Serving",
    "create_app",
    "credentials_file",
    "credentials_from_env",
    "prepare",
    "read_credentials_file",
    "run",
]
