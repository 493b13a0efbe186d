"""A run's model as the drafter a labelling tool's export asks for (``labels.drafting``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datatool.core.workspace import Workspace
from datatool.learning.inference import RunModel, load_run_model, predict


@dataclass
class RunDrafter:
    """Drafts from a loaded run: its best checkpoint's label map for each image."""

    model: RunModel

    @property
    def run_id(self) -> int:
        return self.model.run_id

    @property
    def model_version(self) -> str:
        return self.model.model_version

    def labels(self, images: Sequence[np.ndarray], batch: int = 8) -> list[np.ndarray]:
        return [draft.labels for draft in predict(self.model, images, batch=batch)]


def run_drafter(ws: Workspace, run_id: int, device: str = "auto") -> RunDrafter:
    """Load run ``run_id`` (its best checkpoint) on ``device`` to draft from."""
    return RunDrafter(load_run_model(ws, run_id, device=device))
