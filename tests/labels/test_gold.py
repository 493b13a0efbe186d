"""Gold-standard tasks (datatool/labels/gold.py) on a handmade study: which images are handed
out, what the catalogue records, re-runs, refusals; and that raters' gold labels stay out of
agreement samples and consensus unless asked."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from datatool.analysis.agreement import run_agreement
from datatool.analysis.consensus import make_consensus
from datatool.core.catalogue import AgreementSample, Annotation, AuditEntry, GoldTask
from datatool.core.errors import DatatoolError, UsageError
from datatool.labels.gold import GoldHanding, hand_gold
from tests.gold_util import femur_shifted, label, reference_mask, study


def _gold_rows(ws) -> list[tuple[str, int, int, str, int]]:
    with ws.session() as s:
        return [
            (g.rater.name, g.image_id, g.reference_annotation_id, g.tool, g.seed)
            for g in s.scalars(select(GoldTask).order_by(GoldTask.id))
        ]


def test_gold_is_drawn_by_seed_from_reference_images_new_to_the_rater(ws, tmp_path):
    ids = study(ws, tmp_path, 10)
    answers = {i: label(ws, "EXP", i, reference_mask()) for i in ids[:6]}  # the gold pool ...
    label(ws, "AN1", ids[0], reference_mask())  # ... less what AN1 labelled already
    ordinary = ids[6:]
    handed = hand_gold(ws, "AN1", 3, "EXP", 11, "itksnap", ordinary)
    pool = ids[1:6]
    assert len(handed.gold) == 3 and set(handed.gold) <= set(pool) and handed.new == 3
    assert handed.queue == sorted(ordinary + handed.gold) and handed.total == 3
    assert handed.reference == "EXP" and handed.seed == 11
    # what the catalogue records: rater, image, the reference version handed against, tool, seed
    assert _gold_rows(ws) == [("AN1", i, answers[i], "itksnap", 11) for i in handed.gold]
    with ws.session() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.command == "gold itksnap"))
        assert entry.details["images"] == handed.gold and entry.details["reference"] == "EXP"

    # a re-run hands nothing new and returns the same queue; a larger N adds the difference
    again = hand_gold(ws, "AN1", 3, "EXP", 99, "itksnap", ordinary)
    assert (again.gold, again.new, again.queue) == (handed.gold, 0, handed.queue)
    more = hand_gold(ws, "AN1", 4, "EXP", 11, "itksnap", ordinary)
    assert more.new == 1 and set(handed.gold) < set(more.gold) <= set(pool)
    assert len(_gold_rows(ws)) == 4

    # the same seed on the same candidates gives the same draw; another seed another one
    def draw(seed):
        with ws.session() as s:
            s.query(GoldTask).delete()
        return hand_gold(ws, "AN1", 3, "EXP", seed, "itksnap", ordinary).gold

    assert draw(11) == handed.gold
    assert len({tuple(draw(seed)) for seed in range(8)}) > 1


def test_without_images_the_ordinary_queue_is_what_the_reference_has_not_labelled(ws, tmp_path):
    ids = study(ws, tmp_path, 6)
    for i in ids[:3]:
        label(ws, "EXP", i, reference_mask())
    handed = hand_gold(ws, "AN1", 1, "EXP", 0, "labelstudio", None)
    (gold,) = handed.gold
    assert gold in ids[:3] and handed.queue == sorted([*ids[3:], gold])


def test_refusals_leave_nothing_recorded(ws, tmp_path):
    ids = study(ws, tmp_path, 4, raters=("EXP", "AN1", "AN2"))
    for i in ids[:2]:
        label(ws, "EXP", i, reference_mask())
    with pytest.raises(DatatoolError, match="--gold 3: only 2 more images"):
        hand_gold(ws, "AN1", 3, "EXP", 0, "itksnap", ids[2:])
    with pytest.raises(UsageError, match="no such rater"):
        hand_gold(ws, "AN1", 1, "consensus:staple", 0, "itksnap", ids[2:])
    with pytest.raises(UsageError, match="their own reference"):
        hand_gold(ws, "EXP", 1, "EXP", 0, "itksnap", ids[2:])
    with pytest.raises(DatatoolError, match="AN2 has no labels yet"):
        hand_gold(ws, "AN1", 1, "AN2", 0, "itksnap", ids[2:])
    with pytest.raises(UsageError, match="img999999"):
        hand_gold(ws, "AN1", 1, "EXP", 0, "itksnap", [999999])
    assert _gold_rows(ws) == []


def test_mixed_order_is_seeded_and_a_permutation():
    handed = GoldHanding("EXP", 3, [], [], 0, 0)
    items = list(range(20))
    once, twice = handed.mixed(items), handed.mixed(items)
    assert once == twice and sorted(once) == items and once != items


def _two_raters_and_gold(ws, tmp_path) -> list[int]:
    """A labels 6 images; B labels the first 3 as ordinary work and the last 3 as gold tasks
    against A (B's gold labels shift the femur by 2 px)."""
    ids = study(ws, tmp_path, 6, raters=("A", "B"))
    for i in ids:
        label(ws, "A", i, reference_mask())
    for i in ids[:3]:
        label(ws, "B", i, femur_shifted(1))
    handed = hand_gold(ws, "B", 3, "A", 0, "itksnap", [])
    assert handed.gold == ids[3:]
    for i in ids[3:]:
        label(ws, "B", i, femur_shifted(2))
    return ids


def test_gold_labels_stay_out_of_agreement_samples_unless_asked(ws, tmp_path):
    ids = _two_raters_and_gold(ws, tmp_path)
    plain = run_agreement(ws, raters=["A", "B"], plots=False, out_dir=tmp_path / "a1")
    assert plain.sample.images == 3
    with_gold = run_agreement(
        ws, raters=["A", "B"], plots=False, out_dir=tmp_path / "a2", include_gold=True
    )
    assert with_gold.sample.images == 6 and with_gold.sample.id != plain.sample.id
    assert (plain.include_gold, with_gold.include_gold) == (False, True)
    with ws.session() as s:
        samples = {
            sm.id: (sm.include_gold, [it.image_id for it in sm.items])
            for sm in s.scalars(select(AgreementSample))
        }
    assert samples == {plain.sample.id: (False, ids[:3]), with_gold.sample.id: (True, ids)}
    # the saved samples are reused each by its own choice
    assert run_agreement(ws, raters=["A", "B"], plots=False, out_dir=tmp_path / "a3").sample.id == (
        plain.sample.id
    )
    again = run_agreement(
        ws, raters=["A", "B"], plots=False, out_dir=tmp_path / "a4", include_gold=True
    )
    assert again.sample.id == with_gold.sample.id and again.sample.reused


def test_gold_labels_are_no_new_opinion_in_consensus_unless_asked(ws, tmp_path):
    ids = _two_raters_and_gold(ws, tmp_path)
    report = make_consensus(ws, "majority", ["A", "B"])
    assert (report.images, report.gold_left_out, report.skipped_too_few_raters) == (3, 3, 3)
    with ws.session() as s:
        fused = s.scalars(
            select(Annotation.image_id).where(Annotation.rater.has(name="consensus:majority"))
        ).all()
    assert sorted(fused) == ids[:3]
    assert make_consensus(ws, "majority", ["A", "B"]).new_versions == 0  # a re-run: no-op
    # a single rater's labels as the reference: B's gold answers are not among them
    assert make_consensus(ws, "rater:B").images == 3
    asked = make_consensus(ws, "majority", ["A", "B"], include_gold=True)
    assert (asked.images, asked.new_versions, asked.gold_left_out) == (6, 3, 0)
