"""``datatool next``: which unlabelled images a rater should label next.

Labelling effort goes where the model is weakest: every image the rater has not labelled is
drafted by the run (``inference.predict``, the whole image) and ranked by its mean predictive
entropy (the softmax's entropy averaged over the image, in nats), highest first, ties by image
id. A cap per patient keeps one patient from filling the list: the ranking is walked from the
top and an image is skipped once its patient has ``per_patient`` images on the list (default:
a tenth of the list, at least 1, so a list spans at least ten patients where there are ten).
The list may be shorter than asked when the cap or the images run out (a note says so).
An image the run's checkpoint scored before is not drafted again (:mod:`.entropy_cache`): the
network is loaded only when some image has no score yet.

With ``push`` the chosen images go into the rater's own Label Studio project
(``labels.labelstudio.push.push``); with ``drafts`` the run's drafts of them are stored
(rater model:RUN, ``inference.ensure_drafts``) and added to those tasks as predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from datatool.assist.entropy_cache import EntropyCache
from datatool.core.catalogue import (
    Annotation,
    Image,
    LabelStudioProject,
    LabelStudioTask,
    Patient,
    Run,
    RunStatus,
    Series,
    Study,
    audit,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, in_chunks
from datatool.labels.matching import image_name
from datatool.learning.inference import (
    DRAFT_FLIPS,
    STORE_CHUNK,
    RunModel,
    ensure_drafts,
    load_run_model,
    model_version_of,
    predict,
)
from datatool.learning.options import DeviceChoice
from datatool.learning.runs import run_summary

DEFAULT_N = 50


@dataclass
class Candidate:
    rank: int
    image: str
    image_id: int
    patient: str  # pseudonym
    side: str | None
    entropy: float  # mean predictive entropy over the image, nats
    score: float  # mean top probability over what the model drafts as a structure


@dataclass
class NextImages:
    """The images a rater should label next, highest mean predictive entropy first, at most
    ``per_patient`` per patient."""

    rater: str
    run: int
    model_version: str
    unlabelled: int  # images the rater has not labelled (all were ranked)
    per_patient: int
    images: list[Candidate]
    pushed_project: int | None = None  # the rater's Label Studio project, with --push
    tasks_created: int = 0
    already_pushed: int = 0
    predictions_added: int = 0  # drafts added to the tasks as predictions, with --drafts
    notes: list[str] = field(default_factory=list)


def latest_done_run(ws: Workspace) -> int:
    """The newest finished run with a best checkpoint."""
    with ws.session() as s:
        run = s.scalar(
            select(Run.id)
            .where(Run.status == RunStatus.done, Run.best_checkpoint.is_not(None))
            .order_by(Run.id.desc())
            .limit(1)
        )
    if run is None:
        raise DatatoolError("no finished training run: train one first ('datatool train')")
    return int(run)


def _unlabelled(ws: Workspace, rater: str) -> tuple[str, list[tuple[int, str, str, str | None]]]:
    """The rater's name and their unlabelled images: (id, store hash, pseudonym, side)."""
    with ws.session() as s:
        r = get_rater(s, rater)
        labelled = select(Annotation.image_id).where(Annotation.rater_id == r.id)
        rows = s.execute(
            select(Image.id, Image.store_hash, Patient.pseudonym, Series.side)
            .join(Series, Series.id == Image.series_id)
            .join(Study, Study.id == Series.study_id)
            .join(Patient, Patient.id == Study.patient_id)
            .where(Image.id.not_in(labelled))
            .order_by(Image.id)
        ).all()
        return r.name, [(i, h, p, side) for i, h, p, side in rows]


def per_patient_cap(n: int, per_patient: int | None) -> int:
    """The most images of one patient on a list of ``n``: ``per_patient``, else a tenth of
    ``n`` rounded up (1 or more, as ``n`` is); refused below 1."""
    if n < 1:
        raise UsageError("--n must be 1 or more")
    cap = per_patient if per_patient is not None else math.ceil(n / 10)
    if cap < 1:
        raise UsageError("--per-patient must be 1 or more")
    return cap


