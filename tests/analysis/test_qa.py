"""The review queue (datatool.analysis.qa) on constructed labels: every check fires on its case
and not on a clean label, re-runs add no duplicates, a new version closes the old one's flags,
the ranking, resolving, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from datatool.analysis.qa import Thresholds, list_queue, resolve_flag, run_qa, write_report
from datatool.core.catalogue import AuditEntry, FlagReason, FlagStatus, Image, QAFlag
from datatool.core.errors import DatatoolError, UsageError
from datatool.labels.annotations import add_rater
from tests.qa_util import P, V, clean, clone, ellipse, flags, images_of, qa_ws, relabel

__all__ = ["qa_ws"]  # the fixture counts as used

R = FlagReason


def test_clean_labels_raise_no_flag(qa_ws):
    result = run_qa(qa_ws)
    assert result.labels == 24 and result.images == 12 and result.open == 0
    assert result.raters == ["A", "B"]
    assert any("no model checks" in n for n in result.notes)
    assert not flags(qa_ws)


def test_every_check_fires_on_its_case_and_only_there(qa_ws):
    imgs = images_of(qa_ws)
    cases = {}

    def case(k: int, rater: str, mask: np.ndarray, *expected: tuple[str, str]) -> None:
        image_id, _ = imgs[k]
        relabel(qa_ws, rater, image_id, mask)
        for structure, reason in expected:
            cases[(image_id, rater, structure, reason)] = True

    side = [s for _, s in imgs]
    # rater disagreement: B's nerve moved away (both labels flagged), B missed the artery
    m = clean(side[0], 0, 2.0)
    m[m == V["sciatic nerve"]] = 0
    ellipse(m, (362 if side[0] == "L" else 278) + 30, 262, 28, 11, V["sciatic nerve"])
    case(0, "B", m)
    cases[(imgs[0][0], "B", "sciatic nerve", "rater_disagreement")] = True
    cases[(imgs[0][0], "A", "sciatic nerve", "rater_disagreement")] = True
    m = clean(side[1], 1, 2.0)
    m[m == V["femoral artery"]] = 0
    case(1, "B", m)
    cases[(imgs[1][0], "B", "femoral artery", "rater_disagreement")] = True
    cases[(imgs[1][0], "A", "femoral artery", "rater_disagreement")] = True
    # swap: B labels the adductor magnus as the semitendinosus and back (both labels flagged)
    m = clean(side[2], 2, 2.0)
    am, st = m == V["adductor magnus"], m == V["semitendinosus"]
    m[am], m[st] = V["semitendinosus"], V["adductor magnus"]
    case(2, "B", m)
    for who in ("A", "B"):
        for structure in ("adductor magnus", "semitendinosus"):
            cases[(imgs[2][0], who, structure, "swap")] = True
    # shape: a second nerve piece; a hole in the femur; an artery on the blanked area's edge
    m = clean(side[3], 3)
    ellipse(m, 320, 420, 6, 4, V["sciatic nerve"])
    case(3, "A", m, ("sciatic nerve", "components"))
    m = clean(side[4], 4)
    ellipse(m, 240 if side[4] == "L" else 400, 235, 8, 6, 0)
    case(4, "A", m, ("femur", "holes"))
    m = clean(side[5], 5)
    m[m == V["femoral artery"]] = 0
    ellipse(m, 320, 52, 14, 10, V["femoral artery"])  # the region starts at row 48
    case(5, "A", m, ("femoral artery", "edge"), ("femoral artery", "rater_disagreement"))
    cases[(imgs[5][0], "B", "femoral artery", "rater_disagreement")] = True
    # size: a femur three times the usual area (its outline kept, so only the size is odd)
    m = clean(side[6], 6)
    m[m == V["femur"]] = 0
    ellipse(m, 240 if side[6] == "L" else 400, 235, 70, 50, V["femur"])
    case(6, "A", m, ("femur", "size"), ("femur", "rater_disagreement"))
    cases[(imgs[6][0], "B", "femur", "rater_disagreement")] = True
    # the femur drawn on the medial side in both raters' labels (they agree): every lateral
    # relation of the image reversed in every label, so the image looks mirrored (one flag)
    for who, shift in (("A", 0.0), ("B", 2.0)):
        m = clean(side[7], 7, shift)
        m[m == V["femur"]] = 0
        ellipse(m, (470 if side[7] == "L" else 170) + shift, 400, 40, 30, V["femur"])
        case(7, who, m, *([("whole image", "mirrored")] if who == "A" else []))
    # the artery below the nerve, in both raters' labels
    for who, shift in (("A", 0.0), ("B", 2.0)):
        m = clean(side[8], 8, shift)
        m[m == V["femoral artery"]] = 0
        ellipse(m, (380 if side[8] == "L" else 260) + shift, 300, 12, 12, V["femoral artery"])
        case(8, who, m, ("femoral artery", "anatomy"))

    run_qa(qa_ws)
    found = flags(qa_ws)
    assert found == set(cases), (sorted(found - set(cases)), sorted(set(cases) - found))
    clean_images = {i for i, _ in imgs[9:]}
    assert not {f for f in found if f[0] in clean_images}
    with qa_ws.session() as s:
        hole = s.scalar(select(QAFlag).where(QAFlag.reason == "holes"))
        assert hole.evidence["holes"] == 1 and hole.evidence["hole_px"] > 100
        size = s.scalar(select(QAFlag).where(QAFlag.reason == "size"))
        assert size.evidence["unit"] == "mm2" and size.evidence["robust_z"] > 3.5
        anatomy = {
            f.evidence["relation"]
            for f in s.scalars(select(QAFlag).where(QAFlag.reason == "anatomy"))
        }
        assert anatomy == {"femoral artery superficial to sciatic nerve"}
        mirrored = s.scalar(select(QAFlag).where(QAFlag.reason == "mirrored"))
        assert mirrored.evidence["relations"] == ["femur lateral to sciatic nerve"]
        assert mirrored.evidence["labels"] == 2 and mirrored.evidence["convention"] == "protocol"


def test_thresholds_move_the_rater_check(qa_ws):
    image_id, side = images_of(qa_ws)[0]
    m = clean(side, 0, 2.0)
    m[m == V["sciatic nerve"]] = 0
    ellipse(m, (362 if side == "L" else 278) + 12, 262, 28, 11, V["sciatic nerve"])  # Dice ~0.6
    relabel(qa_ws, "B", image_id, m)
    run_qa(qa_ws, thresholds=Thresholds(rater_dice_below=0.3, pair_z_above=100))
    assert not flags(qa_ws)
    # Dice lets it pass at 0.3, but the centroids lie 3 mm apart where the other pairs of the
    # workspace lie 0.5 mm apart: a pair outlier
    run_qa(qa_ws, thresholds=Thresholds(rater_dice_below=0.3))
    q = list_queue(qa_ws)
    assert {(it.rater, it.reason.value) for it in q.items} == {
        ("A", "rater_disagreement"),
        ("B", "rater_disagreement"),
    }
    assert all(it.evidence["offset_z"] > 2.0 and it.evidence["dice"] > 0.3 for it in q.items)
    assert "centroids" in q.items[0].summary and q.items[0].priority == 1
    run_qa(qa_ws)  # the default, 0.7
    assert {f[3] for f in flags(qa_ws)} == {"rater_disagreement"}
    assert all("offset_z" not in it.evidence for it in list_queue(qa_ws).items)
    with pytest.raises(UsageError, match="rater-dice-below"):
        run_qa(qa_ws, thresholds=Thresholds(rater_dice_below=1.5))


def test_rerunning_adds_no_duplicate_and_a_new_version_closes_the_old_flags(qa_ws):
    image_id, side = images_of(qa_ws)[1]
    m = clean(side, 1, 2.0)
    m[m == V["femoral artery"]] = 0
    relabel(qa_ws, "B", image_id, m)
    first = run_qa(qa_ws)
    again = run_qa(qa_ws)
    assert first.open == again.open == 2
    by = {c.reason: c for c in again.reasons}
    assert by[R.rater_disagreement].found == 2 and by[R.rater_disagreement].new == 0
    with qa_ws.session() as s:
        assert s.query(QAFlag).count() == 2
    # B draws the artery again: a new version; its old flag is closed at once
    relabel(qa_ws, "B", image_id, clean(side, 1, 2.0))
    with qa_ws.session() as s:
        statuses = {f.annotation.rater.name: f.status for f in s.scalars(select(QAFlag))}
        assert statuses == {"B": "superseded", "A": "open"}
        audit = s.scalar(
            select(AuditEntry).where(AuditEntry.action == "flags closed by a new label version")
        )
        assert audit is not None and len(audit.details["flags"]) == 1
    # A's flag was about the same disagreement: the next check no longer finds it
    third = run_qa(qa_ws)
    assert third.open == 0
    assert {c.reason: c.cleared for c in third.reasons}[R.rater_disagreement] == 1
    assert flags(qa_ws, FlagStatus.cleared) == {
        (image_id, "A", "femoral artery", "rater_disagreement")
    }
    # B misses it again: A's flag comes back (reopened, the same row), B's new version is flagged
    relabel(qa_ws, "B", image_id, m)
    fourth = run_qa(qa_ws)
    by = {c.reason: c for c in fourth.reasons}
    assert by[R.rater_disagreement].reopened == 1 and by[R.rater_disagreement].new == 1
    with qa_ws.session() as s:
        assert s.query(QAFlag).count() == 3


def test_a_resolved_flag_stays_closed_and_the_queue_is_ranked(qa_ws):
    imgs = images_of(qa_ws)
    image_id, side = imgs[0]
    m = clean(side, 0, 2.0)  # B: a slightly smaller nerve (Dice ~0.6) and no artery
    m[m == V["sciatic nerve"]] = 0
    ellipse(m, (362 if side == "L" else 278), 262, 16, 8, V["sciatic nerve"])
    m[m == V["femoral artery"]] = 0
    relabel(qa_ws, "B", image_id, m)
    run_qa(qa_ws)
    q = list_queue(qa_ws)
    assert [it.rank for it in q.items] == [1, 2, 3, 4]
    severities = [it.severity for it in q.items]
    assert severities == sorted(severities, reverse=True)
    assert {it.structure for it in q.items[:2]} == {"femoral artery"} and severities[0] == 1.0
    assert 0 < severities[-1] < 1
    assert "absent here" in {it.rater: it.summary for it in q.items[:2]}["B"]
    assert list_queue(qa_ws, raters=["B"]).total == 2
    assert list_queue(qa_ws, reasons=["swap"]).total == 0
    assert len(list_queue(qa_ws, limit=1).items) == 1 and list_queue(qa_ws, limit=1).total == 4
    worst = q.items[0]
    done = resolve_flag(qa_ws, worst.flag, "checked the cine loop: artery out of plane", "accepted")
    assert done.status == FlagStatus.accepted and done.resolved_by
    with pytest.raises(DatatoolError, match="only open flags"):
        resolve_flag(qa_ws, worst.flag, "again", "fixed")
    with pytest.raises(UsageError, match="note"):
        resolve_flag(qa_ws, q.items[1].flag, "  ")
    with pytest.raises(UsageError, match="no flag"):
        resolve_flag(qa_ws, 999, "x")
    again = run_qa(qa_ws)  # found again on the same label version: stays accepted
    assert {c.reason: c.kept_closed for c in again.reasons}[R.rater_disagreement] == 1
    assert list_queue(qa_ws).total == 3
    every = list_queue(qa_ws, status=None)
    assert every.total == 4 and {it.status for it in every.items} == {"open", "accepted"}
    with qa_ws.session() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.command == "qa resolve"))
        assert entry.details["flag"] == worst.flag and entry.details["status"] == "accepted"
        assert "cine" not in json.dumps(entry.details)  # the note stays with the flag


def test_only_the_raters_asked_for_are_checked(qa_ws):
    image_id, side = images_of(qa_ws)[1]
    m = clean(side, 1, 2.0)
    m[m == V["femoral artery"]] = 0
    relabel(qa_ws, "B", image_id, m)
    result = run_qa(qa_ws, raters=["B"])
    assert result.raters == ["B"] and result.labels == 12
    assert {f[1] for f in flags(qa_ws)} == {"B"}
    with pytest.raises(UsageError, match="not registered"):
        run_qa(qa_ws, raters=["nobody"])
    with pytest.raises(UsageError, match="no run 7"):
        run_qa(qa_ws, run=7)


def test_the_report_writes_the_queue_and_thumbnails(qa_ws, tmp_path):
    image_id, side = images_of(qa_ws)[2]
    m = clean(side, 2, 2.0)
    am, st = m == V["adductor magnus"], m == V["semitendinosus"]
    m[am], m[st] = V["semitendinosus"], V["adductor magnus"]
    relabel(qa_ws, "B", image_id, m)
    run_qa(qa_ws)
    report = write_report(qa_ws, tmp_path / "r", top=2)
    lines = (tmp_path / "r" / "queue.csv").read_text().splitlines()
    assert len(lines) == 1 + report.items == 5 and lines[0].startswith("rank,flag,image")
    assert len(report.thumbnails) == 2
    page = (tmp_path / "r" / "index.html").read_text()
    for png in report.thumbnails:
        assert png.endswith(".png") and (tmp_path / "r" / "thumbnails").is_dir()
        assert png.rsplit("/", 1)[1] in page
    from PIL import Image as PILImage

    with PILImage.open(report.thumbnails[0]) as im:
        assert im.size[0] > 600  # three panels


def test_queue_csv_escapes_a_cell_a_spreadsheet_would_run(qa_ws, tmp_path):
    """A rater named like a formula reaches queue.csv as text (a leading quote), through
    core.csvcells; the other cells stay as they were."""
    import csv

    name = "=SUM(1+1)*cmd"
    add_rater(qa_ws, name)
    image_id, side = images_of(qa_ws)[0]
    relabel(
        qa_ws, name, image_id, np.where(clean(side, 0) == V["femoral artery"], 0, clean(side, 0))
    )
    run_qa(qa_ws)
    write_report(qa_ws, tmp_path / "r", top=0)
    with open(tmp_path / "r" / "queue.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mine = [r for r in rows if r["rater"].endswith(name)]
    assert mine and all(r["rater"] == "'" + name for r in mine)
    assert all(not r["rater"].startswith("=") for r in rows)
    assert {r["reason"] for r in mine} >= {"rater_disagreement"}


def test_labels_are_compared_with_the_runs_drafts(trained, tmp_path):
    """The run's drafts here are constructed (a 3-epoch model drafts little), stored as its
    whole-image drafts: qa must use them and predict nothing. The labels checked are a
    consensus's, so that only the model is compared with them."""
    from datatool.labels.annotations import store_annotations
    from datatool.labels.drafts import draft_ref, model_rater, model_rater_name
    from datatool.learning.inference import ensure_drafts
    from datatool.learning.training import run_summary

    source, run = trained
    C = "consensus:constructed"
    ws = clone(source, tmp_path / "ws")
    checkpoint = run_summary(ws, run).best_checkpoint
    imgs = images_of(ws)
    add_rater(ws, C, kind="consensus")
    drafts = {}
    for k, (image_id, side) in enumerate(imgs):
        drafts[image_id] = clean(side, k)
        relabel(ws, C, image_id, clean(side, k, 2.0))
    missing, swapped, extra = imgs[0][0], imgs[1][0], imgs[2][0]
    m = clean(imgs[0][1], 0, 2.0)
    m[m == V["sciatic nerve"]] = 0  # C misses the nerve the model sees
    relabel(ws, C, missing, m)
    m = clean(imgs[1][1], 1, 2.0)
    am, st = m == V["adductor magnus"], m == V["semitendinosus"]
    m[am], m[st] = V["semitendinosus"], V["adductor magnus"]
    relabel(ws, C, swapped, m)
    drafts[extra][drafts[extra] == V["femoral artery"]] = 0  # the model misses the artery
    drafts[imgs[3][0]][220:224, 100:104] = V["femoral artery"]  # 16 px: not "present"
    with ws.session() as s:
        rater = model_rater(s, run)
        images = {i.id: i for i in s.scalars(select(Image))}
        store_annotations(
            s, ws.store, rater,
            [(images[i], d, model_rater_name(run), draft_ref(run, checkpoint))
             for i, d in drafts.items()],
            P,
        )  # fmt: skip
    result = run_qa(ws, run=run, raters=[C], drafts=ensure_drafts)
    assert (result.drafts_predicted, result.drafts_reused) == (0, len(imgs))
    assert flags(ws) == {
        (missing, C, "sciatic nerve", "model_disagreement"),
        (swapped, C, "adductor magnus", "swap"),
        (swapped, C, "semitendinosus", "swap"),
        (extra, C, "femoral artery", "model_disagreement"),
    }
    q = list_queue(ws, reasons=["model_disagreement"])
    summaries = {it.image_id: it.summary for it in q.items}
    assert summaries[missing].startswith("absent here") and "model:" in summaries[missing]
    assert "absent in model" in summaries[extra]
    assert all(it.run == run for it in q.items)
    swap = list_queue(ws, reasons=["swap"]).items[0]
    assert swap.evidence["source"] == model_rater_name(run) and swap.evidence["lies_on"]
    # without the function that makes drafts, the stored ones are used all the same
    again = run_qa(ws, run=run, raters=[C])
    assert again.drafts_reused == len(imgs) and again.open == 4
    assert {c.reason: c.found for c in again.reasons}[R.model_disagreement] == 2


