"""Agreement and consensus on a catalogue that holds a cine beside stills: a real multi-frame
DICOM (4 frames, written from a demo still) ingested with the demo's 12 stills, both raters'
labels of every frame stored through the annotation API. Frames are images like stills;
``--sample`` draws images, ``--per-cine`` at most one frame per loop; the counts of cine
frames in the report, the saved sample's reuse, and the study report's agreement section."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.analysis.agreement import run_agreement
from datatool.analysis.consensus import fuse, make_consensus
from datatool.cli import app
from datatool.core.catalogue import AgreementSample, Annotation, Rater
from datatool.core.errors import DatatoolError
from datatool.report.stored import agreement_section
from tests.cine_util import cine_ws, frames_of, stills_of
from tests.qa_util import V, clean, relabel

FRAMES = 4
STILLS = 12


def wobbly(rater: str, side: str, frame: int) -> np.ndarray:
    """Frames whose two raters' nerves differ by a frame-dependent amount (so each frame's
    Dice is its own number)."""
    return clean(side, frame, 2.0 * frame + (1.0 + frame if rater == "B" else 0.0))


@pytest.fixture()
def cine(ws, demo_dir, tmp_path):
    return cine_ws(ws, demo_dir, tmp_path, FRAMES, wobbly)


def test_every_frame_is_an_image_of_the_agreement(cine, tmp_path):
    report = run_agreement(cine, plots=False, surface=False)
    assert report.sample.images == STILLS + FRAMES
    assert (report.cine_frames, report.cines, report.per_cine) == (FRAMES, 1, False)
    for r in report.structures:
        assert r.icc.n_targets == STILLS + FRAMES
    assert any(
        n.startswith(f"{FRAMES} of {STILLS + FRAMES} images are frames of 1 cine loop")
        and "not independent ratings" in n
        for n in report.notes
    )
    # a frame's Dice is computed on its own masks, as a still's: the nerve over all images
    value = V["sciatic nerve"]
    dices = []
    with cine.session() as s:
        latest: dict[tuple[int, str], str] = {}
        for ann in s.scalars(select(Annotation).order_by(Annotation.version)):
            latest[(ann.image_id, ann.rater.name)] = ann.mask_hash
    for image_id in sorted({i for i, _ in latest}):
        a = cine.store.get_array(latest[(image_id, "A")]) == value
        b = cine.store.get_array(latest[(image_id, "B")]) == value
        dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    nerve = next(r for r in report.structures if r.structure == "sciatic nerve")
    assert nerve.dice["mean"] == pytest.approx(np.mean(dices)) and nerve.dice["n"] == 16
    assert len(set(np.round(dices[-FRAMES:], 6))) == FRAMES  # the frames differ


def test_sample_draws_images_and_per_cine_at_most_one_frame_per_loop(cine):
    # every image: 16, of which 4 frames; --per-cine: 12 stills and one frame
    whole = run_agreement(cine, sample=STILLS + FRAMES, plots=False, surface=False)
    assert (whole.sample.images, whole.cine_frames) == (STILLS + FRAMES, FRAMES)
    one = run_agreement(cine, per_cine=True, plots=False, surface=False)
    assert (one.sample.images, one.cine_frames, one.cines, one.per_cine) == (13, 1, 1, True)
    assert any("at most one frame per cine loop" in n for n in one.notes)
    with pytest.raises(DatatoolError, match=r"more than the 13 images \(a cine loop counted"):
        run_agreement(cine, sample=14, per_cine=True, plots=False)
    # over seeds, a per-cine sample never holds two frames; a plain one often does
    ids = set(frames_of(cine)[0])
    most = {True: 0, False: 0}
    for seed in range(12):
        for per_cine in (True, False):
            r = run_agreement(cine, sample=8, seed=seed, per_cine=per_cine, plots=False,
                              surface=False)  # fmt: skip
            with cine.session() as s:
                items = {it.image_id for it in s.get(AgreementSample, r.sample.id).items}
            assert len(items) == 8 and r.cine_frames == len(items & ids)
            most[per_cine] = max(most[per_cine], r.cine_frames)
    assert most == {True: 1, False: most[False]} and most[False] >= 2


def test_a_per_cine_sample_reproduces_and_is_new_when_labels_change(cine):
    first = run_agreement(cine, sample=6, seed=5, per_cine=True, plots=False, surface=False)
    again = run_agreement(cine, sample=6, seed=5, per_cine=True, plots=False, surface=False)
    assert again.sample.reused and again.sample.id == first.sample.id
    assert again.structures == first.structures
    # the plain sample of the same size and seed is another sample
    plain = run_agreement(cine, sample=6, seed=5, plots=False, surface=False)
    assert not plain.sample.reused and plain.sample.id != first.sample.id
    # redrawn from scratch with the seed: the same images
    redrawn = run_agreement(cine, sample=6, seed=5, per_cine=True, resample=True, plots=False,
                            surface=False)  # fmt: skip
    with cine.session() as s:

        def items(sample_id: int) -> list[int]:
            return [it.image_id for it in s.get(AgreementSample, sample_id).items]

        assert redrawn.sample.id != first.sample.id
        assert items(redrawn.sample.id) == items(first.sample.id)
    # every image, one frame per loop: reused while the labels stay, new when one changes
    whole = run_agreement(cine, per_cine=True, plots=False, surface=False)
    assert run_agreement(cine, per_cine=True, plots=False, surface=False).sample.reused
    image_id, side = stills_of(cine)[0]
    relabel(cine, "A", image_id, clean(side, 3, 5.0))
    changed = run_agreement(cine, per_cine=True, plots=False, surface=False)
    assert not changed.sample.reused and changed.sample.id != whole.sample.id
    assert (changed.sample.images, changed.cine_frames) == (13, 1)


def test_consensus_fuses_each_frame_like_a_still(cine):
    report = make_consensus(cine, "majority")
    assert report.images == STILLS + FRAMES
    ids, _ = frames_of(cine)
    with cine.session() as s:
        target = s.scalar(select(Rater).where(Rater.name == "consensus:majority"))
        for image_id in ids:
            anns = {
                a.rater.name: a
                for a in s.scalars(select(Annotation).where(Annotation.image_id == image_id))
            }
            masks = [cine.store.get_array(anns[r].mask_hash) for r in ("A", "B")]
            fused = cine.store.get_array(anns[target.name].mask_hash)
            assert np.array_equal(fused, fuse(masks, "majority"))


def test_agreement_cli_and_the_study_reports_section_count_the_frames(cine):
    env = {"COLUMNS": "200"}
    res = CliRunner().invoke(app, ["agreement", "--help"], env=env)
    assert "--per-cine" in res.output and "not independent" in res.output
    res = CliRunner().invoke(
        app, ["agreement", "--no-surface", "--workspace", str(cine.root)], env=env
    )
    assert res.exit_code == 0, res.output
    assert f"{FRAMES} frames of 1 cine loop(s)" in res.output
    assert "not independent ratings" in res.output
    res = CliRunner().invoke(
        app, ["agreement", "--per-cine", "--sample", "5", "--workspace", str(cine.root)], env=env
    )
    assert res.exit_code == 0 and "at most one frame per cine loop" in res.output, res.output
    missing, figures, notes = [], [], []  # type: ignore[var-annotated]
    with cine.session() as s:
        latest = s.scalar(select(AgreementSample.id).order_by(AgreementSample.id.desc()))
    section = agreement_section(cine, latest, missing, figures, notes)
    assert section is not None and section.command.endswith("--per-cine")
    first = agreement_section(cine, latest - 1, missing, figures, notes)
    assert first is not None and any(
        f"{FRAMES} of {STILLS + FRAMES} images are frames" in n and "not independent" in n
        for n in first.notes
    )