def choose(
    scored: list[tuple[float, float, tuple[int, str, str, str | None]]], n: int, cap: int
) -> list[Candidate]:
    """The top ``n`` of ``scored`` (entropy, score, (image id, store hash, pseudonym, side)),
    highest entropy first, ties by image id, skipping an image once its patient has ``cap``
    on the list."""
    taken: dict[str, int] = {}
    chosen: list[Candidate] = []
    for entropy, score, (image_id, _, patient, side) in sorted(
        scored, key=lambda x: (-x[0], x[2][0])
    ):
        if len(chosen) == n:
            break
        if taken.get(patient, 0) >= cap:
            continue
        taken[patient] = taken.get(patient, 0) + 1
        chosen.append(
            Candidate(
                len(chosen) + 1, image_name(image_id), image_id, patient, side, entropy, score
            )
        )
    return chosen


def shortfall(rater: str, unlabelled: int, listed: int, n: int, cap: int) -> list[str]:
    """The note of a list shorter than asked (why), or of a rater with nothing left."""
    if not unlabelled:
        return [f"rater {rater} has labelled every image"]
    if listed < n:
        why = (
            f"only {unlabelled} unlabelled images"
            if unlabelled <= n
            else f"at most {cap} per patient (--per-patient)"
        )
        return [f"{listed} of {n} listed: {why}"]
    return []


class LazyRun:
    """A run's identity, read from the catalogue; its network loaded on first use (importing
    torch and reading the checkpoint: about 1 s), which a ranking whose every score is cached
    never needs."""

    def __init__(self, ws: Workspace, run_id: int, device: str = DeviceChoice.auto):
        summary = run_summary(ws, run_id)
        self.run_id = summary.run
        self.model_version = model_version_of(summary.run, summary.split_hash)
        self.checkpoint = summary.best_checkpoint  # its SHA-256; None: none yet
        self._ws, self._device = ws, device
        self._model: RunModel | None = None

    def load(self) -> RunModel:
        if self._model is None:
            self._model = load_run_model(self._ws, self.run_id, device=self._device)
        return self._model


def rank_next(
    ws: Workspace,
    rater: str,
    model: RunModel | LazyRun,
    n: int = DEFAULT_N,
    per_patient: int | None = None,
    batch: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cache: EntropyCache | None = None,
) -> NextImages:
    """Rank the rater's unlabelled images by the model's mean predictive entropy (see the
    module's docstring) and keep the top ``n``, at most ``per_patient`` per patient. With a
    ``cache``, an image scored before by the same checkpoint is not drafted again."""
    cap = per_patient_cap(n, per_patient)
    name, todo = _unlabelled(ws, rater)
    scored = []
    for start in range(0, len(todo), STORE_CHUNK):
        chunk = todo[start : start + STORE_CHUNK]
        known: dict[str, tuple[float, float]] = {}
        if cache:
            for _, h, _, _ in chunk:
                got = cache.get(h)
                if got is not None:
                    known[h] = got
        new = [row for row in chunk if row[1] not in known]
        if new:
            network = model if isinstance(model, RunModel) else model.load()
            drafts = predict(network, [ws.store.get_array(h) for _, h, _, _ in new], batch=batch)
            for d, (_, h, _, _) in zip(drafts, new):
                known[h] = (d.entropy, d.score)
                if cache:
                    cache.put(h, d.entropy, d.score)
        scored += [(*known[row[1]], row) for row in chunk]
        if progress:
            progress(start + len(chunk), len(todo))
    if cache:
        cache.save()
    chosen = choose(scored, n, cap)
    return NextImages(
        rater=name,
        run=model.run_id,
        model_version=model.model_version,
        unlabelled=len(todo),
        per_patient=cap,
        images=chosen,
        notes=shortfall(name, len(todo), len(chosen), n, cap),
    )


