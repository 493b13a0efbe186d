"""What to label next (datatool.assist.selection): the ranking on a model of known
uncertainty, the cap per patient, and the push of the list (with drafts) to Label Studio."""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from tests.ci import require
from tests.qa_util import clone

torch = require("torch")

from datatool.assist.selection import next_images, rank_next  # noqa: E402
from datatool.learning.data import GRAY_MEAN, GRAY_STD  # noqa: E402
from datatool.learning.inference import RunModel  # noqa: E402

# (brightness, patient) of the constructed images
IMAGES = [(200, "P0"), (40, "P0"), (120, "P0"), (80, "P1"), (160, "P1"), (20, "P1")]


class Brightness(torch.nn.Module):
    """A model of known uncertainty: every pixel gets the same logits, background's growing
    with the image's mean brightness, so the brighter the image, the surer the model (the
    mean predictive entropy falls as the brightness rises)."""

    def forward(self, x):
        raw = x[:, :1] * GRAY_STD + GRAY_MEAN  # back to gray in [0, 1] (padding is 0)
        b, _, h, w = x.shape
        logits = torch.zeros(b, 6, h, w)
        logits[:, 0] = 12.0 * raw.mean(dim=(1, 2, 3))[:, None, None]
        return logits


def known_model() -> RunModel:
    return RunModel(
        run_id=0,
        split="none",
        split_hash="0" * 64,
        preset="tiny",
        checkpoint="best",
        config={"resize": [48, 64]},
        network=Brightness(),
        device=torch.device("cpu"),
        values=np.array([0, *load_protocol().values], np.uint8),
    )


@pytest.fixture()
def uniform_ws(ws, demo_dir, tmp_path):
    """Six uniform grey images of two patients, made from a demo DICOM file."""
    template = next(
        ds
        for ds in (pydicom.dcmread(p) for p in sorted((demo_dir / "dicom").rglob("*.dcm")))
        if ds.PhotometricInterpretation == "MONOCHROME2"
        and not ds.file_meta.TransferSyntaxUID.is_compressed
    )
    folder = tmp_path / "uniform"
    folder.mkdir()
    for k, (level, patient) in enumerate(IMAGES):
        ds = template.copy()
        ds.PixelData = np.full((ds.Rows, ds.Columns), level, np.uint8).tobytes()
        ds.PatientID = patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        (folder / f"u{k}.dcm").write_bytes(buf.getvalue())
    report = ingest(ws, [folder], workers=0)
    assert report.ingested == len(IMAGES)
    add_rater(ws, "N")
    return ws


def _levels(ws) -> dict[int, int]:
    """image id -> its brightness (by the file it came from)."""
    with ws.session() as s:
        rows = s.execute(select(Image.id, Image.store_hash)).all()
    return {i: int(np.median(ws.store.get_array(h)[ws.store.get_array(h) > 0])) for i, h in rows}


def test_the_most_uncertain_images_come_first(uniform_ws):
    model = known_model()
    levels = _levels(uniform_ws)
    result = rank_next(uniform_ws, "N", model, n=6, per_patient=6)
    assert [levels[c.image_id] for c in result.images] == [20, 40, 80, 120, 160, 200]
    entropies = [c.entropy for c in result.images]
    assert entropies == sorted(entropies, reverse=True)
    assert 0 < entropies[-1] < entropies[0] < math.log(6)
    assert [c.rank for c in result.images] == [1, 2, 3, 4, 5, 6]
    assert result.unlabelled == 6 and not result.notes


