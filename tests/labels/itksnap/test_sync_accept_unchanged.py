"""``sync itksnap --accept-unchanged``: model drafts still as export wrote them (ITK-SNAP may
save an unchanged draft byte for byte the same) are skipped as not labelled yet, counted in
one note; with the option they are stored as drafts accepted unchanged, with the draft's
provenance, and a re-run is a no-op. (Cines, frame by frame: tests/labels/itksnap/
test_propagate_prefill.py and test_cine.py.)"""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.assist.drafter import run_drafter
from datatool.cli import app as cli
from datatool.core.catalogue import Annotation, Image, Rater
from datatool.core.protocol import load_protocol
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.itksnap.export import export_itksnap
from datatool.labels.itksnap.marker import EXPORT_MARKER
from datatool.labels.itksnap.sync import sync_itksnap
from tests.qa_util import clone

NOTE = (
    "model drafts are still as exported (segmentations never saved, cine frames left as "
    "drafted): not labelled yet, skipped; to accept them as they are, sync again with "
    "--accept-unchanged"
)


def _latest(ws, rater: str) -> dict[int, Annotation]:
    with ws.session() as s:
        rows = s.scalars(
            select(Annotation).join(Rater).where(Rater.name == rater).order_by(Annotation.version)
        )
        return {a.image_id: a for a in rows}


def test_unchanged_drafts_are_skipped_or_accepted_with_their_provenance(trained, tmp_path):
    source, run = trained
    ws = clone(source, tmp_path / "ws")
    with ws.session() as s:
        ids = list(s.scalars(select(Image.id).order_by(Image.id)))[:4]
    add_rater(ws, "AN5")
    out = tmp_path / "an5"
    summary = export_itksnap(ws, "AN5", out, image_ids=ids[:3], drafter=run_drafter(ws, run, "cpu"))
    assert summary.drafted == 3
    marker = json.loads((out / EXPORT_MARKER).read_text())["drafts"]

    # without the option: skipped, one line with the count; nothing stored
    skipped = sync_itksnap(ws, out, "AN5")
    assert (skipped.new_versions, skipped.unchanged, skipped.rejected) == (0, 0, [])
    assert [n for _, n in skipped.notes if "still as exported" in n] == [f"3 {NOTE}"]
    assert _latest(ws, "AN5") == {}

    # the rater labels image 1 elsewhere meanwhile: its draft is not accepted over that label
    with ws.session() as s:
        image = s.get_one(Image, ids[0])
        own = np.zeros((image.rows, image.cols), np.uint8)
        own[100:140, 200:260] = 3
        store_annotation(
            s, ws.store, image, get_rater(s, "AN5"), own, "labelstudio", None, load_protocol()
        )

    # one image accepted by syncing its folder with the option (the marker is found above)
    one = sync_itksnap(ws, out / f"img{ids[1]:06d}", "AN5", accept_unchanged=True)
    assert (one.new_versions, one.unchanged, one.rejected) == (1, 0, [])
    assert set(_latest(ws, "AN5")) == {ids[0], ids[1]}

    # the whole folder with it (the command line): the third stored too, the first not
    result = CliRunner().invoke(
        cli,
        ["sync", "itksnap", str(out), "--rater", "AN5", "--accept-unchanged", "--json",
         "--workspace", str(ws.root)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    accepted = json.loads(result.stdout)
    assert (accepted["new_versions"], accepted["unchanged"], accepted["rejected"]) == (1, 1, [])
    assert [n["note"] for n in accepted["notes"] if "another label" in n["note"]] == [
        "still the draft as exported, but the rater has another label of this image (its "
        "latest version): the draft is not accepted over it"
    ]
    latest = _latest(ws, "AN5")
    assert latest[ids[0]].source == "labelstudio" and latest[ids[0]].version == 1
    for image_id in ids[1:3]:
        a = latest[image_id]
        record = marker[f"img{image_id:06d}"]
        assert (a.draft_version, a.draft_run_id, a.draft_hash) == (
            record["model_version"],
            run,
            record["mask_hash"],
        )
        assert (a.mask_hash, a.draft_unchanged, a.draft_link) == (
            record["mask_hash"],
            True,
            "accepted unchanged",
        )
    # a re-run is a no-op, with the option or without
    for accept in (True, False):
        again = sync_itksnap(ws, out, "AN5", accept_unchanged=accept)
        assert (again.new_versions, again.rejected) == (0, []), again.as_dict()
        assert again.unchanged == 2
        assert not any("still as exported" in n for _, n in again.notes)
    assert len(_latest(ws, "AN5")) == 3