def next_images(
    ws: Workspace,
    rater: str,
    n: int = DEFAULT_N,
    run: int | None = None,
    per_patient: int | None = None,
    push: bool = False,
    drafts: bool = False,
    url: str | None = None,
    token: str | None = None,
    serve: str = "local",
    local_root: Path | str | None = None,
    device: str = DeviceChoice.auto,
    progress: Callable[[int, int], None] | None = None,
) -> NextImages:
    """``datatool next``: rank (see :func:`rank_next`) with the run (default: the newest
    finished one), and with ``push`` put the images into the rater's Label Studio project
    (with the run's drafts as predictions when ``drafts``)."""
    if drafts and not push:
        raise UsageError("--drafts goes with --push (drafts are added to the pushed tasks)")
    run_id = run if run is not None else latest_done_run(ws)
    model = LazyRun(ws, run_id, device)
    if model.checkpoint is None:
        model.load()  # says why there is none
    cache = EntropyCache(ws.meta_dir, model.run_id, str(model.checkpoint), DRAFT_FLIPS)
    result = rank_next(ws, rater, model, n, per_patient, progress=progress, cache=cache)
    with ws.session() as s:
        audit(
            s,
            "next",
            "ranking",
            rater=result.rater,
            run=run_id,
            unlabelled=result.unlabelled,
            listed=[c.image_id for c in result.images],
        )
    if push and result.images:
        _push(ws, result, model.load(), drafts, url, token, serve, local_root, device)
    return result


def _push(
    ws: Workspace,
    result: NextImages,
    model: RunModel,
    drafts: bool,
    url: str | None,
    token: str | None,
    serve: str,
    local_root: Path | str | None,
    device: str,
) -> None:
    from datatool.labels.handouts import record_handouts
    from datatool.labels.labelstudio.connection import _server_tasks, rater_server
    from datatool.labels.labelstudio.formats import mask_to_results
    from datatool.labels.labelstudio.push import push

    ids = [c.image_id for c in result.images]
    pushed = push(ws, result.rater, url=url, token=token, image_ids=ids, serve=serve,
                  local_root=local_root)  # fmt: skip
    result.pushed_project = pushed.project_id
    result.tasks_created, result.already_pushed = pushed.tasks_created, pushed.already_pushed
    if not drafts:
        return
    stored = ensure_drafts(ws, result.run, ids, device=device)
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        who = get_rater(s, result.rater)
        row = s.scalar(
            select(LabelStudioProject).where(
                LabelStudioProject.project_id == pushed.project_id,
                LabelStudioProject.rater_id == who.id,
            )
        )
        assert row is not None
        tasks: dict[int, int] = {}
        for chunk in in_chunks(ids):
            tasks.update(
                s.execute(
                    select(LabelStudioTask.image_id, LabelStudioTask.task_id).where(
                        LabelStudioTask.project_id == row.id, LabelStudioTask.image_id.in_(chunk)
                    )
                ).all()
            )
        hashes = dict(
            s.execute(
                select(Annotation.image_id, Annotation.mask_hash).where(
                    Annotation.id.in_(list(stored.annotations.values()))
                )
            ).all()
        )
        where = rater_server(s, who, url)
        record_handouts(  # before the rater can see them (labels.handouts)
            s,
            who.id,
            "labelstudio",
            [(i, result.run, model.model_version, hashes[i]) for i in ids if i in hashes],
        )
    conn = where.connect(token)
    have = {
        int(t["id"])
        for t in _server_tasks(conn, pushed.project_id, annotations=True)
        if any(
            (p.get("model_version") if isinstance(p, dict) else None) == model.model_version
            for p in t.get("predictions") or []
        )
    }
    scores = {c.image_id: c.score for c in result.images}
    for image_id in ids:
        tid = tasks.get(image_id)
        if tid is None or tid in have:
            continue
        conn.call(
            "add a draft as a prediction",
            conn.client.predictions.create,
            task=tid,
            result=mask_to_results(ws.store.get_array(hashes[image_id]), protocol),
            score=scores[image_id],
            model_version=model.model_version,
        )
        result.predictions_added += 1
    with ws.session() as s:
        audit(
            s,
            "next",
            "drafts as predictions",
            project_id=pushed.project_id,
            run=result.run,
            added=result.predictions_added,
        )
