"""News from Label Studio: annotation events its webhooks sent to datatool's ML backend
(``datatool serve``), kept until ``datatool sync labelstudio`` has read the project.

One small JSON file in the workspace (``.datatool/labelstudio-news.json``): per Label Studio
project id, how many events of each action arrived (the action escaped to one printable line)
and when the first and last came. Nothing
of the event's content (task data, annotations, users) is kept. Writers take a lock file and
replace the file atomically, so the server and a sync can run at once.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datatool.core.atomic import write_text_atomic

NEWS_FILE = "labelstudio-news.json"
MAX_ACTION_LEN = 64


@dataclass
class ProjectNews:
    """Events heard for one project since its last sync."""

    project_id: int
    events: int
    actions: dict[str, int]  # action -> count
    first: str  # ISO times (UTC, seconds)
    last: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


@contextmanager
def _locked(meta_dir: Path) -> Iterator[dict]:
    """The news, read under an exclusive lock and written back when the block ends."""
    path = Path(meta_dir) / NEWS_FILE
    with open(Path(meta_dir) / (NEWS_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def escape_action(action: str) -> str:
    """An event's action as one printable line, safe to log: its first ``MAX_ACTION_LEN``
    characters, with backslashes, control characters (newline, ESC, NUL...) and other
    unprintable ones written as Python escapes (``\\n``, ``\\x1b``, ``\\x00``)."""
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in str(action)[:MAX_ACTION_LEN]
    )


def record_event(meta_dir: Path, project_id: int, action: str) -> None:
    """Count one event of ``action`` (escaped: :func:`escape_action`) for a project."""
    action = escape_action(action)
    with _locked(meta_dir) as data:
        entry = data.setdefault(str(int(project_id)), {"actions": {}, "first": _now()})
        entry["actions"][action] = int(entry["actions"].get(action, 0)) + 1
        entry["last"] = _now()


def _as_news(key: str, entry: dict) -> ProjectNews:
    actions = {str(k): int(v) for k, v in (entry.get("actions") or {}).items()}
    return ProjectNews(
        int(key),
        sum(actions.values()),
        actions,
        str(entry.get("first", "")),
        str(entry.get("last", "")),
    )


def read_news(meta_dir: Path) -> list[ProjectNews]:
    """Every project with news, by project id."""
    with _locked(meta_dir) as data:
        return sorted(
            (_as_news(k, v) for k, v in data.items() if k.isdigit() and isinstance(v, dict)),
            key=lambda n: n.project_id,
        )


def take_news(meta_dir: Path, project_ids: Iterable[int]) -> list[ProjectNews]:
    """The news of these projects, removed from the file (they have been synced)."""
    wanted = {str(int(p)) for p in project_ids}
    with _locked(meta_dir) as data:
        taken = [(k, data.pop(k)) for k in sorted(wanted & set(data), key=int)]
    return [n for n in (_as_news(k, v) for k, v in taken if isinstance(v, dict)) if n.events]