# --------------------------------------------------------------------------- issue 21


def test_a_label_votes_for_the_side_its_relations_put_the_lateral_side_on():
    from datatool.analysis.qa.convention import label_vote, vote
    from datatool.core.protocol import Relation

    lateral = Relation("femur", "lateral to", "sciatic nerve")
    medial = Relation("femur", "medial to", "sciatic nerve")
    assert vote(lateral, 100.0, 300.0) == "left" and vote(lateral, 300.0, 100.0) == "right"
    assert vote(medial, 100.0, 300.0) == "right"
    assert vote(lateral, 200.0, 200.4) is None  # the same column: no vote
    assert label_vote(["left", "left", "right"]) == "left"
    assert label_vote(["left", "right"]) is None and label_vote([None]) is None


def test_the_convention_is_learned_per_series_device_and_leg_with_the_protocol_as_prior():
    from datatool.analysis.qa.convention import Convention, Where

    device = ("acme", "scanner 1")
    # 30 labels of left legs in five series show the lateral side on the image's right (the
    # protocol says left); series 9 (an operator of its own) shows it on the left
    votes = [(Where("L", 1 + k % 5, device), "right") for k in range(30)]
    votes += [(Where("L", 9, device), "left")] * 6
    c = Convention.learn(P, votes)
    assert (
        c.for_image(Where("L", 1, device)).lateral_side,
        c.for_image(Where("L", 1, device)).source,
    ) == ("right", "series")
    assert c.for_image(Where("L", 9, device)).lateral_side == "left"  # its own series
    other = c.for_image(Where("L", 42, device))  # a series without votes: the device and leg
    assert (other.lateral_side, other.source, other.votes) == ("right", "device", 36)
    assert c.for_image(Where("L", 42, ("other", "x"))).source == "workspace"
    assert c.for_image(Where("R", 42, device)).source == "protocol"  # no votes for right legs
    assert c.for_image(Where("R", 42, device)).lateral_side == "right"
    assert c.for_image(Where(None, 1, device)).lateral_side is None
    note = c.protocol_note()
    assert note is not None and "'femur lateral to sciatic nerve'" in note
    assert "83 % of 36 labels of L legs show it on the image's right, not the left" in note
    assert "lateral_side: {L: right, R: right}" in note and P.name in note
    series = c.series_note({i: Where("L", i, device) for i in (1, 9)})
    assert series is not None and series.startswith("1 series (1 images)")
    # fewer than 20 votes: the protocol's prior
    few = Convention.learn(P, [(Where("L", k, device), "right") for k in range(19)])
    assert few.for_image(Where("L", 100, device)).source == "protocol"
    assert few.for_image(Where("L", 100, device)).lateral_side == "left"
    assert few.protocol_note() is None


