"""What a labelling tool's export needs from a model to pre-fill drafts, and nothing more.

``labels`` sits below ``learning``: an export never loads a run itself. The caller (the CLI,
through ``datatool.assist.drafter``) loads the run and hands its drafter in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Drafter(Protocol):
    """A run's model, loaded: which run and model version its drafts come from, and the
    label map it draws for each image (protocol values, the image's size)."""

    @property
    def run_id(self) -> int: ...

    @property
    def model_version(self) -> str: ...

    def labels(self, images: Sequence[np.ndarray], batch: int = 8) -> list[np.ndarray]: ...
