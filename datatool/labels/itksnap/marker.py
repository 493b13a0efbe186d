"""The marker file of an ITK-SNAP export (``datatool-export.json``): whose export a folder
is, and which model draft pre-filled which segmentation (its model version, run, mask hash in
the store and the hash of the file export wrote). Written by ``itksnap.export``, read by
``itksnap.sync``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datatool.core.atomic import write_text_atomic
from datatool.core.protocol import Protocol

EXPORT_MARKER = "datatool-export.json"
LABELS_FILE = "itksnap_labels.txt"


def read_marker(folder: Path) -> dict | None:
    """The export marker of ``folder``, or None."""
    try:
        data = json.loads((folder / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def marker_owner(folder: Path) -> str | None:
    """The rater whose export ``folder`` is (from its marker file), or None."""
    data = read_marker(folder)
    return data.get("rater") if data else None


def marker_drafts(folder: Path) -> dict[str, dict]:
    """Which model draft pre-filled which exported segmentation (image name -> its
    ``model_version``, ``run``, ``mask_hash`` and the ``file_sha256`` export wrote)."""
    drafts = (read_marker(folder) or {}).get("drafts")
    if not isinstance(drafts, dict):
        return {}
    return {str(k): v for k, v in drafts.items() if isinstance(v, dict) and v.get("model_version")}


def write_marker(out_dir: Path, rater: str, protocol: Protocol, drafts: dict[str, dict]) -> None:
    data: dict = {"format": 1, "tool": "itksnap", "rater": rater, "protocol": protocol.name}
    if drafts:
        data["drafts"] = dict(sorted(drafts.items()))
    write_text_atomic(out_dir / EXPORT_MARKER, json.dumps(data, indent=2) + "\n")


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
