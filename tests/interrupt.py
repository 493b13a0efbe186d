"""Interrupting a command with kill -9 at chosen moments: the command runs in a forked child
(its modules already loaded, so a moment means the same thing every time) in a session of its
own, and the whole session is killed."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


def _child(work: Callable[[], object]) -> None:
    os.setsid()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = 0
    try:
        work()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code = 3
    os._exit(code)


def start(work: Callable[[], object]) -> int:
    """Fork a child that runs ``work()`` and exits; returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _child(work)
    return pid


def run_timed(work: Callable[[], object]) -> tuple[int, float]:
    """Run ``work`` in a child to the end: (exit code, seconds)."""
    began = time.monotonic()
    _, status = os.waitpid(start(work), 0)
    return os.waitstatus_to_exitcode(status), time.monotonic() - began


def kill_after(work: Callable[[], object], seconds: float) -> bool:
    """Run ``work`` in a child and kill -9 its session after ``seconds``; True when it was
    still running then (and so was interrupted)."""
    pid = start(work)
    time.sleep(seconds)
    done, _ = os.waitpid(pid, os.WNOHANG)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if not done:
        os.waitpid(pid, 0)
    return not done


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("pragma integrity_check").fetchone()[0]
    finally:
        con.close()


def counts(db: Path, queries: dict[str, str]) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return {name: con.execute(sql).fetchone()[0] for name, sql in queries.items()}
    finally:
        con.close()


def catalogue(root: Path) -> Path:
    """The SQLite catalogue of the workspace in ``root``."""
    return root / ".datatool" / "catalogue.sqlite"


def kill_and_rerun(
    base: Path,
    command: Callable[[Path], Callable[[], object]],
    queries: dict[str, str],
    scratch: Path,
    seed: int,
    check_partial: Callable[[dict[str, int]], None] | None = None,
    moments: int = 20,
) -> dict[str, int]:
    """Run ``command(root)`` to the end on a copy of the workspace ``base``; then, on a fresh
    copy each time, kill it at ``moments`` seeded moments within that run's duration, check
    the catalogue's integrity (and ``check_partial`` on its counts), run it again to the end
    and require the uninterrupted run's counts. Returns those counts."""
    ref = shutil.copytree(base, scratch / "ref")
    code, seconds = run_timed(command(ref))
    assert code == 0
    expected = counts(catalogue(ref), queries)
    rng = random.Random(seed)
    for k in range(moments):
        root = shutil.copytree(base, scratch / f"kill{k}")
        kill_after(command(root), rng.uniform(0.0, seconds))
        assert integrity(catalogue(root)) == "ok"
        if check_partial is not None:
            check_partial(counts(catalogue(root), queries))
        command(root)()
        assert counts(catalogue(root), queries) == expected, k
        shutil.rmtree(root)
    return expected
