"""Where the listener's spool lies in a workspace, and how many acknowledged objects wait
there. Apart from :mod:`datatool.ingest.spool`, which brings the ingest pipeline and pydicom
(about half a second at a start) that ``datatool status`` does not need to count files."""

from __future__ import annotations

import os

from datatool.core.workspace import Workspace


class SpoolFolders:
    """The spool folders of one workspace: ``partial/`` (being received, never acknowledged)
    and ``incoming/`` (acknowledged, waiting to be ingested)."""

    def __init__(self, ws: Workspace):
        self.root = ws.meta_dir / "spool"
        self.partial = self.root / "partial"
        self.incoming = self.root / "incoming"


def pending_count(ws: Workspace) -> int:
    """How many acknowledged objects wait in the spool (for ``datatool status``); a name
    starting with a dot is a temporary file being written."""
    try:
        return sum(1 for e in os.scandir(SpoolFolders(ws).incoming) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0