def test_a_cap_per_patient_and_labelled_images_left_out(uniform_ws):
    model = known_model()
    levels = _levels(uniform_ws)
    by_level = {v: k for k, v in levels.items()}
    # the cap: at most one image of each patient, so only two can be listed
    capped = rank_next(uniform_ws, "N", model, n=3, per_patient=1)
    assert [levels[c.image_id] for c in capped.images] == [20, 40]
    assert len({c.patient for c in capped.images}) == 2
    assert "at most 1 per patient" in capped.notes[0]
    two = rank_next(uniform_ws, "N", model, n=5, per_patient=2)
    assert [levels[c.image_id] for c in two.images] == [20, 40, 80, 120]
    assert rank_next(uniform_ws, "N", model, n=10).per_patient == 1  # a tenth of --n
    # an image the rater labelled is not listed again
    with uniform_ws.session() as s:
        image = s.get(Image, by_level[20])
        mask = np.zeros((image.rows, image.cols), np.uint8)
        mask[100:120, 100:120] = 3
        store_annotation(s, uniform_ws.store, image, get_rater(s, "N"), mask, "itksnap", None,
                         load_protocol())  # fmt: skip
    after = rank_next(uniform_ws, "N", model, n=6, per_patient=6)
    assert [levels[c.image_id] for c in after.images] == [40, 80, 120, 160, 200]
    assert after.unlabelled == 5 and "only 5 unlabelled" in after.notes[0]
    with pytest.raises(UsageError):
        rank_next(uniform_ws, "N", model, n=0)
    with pytest.raises(UsageError, match="not registered"):
        rank_next(uniform_ws, "nobody", model)


def test_next_pushes_the_list_with_drafts(trained, tmp_path, labelstudio_server):
    srv = labelstudio_server
    source, run = trained
    ws = clone(source, tmp_path / "ws")
    add_rater(ws, "NEW")
    kwargs = {
        "url": srv.url,
        "token": srv.token,
        "local_root": srv.local_root,
        "device": "cpu",
        "per_patient": 2,  # the demo has three patients
    }
    result = next_images(ws, "NEW", n=4, run=run, push=True, drafts=True, **kwargs)
    assert len(result.images) == 4 and result.run == run
    assert result.tasks_created == 4 and result.predictions_added == 4
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=srv.url, api_key=srv.token)
    tasks = list(ls.tasks.list(project=result.pushed_project, fields="all"))
    assert len(tasks) == 4
    assert all(
        [p.model_version for p in t.predictions or []] == [result.model_version] for t in tasks
    )
    with ws.session() as s:
        row = s.scalar(
            select(LabelStudioProject).where(LabelStudioProject.project_id == result.pushed_project)
        )
        pushed = set(
            s.scalars(select(LabelStudioTask.image_id).where(LabelStudioTask.project_id == row.id))
        )
    assert pushed == {c.image_id for c in result.images}
    from datatool.core.catalogue import DraftHandout

    with ws.session() as s:  # the drafts shown are recorded as handed to NEW (labels.handouts)
        handed = s.execute(select(DraftHandout.image_id, DraftHandout.run_id, DraftHandout.via))
        assert set(handed) == {(c.image_id, run, "labelstudio") for c in result.images}
    again = next_images(ws, "NEW", n=4, run=run, push=True, drafts=True, **kwargs)
    assert (again.tasks_created, again.already_pushed, again.predictions_added) == (0, 4, 0)
    with pytest.raises(UsageError, match="--drafts goes with --push"):
        next_images(ws, "NEW", run=run, drafts=True)