def _mirror_all(ws, raters: dict[str, float]) -> None:
    """Every rater's label of every image drawn with the lateral side on the other edge."""
    for k, (image_id, side) in enumerate(images_of(ws)):
        for name, shift in raters.items():
            relabel(ws, name, image_id, clean("R" if side == "L" else "L", k, shift))


def test_a_workspace_mirrored_from_the_protocol_says_so_once_and_flags_one_odd_image(qa_ws):
    raters = {"A": 0.0, "B": 2.0, "C": 1.0, "D": 3.0}
    for name in ("C", "D"):
        add_rater(qa_ws, name)
    _mirror_all(qa_ws, raters)  # 48 labels, 24 per leg: the labels' convention is learned
    result = run_qa(qa_ws)
    assert result.labels == 48 and not flags(qa_ws)
    said = [n for n in result.notes if "lateral_side" in n]
    assert len(said) == 1 and "100 % of 24 labels of L legs" in said[0]
    assert "lateral_side: {L: right, R: left}" in said[0]
    # one image drawn the protocol's way by every rater: one flag, on the image
    image_id, side = images_of(qa_ws)[4]
    for name, shift in raters.items():
        relabel(qa_ws, name, image_id, clean(side, 4, shift))
    run_qa(qa_ws)
    q = list_queue(qa_ws)
    assert [(it.image_id, it.structure, it.reason.value) for it in q.items] == [
        (image_id, "whole image", "mirrored")
    ]
    assert q.items[0].evidence["labels"] == 4 and q.items[0].evidence["convention"] == "device"
    assert "image looks mirrored against this workspace's convention" in q.items[0].summary


