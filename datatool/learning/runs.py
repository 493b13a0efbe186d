"""The run record: a training run and its epochs as the catalogue holds them, the list of
runs, and a run's lineage (the run it was initialised from, ``train --init-from``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from datatool.core.catalogue import Run, RunStatus, Split
from datatool.core.errors import UsageError
from datatool.core.workspace import Workspace
from datatool.learning.splits import split_name_of


@dataclass
class EpochRow:
    epoch: int  # counted from 0
    train_loss: float
    val_loss: float | None
    val_miou: float | None
    val_miou_per_image: float | None
    seconds: float


@dataclass
class RunSummary:
    """A training run as the catalogue records it, with its history."""

    run: int
    split: str
    split_hash: str
    fold: int | None
    cv_group: str | None
    preset: str
    seed: int
    config: dict[str, Any]
    code_version: str
    device: str
    status: RunStatus
    epochs_done: int
    best_epoch: int | None  # counted from 0
    best_val_miou: float | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    created: str
    history: list[EpochRow] = field(default_factory=list)
    parent: int | None = None  # the run whose weights this one started from (--init-from)


@dataclass
class RunRow:
    """A run in the list of runs."""

    run: int
    split: str
    fold: int | None
    preset: str
    status: RunStatus
    epochs: int  # done
    planned_epochs: int | None
    best_epoch: int | None  # counted from 0
    best_val_miou: float | None
    device: str
    created: str
    resumable: bool  # stopped, with a checkpoint to go on from
    parent: int | None = None  # the run whose weights this one started from (--init-from)

    @property
    def stopped(self) -> bool:
        """Interrupted or failed: ended before its last epoch."""
        return self.status in (RunStatus.interrupted, RunStatus.failed)


def get_run(session, run_id: int) -> Run:
    """Run ``run_id``, or an error that says where the runs are listed."""
    run = session.get(Run, run_id)
    if run is None:
        raise UsageError(f"no run {run_id}: 'datatool runs' lists them")
    return run


def parent_of(config: dict | None) -> int | None:
    """The run a run's weights started from (its config's ``init_from``), or None."""
    parent = (config or {}).get("init_from")
    return None if parent is None else int(parent)


def lineage_in(session, run_id: int) -> list[int]:
    """Run ``run_id`` and its ancestors, nearest first: [run, parent, grandparent, ...]."""
    chain = [run_id]
    parent = parent_of(get_run(session, run_id).config)
    while parent is not None and parent not in chain:
        chain.append(parent)
        row = session.get(Run, parent)
        parent = parent_of(row.config) if row is not None else None
    return chain


def lineage(ws: Workspace, run_id: int) -> list[int]:
    """Run ``run_id`` and its ancestors, nearest first (:func:`lineage_in`)."""
    with ws.session() as s:
        return lineage_in(s, run_id)


def run_summary(ws: Workspace, run_id: int) -> RunSummary:
    with ws.session() as s:
        run = get_run(s, run_id)
        history = [
            EpochRow(
                epoch=e.epoch,
                train_loss=e.train_loss,
                val_loss=e.val_loss,
                val_miou=e.val_miou,
                val_miou_per_image=e.val_miou_per_image,
                seconds=e.seconds,
            )
            for e in run.epochs
        ]
        return RunSummary(
            run=run.id,
            split=split_name_of(s, run.split_id),
            split_hash=run.split_hash,
            fold=run.fold,
            cv_group=run.cv_group,
            preset=run.preset,
            seed=run.seed,
            config=run.config,
            code_version=run.code_version,
            device=run.device,
            status=RunStatus(run.status),
            epochs_done=run.epochs_done,
            best_epoch=run.best_epoch,
            best_val_miou=run.best_val_miou,
            best_checkpoint=run.best_checkpoint,
            last_checkpoint=run.last_checkpoint,
            created=run.created_at.isoformat(timespec="seconds"),
            history=history,
            parent=parent_of(run.config),
        )


def list_runs(ws: Workspace) -> list[RunRow]:
    with ws.session() as s:
        rows = s.execute(
            select(Run, Split.name).join(Split, Run.split_id == Split.id).order_by(Run.id)
        ).all()
        return [
            RunRow(
                run=r.id,
                split=name,
                fold=r.fold,
                preset=r.preset,
                status=RunStatus(r.status),
                epochs=r.epochs_done,
                planned_epochs=(r.config or {}).get("epochs"),
                best_epoch=r.best_epoch,
                best_val_miou=r.best_val_miou,
                device=r.device,
                created=r.created_at.isoformat(timespec="seconds"),
                resumable=r.status in (RunStatus.interrupted, RunStatus.failed)
                and r.last_checkpoint is not None,
                parent=parent_of(r.config),
            )
            for r, name in rows
        ]


__all__ = [
    "EpochRow",
    "RunRow",
    "RunSummary",
    "get_run",
    "lineage",
    "lineage_in",
    "list_runs",
    "parent_of",
    "run_summary",
]