class Refuses(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("drafted an image whose score was cached")


def test_a_cached_score_is_not_drafted_again(uniform_ws):
    """The scores of a checkpoint are kept (``.datatool/cache/next-run-N.json``): asked
    again, nothing is drafted and the list is the same; an image new since is drafted alone;
    another checkpoint of the run starts afresh."""
    from datatool.assist.entropy_cache import EntropyCache

    def cache(checkpoint: str = "c1") -> EntropyCache:
        return EntropyCache(uniform_ws.meta_dir, 0, checkpoint, True)

    first = rank_next(uniform_ws, "N", known_model(), n=6, per_patient=6, cache=cache())
    assert (uniform_ws.meta_dir / "cache" / "next-run-0.json").is_file()
    refuses = known_model()
    refuses.network = Refuses()
    again = rank_next(uniform_ws, "N", refuses, n=6, per_patient=6, cache=cache())
    assert again.images == first.images and again.unlabelled == 6
    # one score forgotten (as if its image were new): only that image is drafted
    partial = cache()
    lost = next(iter(partial.entries))
    del partial.entries[lost]
    partial.changed = True
    partial.save()
    counted = known_model()
    calls = []
    counted.network.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    third = rank_next(uniform_ws, "N", counted, n=6, per_patient=6, cache=cache())
    assert third.images == first.images and sum(calls) in (1, 2)  # 2: with its mirror (flips)
    assert lost in cache().entries
    with pytest.raises(AssertionError, match="cached"):  # another checkpoint: nothing known
        rank_next(uniform_ws, "N", refuses, n=6, per_patient=6, cache=cache("c2"))


def test_the_ranking_word_for_word(uniform_ws):
    """Every note and refusal in full, the fields of a listed image, the default cap (a tenth
    of --n, rounded up) and the model's names on the list."""
    model = known_model()
    levels = _levels(uniform_ws)
    ranked = rank_next(uniform_ws, "N", model, n=6, per_patient=6)
    first = ranked.images[0]
    assert (first.rank, levels[first.image_id], first.patient) == (1, 20, first.patient)
    assert first.image.endswith(str(first.image_id)) and first.patient.startswith("P-")
    assert (ranked.rater, ranked.run, ranked.per_patient) == ("N", 0, 6)
    capped = rank_next(uniform_ws, "N", model, n=3, per_patient=1)
    assert capped.notes == ["2 of 3 listed: at most 1 per patient (--per-patient)"]
    few = rank_next(uniform_ws, "N", model, n=7, per_patient=7)
    assert few.notes == ["6 of 7 listed: only 6 unlabelled images"]
    exactly = rank_next(uniform_ws, "N", model, n=6, per_patient=2)
    assert exactly.notes == ["4 of 6 listed: only 6 unlabelled images"]  # 6 <= 6
    assert rank_next(uniform_ws, "N", model, n=11).per_patient == 2  # ceil(11 / 10)
    assert rank_next(uniform_ws, "N", model, n=20).per_patient == 2
    assert rank_next(uniform_ws, "N", model, n=21).per_patient == 3
    assert rank_next(uniform_ws, "N", model, n=1).per_patient == 1
    one = rank_next(uniform_ws, "N", model, n=1, per_patient=1)
    assert [levels[c.image_id] for c in one.images] == [20] and one.notes == []
    refusals = [({"n": 0}, "--n must be 1 or more"),
                ({"n": 3, "per_patient": 0}, "--per-patient must be 1 or more")]  # fmt: skip
    for kwargs, message in refusals:
        with pytest.raises(UsageError) as caught:
            rank_next(uniform_ws, "N", model, **kwargs)
        assert str(caught.value) == message
    seen = []
    rank_next(uniform_ws, "N", model, n=2, progress=lambda i, total: seen.append((i, total)))
    assert seen[-1] == (6, 6)


def test_the_newest_finished_run_with_a_checkpoint_by_hand(ws):
    """Runs 1 and 2 done with a best checkpoint, 3 failed with one, 4 done without one: the
    newest finished run with a checkpoint is 2; none at all is refused in full."""
    from datatool.assist.selection import latest_done_run
    from datatool.core.catalogue import Run, Split
    from datatool.core.errors import DatatoolError

    with pytest.raises(DatatoolError) as caught:
        latest_done_run(ws)
    assert str(caught.value) == "no finished training run: train one first ('datatool train')"
    with ws.session() as s:
        split = Split(name="s", content_hash="0" * 64, seed=0, ratios="6:2:2", folds=0)
        s.add(split)
        s.flush()
        for status, best in [("done", "b1"), ("done", "b2"), ("failed", "b3"), ("done", None)]:
            run = Run(split_id=split.id, split_hash="0" * 64, preset="tiny", config={}, seed=0,
                      code_version="x", device="cpu", status=status)  # fmt: skip
            run.best_checkpoint = best
            s.add(run)
    assert latest_done_run(ws) == 2


def test_the_list_chosen_by_hand():
    """Five ranked images: by entropy, highest first, ties by image id (images 1 and 2 at
    0.9; their store hashes sort the other way), then 3 (0.7), 4 (0.5) and 5 (0.1). Patient
    A has images 2, 3 and 4, B image 1, C image 5."""
    from datatool.assist.selection import Candidate, choose

    scored = [
        (0.5, 0.4, (4, "h1", "P-A", "L")),
        (0.9, 0.8, (2, "h2", "P-A", None)),
        (0.9, 0.7, (1, "h9", "P-B", "R")),
        (0.7, 0.6, (3, "h3", "P-A", "L")),
        (0.1, 0.5, (5, "h0", "P-C", "R")),
    ]
    assert choose(scored, 5, 5) == [
        Candidate(1, "img000001", 1, "P-B", "R", 0.9, 0.7),
        Candidate(2, "img000002", 2, "P-A", None, 0.9, 0.8),
        Candidate(3, "img000003", 3, "P-A", "L", 0.7, 0.6),
        Candidate(4, "img000004", 4, "P-A", "L", 0.5, 0.4),
        Candidate(5, "img000005", 5, "P-C", "R", 0.1, 0.5),
    ]

    def ids(n, cap):
        listed = choose(scored, n, cap)
        assert [c.rank for c in listed] == list(range(1, len(listed) + 1))
        return [c.image_id for c in listed]

    assert ids(6, 6) == [1, 2, 3, 4, 5]
    assert ids(3, 1) == [1, 2, 5]  # A's images 3 and 4 skipped past the cap of 1
    assert ids(4, 2) == [1, 2, 3, 5]  # A's third image skipped
    assert ids(2, 2) == [1, 2]
    assert ids(1, 1) == [1]
    assert ids(5, 1) == [1, 2, 5]  # the cap runs out before n
    assert choose([], 3, 1) == []


def test_the_cap_and_the_notes_word_for_word_by_hand():
    """The default cap is a tenth of --n rounded up; a short list says why: fewer unlabelled
    images than asked (at most n of them), else the cap."""
    from datatool.assist.selection import per_patient_cap, shortfall

    for n, cap in [(1, 1), (9, 1), (10, 1), (11, 2), (20, 2), (21, 3), (100, 10), (101, 11)]:
        assert per_patient_cap(n, None) == cap, n
    assert per_patient_cap(5, 3) == 3 and per_patient_cap(1, 1) == 1 and per_patient_cap(2, 7) == 7
    for n, per_patient, message in [(0, None, "--n must be 1 or more"),
                                    (0, 0, "--n must be 1 or more"),
                                    (-1, 5, "--n must be 1 or more"),
                                    (3, 0, "--per-patient must be 1 or more"),
                                    (3, -1, "--per-patient must be 1 or more")]:  # fmt: skip
        with pytest.raises(UsageError) as caught:
            per_patient_cap(n, per_patient)
        assert str(caught.value) == message, (n, per_patient)
    assert shortfall("N", 0, 0, 5, 1) == ["rater N has labelled every image"]
    assert shortfall("N", 6, 6, 6, 6) == []
    assert shortfall("N", 9, 3, 3, 1) == []
    assert shortfall("N", 6, 2, 3, 1) == ["2 of 3 listed: at most 1 per patient (--per-patient)"]
    assert shortfall("N", 6, 6, 7, 7) == ["6 of 7 listed: only 6 unlabelled images"]
    assert shortfall("N", 6, 4, 6, 2) == ["4 of 6 listed: only 6 unlabelled images"]  # 6 <= 6
    assert shortfall("N", 7, 4, 6, 2) == ["4 of 6 listed: at most 2 per patient (--per-patient)"]
    assert shortfall("R2", 1, 0, 1, 1) == ["0 of 1 listed: only 1 unlabelled images"]