def test_no_rule_floods_the_queue(qa_ws):
    imgs = images_of(qa_ws)
    for k, (image_id, side) in enumerate(imgs):  # every label of B has a hole in the femur
        m = clean(side, k, 2.0)
        ellipse(m, (240 if side == "L" else 400) + 2.0, 235, 8, 6, 0)
        relabel(qa_ws, "B", image_id, m)
    m = clean(imgs[3][1], 3)  # and one label of A a second nerve piece
    ellipse(m, 320, 420, 6, 4, V["sciatic nerve"])
    relabel(qa_ws, "A", imgs[3][0], m)
    result = run_qa(qa_ws)
    assert {(f[1], f[2], f[3]) for f in flags(qa_ws)} == {("A", "sciatic nerve", "components")}
    note = [n for n in result.notes if n.startswith("holes on femur")]
    assert note == [
        "holes on femur: would flag 12 of 24 labels (50 %, over the 25 % a rule may flag, "
        "--max-flag-share): a note about the rule, not flags; check its threshold or the protocol"
    ]
    run_qa(qa_ws, thresholds=Thresholds(max_flag_share=1.0))  # no cap: the flags
    assert len([f for f in flags(qa_ws) if f[3] == "holes"]) == 12


def test_the_queue_shows_what_a_reviewer_must_see_first(qa_ws):
    imgs = images_of(qa_ws)
    m = clean(imgs[0][1], 0)  # a femur five times its usual area: a large severity
    m[m == V["femur"]] = 0
    ellipse(m, 240 if imgs[0][1] == "L" else 400, 235, 90, 65, V["femur"])
    relabel(qa_ws, "A", imgs[0][0], m)
    m = clean(imgs[1][1], 1, 2.0)  # B left out the artery: severity 1, but seen first
    m[m == V["femoral artery"]] = 0
    relabel(qa_ws, "B", imgs[1][0], m)
    run_qa(qa_ws)
    items = list_queue(qa_ws).items
    size = next(it for it in items if it.reason == R.size)
    assert size.severity > 1.0 and size.priority == 2
    head = [(it.image_id, it.structure, it.priority) for it in items[:2]]
    assert head == [(imgs[1][0], "femoral artery", 0)] * 2
    assert [it.priority for it in items] == sorted(it.priority for it in items)


