"""Model drafts for a rater's Label Studio tasks (``datatool prelabel``).

A run's model drafts every task of the rater's own project(s) that has no prediction of this
run yet, and each draft is attached to its task as one Label Studio prediction:

* ``result``: one brush region per structure drafted (the protocol's Label Studio names, the
  task image's own width and height; ``formats.mask_to_results``);
* ``score``: the mean, over the pixels drafted as a structure, of the highest class
  probability (the mean max-softmax over the drafted foreground); 0 when nothing is drafted;
* ``model_version``: the run and its split hash (``datatool-run-N-split-HASH12``).

The images come from the workspace store by the image id the catalogue recorded for the task,
never from the server. The project is then set to show this model version's predictions
(``model_version``, ``show_collab_predictions``), so the rater starts from the draft.

Blinding: a prediction holds the model's output and nothing else; another rater's labels
never reach the project. ``only_unlabelled`` leaves out tasks the rater has annotated on the
server or images the rater has labels of in the catalogue (their own labels only).

Running it again uploads nothing: a task that has a prediction with this model version is
left alone (an interrupted run is finished by the next one).

Layering: ``assist`` joins the labels (Label Studio tasks) and the learning (the drafts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sqlalchemy import select

from datatool.core.catalogue import Image, LabelStudioTask, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import labelling_rater, latest_annotations_query
from datatool.labels.handouts import record_handouts
from datatool.labels.labelstudio.connection import (
    Connection,
    _plain,
    _rater_projects,
    _server_project,
    _server_tasks,
    rater_server,
)
from datatool.labels.labelstudio.formats import mask_to_results
from datatool.labels.matching import image_name
from datatool.labels.quoting import excerpt

UPLOAD_BATCH = 64  # predictions per request to the server

SCORE_FORMULA = (
    "the mean, over the pixels drafted as a structure, of the model's highest class "
    "probability (mean max-softmax over the drafted foreground); 0 when nothing is drafted"
)


@dataclass
class PrelabelReport:
    """What a ``prelabel`` did (no URL, no token)."""

    rater: str
    run: int
    model_version: str
    device: str
    projects: list[int]
    tasks: int  # the rater's recorded tasks found on the server
    drafted: int  # predictions uploaded now
    already: int  # tasks that had a prediction of this model version
    skipped_labelled: int  # only_unlabelled: tasks the rater has labelled
    missing_on_server: list[int]  # recorded task ids the server no longer has
    empty_drafts: int  # uploaded drafts with nothing drafted (score 0)
    structures: dict[str, int]  # structure -> uploaded drafts holding it
    score_mean: float | None  # mean task score of the uploaded drafts
    seconds: dict[str, float] = field(default_factory=dict)  # read, inference, encode, upload
    showing: list[int] = field(default_factory=list)  # projects set to show these drafts
    score_formula: str = SCORE_FORMULA

    @property
    def drafts_per_second(self) -> float | None:
        total = sum(self.seconds.values())
        return self.drafted / total if self.drafted and total > 0 else None


@dataclass
class _Todo:
    project_id: int
    task_id: int
    image_id: int
    store_hash: str


class _Pushed(Protocol):
    task_id: int
    image_id: int


_T = TypeVar("_T", bound=_Pushed)


def recorded_tasks(s, rater_id: int, rater: str, *columns) -> dict[int, list[tuple]]:
    """The tasks datatool pushed to the rater's projects, per Label Studio project id: rows of
    (task id, image id, *columns of the task's Image), in task order. A rater without a
    project is an error that says to push first."""
    rows = _rater_projects(s, rater_id)
    if not rows:
        raise DatatoolError(
            f"rater {rater} has no Label Studio project yet: run "
            f"'datatool labelstudio push --rater {rater}' first"
        )
    return {
        row.project_id: [
            tuple(found)
            for found in s.execute(
                select(LabelStudioTask.task_id, LabelStudioTask.image_id, *columns)
                .join(Image, Image.id == LabelStudioTask.image_id)
                .where(LabelStudioTask.project_id == row.id)
                .order_by(LabelStudioTask.task_id)
            )
        ]
        for row in rows
    }


def server_tasks_of(
    conn: Connection, pid: int, rater: str, tasks: Iterable[_T]
) -> Iterator[tuple[_T, dict | None]]:
    """Each recorded task (with ``task_id`` and ``image_id``) beside the server's copy of it
    (None when the server no longer has it). A server task that names another image than the
    one datatool pushed stops everything: no drafts are sent into a project that changed."""
    _server_project(conn, pid, rater)
    server = {int(t["id"]): t for t in _server_tasks(conn, pid, annotations=True)}
    for t in tasks:
        task = server.get(t.task_id)
        if task is not None:
            data = task.get("data") or {}
            if str(data.get("image_id")) != image_name(t.image_id):
                raise DatatoolError(
                    f"task {t.task_id} of project {pid} names image "
                    f"{excerpt(data.get('image_id'))}, but datatool pushed "
                    f"{image_name(t.image_id)} as this task: no drafts sent"
                )
        yield t, task


def _has_version(task: dict, version: str) -> bool:
    for item in task.get("predictions") or []:
        prediction = _plain(item) if not isinstance(item, int) else {}
        if prediction.get("model_version") == version:
            return True
    return False


def prelabel(
    ws: Workspace,
    run_id: int,
    rater: str,
    url: str | None = None,
    token: str | None = None,
    only_unlabelled: bool = False,
    batch: int = 8,
    device: str = "auto",
    checkpoint: str = "best",
    progress: Callable[[int, int], None] | None = None,
) -> PrelabelReport:
    """Attach a run's drafts to the rater's Label Studio tasks that have none from this run
    (see the module docstring); returns what was done."""
    from datatool.learning.inference import load_run_model

    if batch < 1:
        raise UsageError("--batch must be at least 1")
    from datatool.learning.training import get_run

    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        get_run(s, run_id)  # an unknown run is a usage error, before anything else
        r = labelling_rater(s, rater, "'prelabel'")
        rater_id = r.id
        rater = r.name
        where = rater_server(s, r, url)
        recorded = {
            pid: [_Todo(pid, tid, iid, digest) for tid, iid, digest in tasks]
            for pid, tasks in recorded_tasks(s, r.id, rater, Image.store_hash).items()
        }
        labelled = {a.image_id for a in s.scalars(latest_annotations_query([r.id]))}
    model = load_run_model(ws, run_id, checkpoint, device)
    version = model.model_version
    conn = where.connect(token)
    todo: list[_Todo] = []
    shown: set[int] = set()  # projects that hold drafts of this version
    found = already = skipped = 0
    missing: list[int] = []
    for pid, tasks in recorded.items():
        for t, task in server_tasks_of(conn, pid, rater, tasks):
            if task is None:
                missing.append(t.task_id)
                continue
            found += 1
            if _has_version(task, version):
                already += 1
                shown.add(pid)
            elif only_unlabelled and (task.get("annotations") or t.image_id in labelled):
                skipped += 1
            else:
                todo.append(t)
    report = PrelabelReport(
        rater=rater,
        run=model.run_id,
        model_version=version,
        device=str(model.device),
        projects=list(recorded),
        tasks=found,
        drafted=0,
        already=already,
        skipped_labelled=skipped,
        missing_on_server=missing,
        empty_drafts=0,
        structures={st.name: 0 for st in protocol.structures},
        score_mean=None,
        seconds={"read": 0.0, "inference": 0.0, "encode": 0.0, "upload": 0.0},
    )
    _draft_and_upload(ws, conn, model, protocol, todo, batch, report, progress, rater_id)
    report.showing = sorted(shown | {t.project_id for t in todo})
    for pid in report.showing:
        _show_drafts(conn, pid, version)
    with ws.session() as s:
        audit(
            s,
            "prelabel",
            "predictions",
            rater=rater,
            run=model.run_id,
            model_version=version,
            projects=list(recorded),
            drafted=report.drafted,
            already=already,
            skipped_labelled=skipped,
        )
    return report


def _draft_and_upload(
    ws: Workspace,
    conn: Connection,
    model,
    protocol,
    todo: list[_Todo],
    batch: int,
    report: PrelabelReport,
    progress: Callable[[int, int], None] | None,
    rater_id: int,
) -> None:
    """Draft the tasks ``batch`` images at a time; upload UPLOAD_BATCH predictions a request,
    per project."""
    from datatool.learning.inference import predict

    pending: dict[int, list[dict]] = {}
    scores: list[float] = []
    done = 0
    if progress:
        progress(0, len(todo))

    def upload(pid: int) -> None:
        items = pending.pop(pid, [])
        if not items:
            return
        t0 = time.perf_counter()
        conn.call("upload predictions", conn.client.projects.import_predictions, pid, request=items)
        report.seconds["upload"] += time.perf_counter() - t0
        report.drafted += len(items)

    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        t0 = time.perf_counter()
        images = [ws.store.get_array(t.store_hash) for t in chunk]
        t1 = time.perf_counter()
        drafts = predict(model, images, batch=batch)
        with ws.session() as s:  # recorded before the rater can see them (labels.handouts)
            record_handouts(
                s,
                rater_id,
                "labelstudio",
                [
                    (t.image_id, model.run_id, model.model_version, ws.store.put_array(d.labels))
                    for t, d in zip(chunk, drafts)
                ],
            )
        t2 = time.perf_counter()
        for t, draft in zip(chunk, drafts):
            results = mask_to_results(draft.labels, protocol)
            pending.setdefault(t.project_id, []).append(
                {
                    "task": t.task_id,
                    "result": results,
                    "score": float(draft.score),
                    "model_version": model.model_version,
                }
            )
            scores.append(float(draft.score))
            report.empty_drafts += not results
            for entry in results:
                report.structures[protocol.by_label(entry["value"]["brushlabels"][0]).name] += 1
        t3 = time.perf_counter()
        done += len(chunk)
        if progress:  # the images drafted so far: the model's inference is the long part
            progress(done, len(todo))
        report.seconds["read"] += t1 - t0
        report.seconds["inference"] += t2 - t1
        report.seconds["encode"] += t3 - t2
        for pid in list(pending):
            if len(pending[pid]) >= UPLOAD_BATCH:
                upload(pid)
    for pid in list(pending):
        upload(pid)
    report.score_mean = sum(scores) / len(scores) if scores else None


def _show_drafts(conn: Connection, project_id: int, version: str) -> None:
    """Make the project show this model version's predictions to its rater."""
    project = conn.call(f"read project {project_id}", conn.client.projects.get, project_id)
    if project.model_version == version and project.show_collab_predictions:
        return
    conn.call(
        "show the drafts in the project",
        conn.client.projects.update,
        project_id,
        model_version=version,
        show_collab_predictions=True,
    )
