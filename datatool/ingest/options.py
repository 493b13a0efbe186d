"""The ingest's option values, apart from the code that reads DICOM: the CLI declares its
options with them without loading pydicom (about half a second at every start)."""

from __future__ import annotations

from enum import StrEnum


class FrameMode(StrEnum):
    """Which frames of a multi-frame cine become images."""

    auto = "auto"  # every frame up to AUTO_ALL_FRAMES_MAX frames, else the middle one
    all = "all"
    first = "first"
    middle = "middle"