def test_a_label_of_another_image_of_the_patient_is_one_flag(qa_ws, tmp_path):
    imgs = images_of(qa_ws)
    # image 0 (a left leg) gets A's label of image 2 (the same patient's right leg)
    (x, side_x), (y, side_y) = imgs[0], imgs[2]
    assert (side_x, side_y) == ("L", "R")
    relabel(qa_ws, "A", x, clean(side_y, 2))
    run_qa(qa_ws)
    q = list_queue(qa_ws)
    on_x = [(it.rater, it.structure, it.reason.value) for it in q.items if it.image_id == x]
    assert ("A", "whole image", "wrong_image") in on_x
    assert not [f for f in on_x if f[2] in ("swap", "rater_disagreement")]  # explained by it
    wrong = next(it for it in q.items if it.reason == R.wrong_image)
    assert wrong.evidence["fits_image_id"] == y and wrong.evidence["fits_dice"] > 0.95
    assert wrong.priority == 0 and q.items[0].reason == R.wrong_image
    report = write_report(qa_ws, tmp_path / "r", top=1)  # a whole-image flag has a thumbnail
    assert (
        len(report.thumbnails) == 1 and "wrong_image" in (tmp_path / "r" / "queue.csv").read_text()
    )


def test_pair_measures_and_the_whole_label_dice_on_known_cases():
    import math

    from datatool.analysis.qa.inputs import _ImageInfo
    from datatool.analysis.qa.pairs import pair_measure, spread_of
    from datatool.analysis.qa.wrongimage import _own_dice, overall_dice

    calibrated = _ImageInfo(480, 640, (0.5, 0.5), None, "L")
    areas = (round(math.pi * 100), round(math.pi * 64))  # discs of radius 10 and 8 px
    m = pair_measure(calibrated, (0.0, 0.0), (3.0, 4.0), areas)
    assert m.unit == "mm" and m.offset == pytest.approx(2.5)  # 5 px at 0.5 mm
    assert m.radius_diff == pytest.approx(1.0, abs=0.01) and m.ratio == pytest.approx(
        100 / 64, abs=0.01
    )
    bare = pair_measure(
        _ImageInfo(480, 640, (None, None), None, "L"), (0.0, 0.0), (3.0, 4.0), areas
    )
    assert (bare.unit, bare.offset) == ("px", 5.0) and bare.radius_diff == pytest.approx(
        2.0, abs=0.01
    )
    spread = spread_of([0.1] * 12, floor=0.5)  # no spread at all: the floor
    assert spread is not None and spread.mad == 0.5 and spread_of([1.0] * 9, 0.5) is None
    a = np.array([[1, 1, 2, 0], [1, 1, 2, 0]], np.uint8)
    b = np.array([[1, 1, 0, 2], [1, 3, 0, 2]], np.uint8)
    assert overall_dice(a, b) == pytest.approx(2 * 3 / (6 + 6))  # 3 pixels agree
    assert overall_dice(np.zeros((2, 2)), np.zeros((2, 2))) is None
    assert _own_dice(a, b, swapped=()) == pytest.approx(2 * 3 / (6 + 5))  # 3: b holds it alone
    assert _own_dice(a, b, swapped=(1,)) == 0.0
