"""Cross-validation scores: every run of a ``train --cv`` group scored on its own validation
fold, and per structure the median over the folds (``datatool score RUN --cv``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from datatool.core.catalogue import Run
from datatool.core.errors import DatatoolError
from datatool.core.workspace import Workspace
from datatool.learning.options import ScoreSet
from datatool.learning.runs import get_run
from datatool.learning.scoring import ScoreResult, score_run
from datatool.learning.splits import split_name_of


@dataclass
class CVResult:
    """Every run of a cross-validation group scored on its own validation fold."""

    cv_group: str
    split: str
    runs: list[int]
    per_fold_mean_iou: dict[str, list[float | None]]  # structure -> one mean IoU per fold
    median_over_folds_mean_iou: dict[str, float | None]
    folds: list[ScoreResult]


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def score_cv(ws: Workspace, run_id: int, **kwargs) -> CVResult:
    """Every run of the run's cross-validation group, each on its own validation fold."""
    with ws.session() as s:
        run = get_run(s, run_id)
        if run.cv_group is None:
            raise DatatoolError(f"run {run_id} is not part of a cross-validation")
        cv_group = run.cv_group
        runs = [
            r.id for r in s.scalars(select(Run).where(Run.cv_group == cv_group).order_by(Run.fold))
        ]
        split = split_name_of(s, run.split_id)
    folds = [score_run(ws, r, subset=ScoreSet.val, **kwargs) for r in runs]
    per = {
        st.structure: [
            next(x for x in f.structures if x.structure == st.structure).iou["mean"] for f in folds
        ]
        for st in folds[0].structures
    }
    return CVResult(
        cv_group=cv_group,
        split=split,
        runs=runs,
        per_fold_mean_iou=per,
        median_over_folds_mean_iou={n: _median_or_none(v) for n, v in per.items()},
        folds=folds,
    )


__all__ = ["CVResult", "score_cv"]
