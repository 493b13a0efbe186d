"""Temporal consistency of cine loops in ``datatool qa`` (analysis/qa/temporal.py): on a real
cine (a multi-frame DICOM written from a demo still, ingested beside the demo's stills) whose
frames both raters labelled, a smooth loop raises nothing; a nerve missed in one frame, two
muscles swapped in one frame and one frame drawn 30 px off flag that frame only; the lead's
demo cines; the export; the CLI. The numbers on plain sequences: test_qa_temporal_numbers.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.analysis.qa import Thresholds, list_queue, run_qa, write_report
from datatool.cli import app
from datatool.core.catalogue import FlagReason, FlagStatus, Image
from datatool.core.flags import describe
from tests.cine_util import cine_ws, frames_of, ingest_demo_with_cine_labels, smooth
from tests.qa_util import V, clean, flags, relabel

FRAMES = 5
BAD = 2  # the frame drawn wrong, in the middle of the loop
MUSCLES = {"adductor magnus", "semitendinosus"}
EVERY = set(V)


def temporal_flags(ws, status=FlagStatus.open) -> set[tuple[int, str, str]]:
    return {(i, r, s) for i, r, s, reason in flags(ws, status) if reason == "temporal"}


def nerve_missing(rater: str, side: str, frame: int) -> np.ndarray:
    m = smooth(rater, side, frame)
    if rater == "A" and frame == BAD:
        m[m == V["sciatic nerve"]] = 0
    return m


def muscles_swapped(rater: str, side: str, frame: int) -> np.ndarray:
    m = smooth(rater, side, frame)
    if rater == "A" and frame == BAD:
        am, st = m == V["adductor magnus"], m == V["semitendinosus"]
        m[am], m[st] = V["semitendinosus"], V["adductor magnus"]
    return m


def shifted(rater: str, side: str, frame: int) -> np.ndarray:
    if rater == "A" and frame == BAD:
        return clean(side, 0, 2.0 * frame + 30.0)
    return smooth(rater, side, frame)


def test_a_smooth_loop_raises_no_flag(ws, demo_dir, tmp_path):
    cine_ws(ws, demo_dir, tmp_path, FRAMES, smooth)
    result = run_qa(ws)
    assert result.labels == 2 * (12 + FRAMES) and result.images == 12 + FRAMES
    assert not flags(ws)  # no temporal flag, and frames of one loop are not wrong images
    counts = {c.reason: c for c in result.reasons}
    assert counts[FlagReason.temporal].found == 0


def test_a_nerve_missing_in_one_frame_flags_that_frame_only(ws, demo_dir, tmp_path):
    cine_ws(ws, demo_dir, tmp_path, FRAMES, nerve_missing)
    run_qa(ws)
    ids, _ = frames_of(ws)
    assert temporal_flags(ws) == {(ids[BAD], "A", "sciatic nerve")}
    item = next(it for it in list_queue(ws, reasons=["temporal"]).items)
    assert item.evidence["missing"] is True and item.priority == 0
    with ws.session() as s:
        cine = s.get(Image, ids[BAD]).source_file_id
    assert item.evidence["frame"] == f"img{ids[BAD]:06d} (cine file {cine}, frame 3 of 5)"
    assert item.evidence["previous"] == f"img{ids[BAD - 1]:06d} (cine file {cine}, frame 2 of 5)"
    text = describe("temporal", item.evidence)
    assert "absent in" in text and "frame 3 of 5" in text and "frame 4 of 5" in text
    assert item.evidence["previous_annotation"] != item.evidence["next_annotation"]
    # the export: the queue's row in words, a thumbnail with the frames before and after
    report = write_report(ws, tmp_path / "r", reasons=["temporal"])
    with open(report.csv, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["reason"], row["structure"], row["summary"]) == ("temporal", "sciatic nerve", text)
    page = Path(report.page).read_text()
    assert len(report.thumbnails) == 1 and "frames before and after" in page


def test_two_muscles_swapped_in_one_frame_are_flagged(ws, demo_dir, tmp_path):
    cine_ws(ws, demo_dir, tmp_path, FRAMES, muscles_swapped)
    run_qa(ws)
    ids, _ = frames_of(ws)
    assert temporal_flags(ws) == {(ids[BAD], "A", s) for s in MUSCLES}
    for it in list_queue(ws, reasons=["temporal"]).items:
        ev = it.evidence
        assert ev["unit"] == "mm" and ev["moved"] > 10 * ev["moved_usual"]
        assert ev["moved"] > ev["moved_threshold"] and it.priority == 1


def test_one_frame_30_px_off_is_flagged_and_a_higher_floor_clears_it(ws, demo_dir, tmp_path):
    cine_ws(ws, demo_dir, tmp_path, FRAMES, shifted)
    run_qa(ws)
    ids, _ = frames_of(ws)
    assert temporal_flags(ws) == {(ids[BAD], "A", s) for s in EVERY}
    moved = [it.evidence["moved"] for it in list_queue(ws, reasons=["temporal"]).items]
    with ws.session() as s:
        from datatool.core.catalogue import Image

        mm = s.get(Image, ids[BAD]).mm_per_px_x
    assert moved == pytest.approx([30 * mm] * len(EVERY), rel=0.02)
    # the same label versions checked with a floor above the shift: the flags are cleared
    again = run_qa(ws, thresholds=Thresholds(temporal_floor_mm=30 * mm + 1))
    assert {c.reason: c.cleared for c in again.reasons}[FlagReason.temporal] == len(EVERY)
    assert not temporal_flags(ws)
    # checked again at the default: reopened; a corrected frame closes them
    run_qa(ws)
    assert len(temporal_flags(ws)) == len(EVERY)
    relabel(ws, "A", ids[BAD], smooth("A", frames_of(ws)[1], BAD))
    run_qa(ws)
    assert not temporal_flags(ws)
    assert len(temporal_flags(ws, FlagStatus.superseded)) == len(EVERY)


def test_a_loop_of_two_labelled_frames_is_not_checked(ws, demo_dir, tmp_path):
    cine_ws(ws, demo_dir, tmp_path, 2, shifted)  # frame 2 does not exist: nothing to flag
    cine = frames_of(ws)[0]
    relabel(ws, "A", cine[1], clean(frames_of(ws)[1], 0, 60.0))
    run_qa(ws)
    assert not temporal_flags(ws)


def test_the_demos_loops_flag_nothing_and_a_planted_swap_is_found(ws, tmp_path):
    """The lead's demo cines (datatool demo-data --cines: the anatomy sweeps and breathes,
    each rater redraws every frame with its own wobble), without the planted rater errors:
    no temporal flag on either rater's loops; one frame with the muscles swapped is found."""
    from datatool.demo.generator import write_demo_dataset

    write_demo_dataset(tmp_path / "demo", patients=1, seed=3, images_per_side=(1, 1),
                       rater_errors=False, cines=2)  # fmt: skip
    loops = ingest_demo_with_cine_labels(ws, tmp_path / "demo")
    assert len(loops) == 2 and all(len(ids) == 8 for ids in loops.values())
    run_qa(ws)
    assert not temporal_flags(ws)
    ids = sorted(loops.values())[0]
    with ws.session() as s:
        from datatool.core.catalogue import Annotation, Rater

        ann = s.scalar(
            select(Annotation)
            .join(Rater)
            .where(Annotation.image_id == ids[4], Rater.name == "rater1")
        )
        m = ws.store.get_array(ann.mask_hash).copy()
    am, st = m == V["adductor magnus"], m == V["semitendinosus"]
    m[am], m[st] = V["semitendinosus"], V["adductor magnus"]
    relabel(ws, "rater1", ids[4], m)
    run_qa(ws)
    assert temporal_flags(ws) == {(ids[4], "rater1", s) for s in MUSCLES}


def test_qa_cli_names_the_temporal_rule(ws, demo_dir, tmp_path):
    env = {"COLUMNS": "200"}
    res = CliRunner().invoke(app, ["qa", "--help"], env=env)
    assert "temporal" in res.output and "--temporal-ratio" in res.output
    assert "--temporal-floor-mm" in res.output
    cine_ws(ws, demo_dir, tmp_path, FRAMES, nerve_missing)
    res = CliRunner().invoke(app, ["qa", "--workspace", str(ws.root)], env=env)
    assert res.exit_code == 0 and "temporal" in res.output, res.output
    res = CliRunner().invoke(
        app, ["qa", "list", "--reason", "temporal", "--workspace", str(ws.root)], env=env
    )
    assert res.exit_code == 0 and "sciatic nerve" in res.output, res.output
    res = CliRunner().invoke(app, ["qa", "--temporal-ratio", "0", "--workspace", str(ws.root)])
    assert res.exit_code == 2 and "--temporal-ratio" in res.output
