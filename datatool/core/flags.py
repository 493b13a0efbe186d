"""QA flags: why a label was flagged for review and where the flag stands.

Stored as strings in the catalogue's ``qa_flags`` table (``datatool.core.catalogue.QAFlag``).
A light module (no SQLAlchemy), so the command line can list the choices in ``--help``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any


class FlagReason(StrEnum):
    """What a check found in one structure of one label version (in the order that breaks
    ties in the queue: the most specific findings first)."""

    swap = "swap"  # lies on another label's different structure far more than on its own
    wrong_image = "wrong_image"  # the label fits another image of the patient far better
    model_disagreement = "model_disagreement"  # Dice with the run's draft low, or present/absent
    rater_disagreement = "rater_disagreement"  # Dice with another rater low, or present/absent
    mirrored = "mirrored"  # every label of the image reverses the workspace's lateral side
    anatomy = "anatomy"  # breaks a relation of the protocol (on centroids)
    size = "size"  # area far outside the structure's usual range in the workspace
    components = "components"  # more connected pieces than the protocol allows
    holes = "holes"  # a hole in a structure the protocol says is solid
    edge = "edge"  # touches the image edge or the blanked area, though it lies in the view
    temporal = "temporal"  # in a cine loop: missing, or jumps, against its neighbouring frames


class FlagStatus(StrEnum):
    open = "open"
    fixed = "fixed"  # a reviewer corrected the label
    accepted = "accepted"  # a reviewer found the label right as it is
    superseded = "superseded"  # closed by a new version of the label
    cleared = "cleared"  # a later check of the same label version no longer finds it


class Resolution(StrEnum):
    """How a reviewer closes a flag (``datatool qa resolve``)."""

    fixed = "fixed"
    accepted = "accepted"


def _mm2(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def describe(reason: FlagReason | str, ev: dict[str, Any]) -> str:
    """The evidence of a flag in words."""
    reason = FlagReason(reason)
    if reason in (FlagReason.model_disagreement, FlagReason.rater_disagreement):
        who = (
            f"model:{ev.get('run')}"
            if reason == FlagReason.model_disagreement
            else ev.get("other_rater")
        )
        other_px = ev.get("model_area_px", ev.get("other_area_px", 0))
        if not ev.get("area_px"):
            return f"absent here, {other_px} px in {who}'s label"
        if not other_px:
            return f"{ev['area_px']} px here, absent in {who}'s label"
        if "offset_z" in ev or "area_z" in ev:
            found = []
            if "offset_z" in ev:
                unit = "mm" if ev.get("offset_unit") == "mm" else "px"
                found.append(
                    f"centroids {ev['offset']:.1f} {unit} apart (robust z {ev['offset_z']:.1f})"
                )
            if "area_z" in ev:
                unit = "mm" if ev.get("offset_unit") == "mm" else "px"
                wider = "wider" if ev["area_ratio"] > 1 else "narrower"
                found.append(
                    f"outline {ev['radius_diff']:.1f} {unit} {wider} than {who}'s "
                    f"(robust z {ev['area_z']:.1f})"
                )
            return (
                f"{' and '.join(found)} over the workspace's rater pairs; "
                f"Dice {ev['dice']:.2f} with {who}"
            )
        return f"Dice {ev['dice']:.2f} with {who} (flagged below {ev['threshold']:.2f})"
    if reason == FlagReason.swap:
        return (
            f"{100 * ev['share_on_other']:.0f} % of it lies on {ev['source']}'s "
            f"{ev['lies_on']} ({100 * ev['share_on_own']:.0f} % on its own)"
        )
    if reason == FlagReason.wrong_image:
        return (
            f"fits {ev['fits_image']} (Dice {ev['fits_dice']:.2f}) better than the other "
            f"labels of its own image (Dice {ev['own_dice']:.2f}): a label of another image?"
        )
    if reason == FlagReason.mirrored:
        return (
            f"image looks mirrored against this workspace's convention: its {ev['labels']} "
            f"label(s) show the lateral side on the image's {ev['labels_show']}, its "
            f"{ev['convention']} convention on the {ev['lateral_side']}"
        )
    if reason == FlagReason.components:
        return (
            f"{ev['components']} pieces (at most {ev['max_components']}); "
            f"{ev['outside_largest_px']} px outside the largest"
        )
    if reason == FlagReason.holes:
        return f"{ev['holes']} hole(s), {ev['hole_px']} px"
    if reason == FlagReason.edge:
        return (
            f"{ev['touching_px']} px touch the edge of the {ev['view']} "
            f"({100 * min(1.0, ev['touching_px'] / max(ev['outline_px'], 1)):.0f} % of its outline)"
        )
    if reason == FlagReason.size:
        unit = "mm²" if ev["unit"] == "mm2" else "px"
        return (
            f"{_mm2(ev['area'])} {unit} against a median of {_mm2(ev['median'])} "
            f"(robust z {ev['robust_z']:.1f}, flagged beyond {ev['threshold']:.1f})"
        )
    if reason == FlagReason.temporal:
        return _temporal(ev)
    if reason == FlagReason.anatomy:
        by = (
            f"{ev['wrong_by_mm']:.1f} mm"
            if ev.get("wrong_by_mm") is not None
            else f"{ev['wrong_by_px']:.0f} px"
        )
        return f"breaks '{ev['relation']}' by {by} (centroids)"
    return json.dumps(ev)


def _temporal(ev: dict[str, Any]) -> str:
    """A temporal flag in words: which frame, and what jumps against its neighbours."""
    around = " and ".join(x for x in (ev.get("previous"), ev.get("next")) if x)
    if ev.get("missing"):
        return f"absent in {ev['frame']}, present in the loop's frames around it ({around})"
    unit = ev.get("unit", "mm")
    found = []
    if "moved" in ev:
        found.append(
            f"centroid {ev['moved']:.1f} {unit} off its neighbours' course (the loop's usual "
            f"step {ev['moved_usual']:.1f} {unit}, flagged beyond {ev['moved_threshold']:.1f})"
        )
    if "radius" in ev:
        found.append(
            f"equivalent radius {ev['radius']:.1f} {unit} off its neighbours' (usual step "
            f"{ev['radius_usual']:.1f} {unit}, flagged beyond {ev['radius_threshold']:.1f})"
        )
    return f"{ev['frame']}: {' and '.join(found)}; neighbours {around}"
