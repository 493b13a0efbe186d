"""Worker processes: one choice of start method for every pool datatool makes."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """``fork`` where there is one (workers start in milliseconds and inherit the loaded
    modules), else ``spawn``. Workers never touch the catalogue: only the main process writes."""
    return multiprocessing.get_context("fork" if os.name == "posix" else "spawn")


def worker_count(requested: int | None = None, cap: int | None = None) -> int:
    """``requested`` workers, or one per core (at most ``cap``)."""
    if requested is not None:
        return max(0, requested)
    cores = os.cpu_count() or 1
    return cores if cap is None else min(cores, cap)
