"""The methods' flow figure (``datatool/report/flow.py``): each box's number is the
catalogue's, on files built by hand (one good, one quarantined, one unreadable) and on the
rated demo with a split; the page shows them; and the synthetic-data marker."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select

from datatool.core.catalogue import AgreementSample, Annotation, Image, Rater, SplitMember
from datatool.ingest.pipeline import ingest
from datatool.learning.splits import create_split
from datatool.report.flow import DEMO_MANUFACTURER, flow, synthetic
from datatool.report.gather import gather
from datatool.report.render import render_html, render_markdown
from tests.handmade import write_us
from tests.report.page import parse


def _numbers(f) -> dict[str, int | None]:
    return {b.key: b.n for step in f.steps for b in step}


def test_files_received_rejected_quarantined_and_ingested(ws, tmp_path):
    folder = tmp_path / "d"
    write_us(folder / "good.dcm", np.full((20, 30), 90, np.uint8), patient_id="F1")
    write_us(
        folder / "banner.dcm", np.full((20, 30), 90, np.uint8), patient_id="F2", burned_in=True
    )
    (folder / "broken.dcm").write_bytes(b"not a DICOM file at all")
    ingest(ws, [folder], workers=0)
    with ws.session() as s:
        got = _numbers(flow(s, None, None, None))
        assert synthetic(s) is None  # written by hand, not by the demo
    assert got["received"] == 3
    assert (got["rejected"], got["quarantined"], got["conflict"], got["ingested"]) == (1, 1, 0, 1)
    assert got["images"] == 1 and got["labelled"] == 0
    assert got["agreement"] is None and got["sets"] is None and got["scored"] is None


def test_an_empty_workspace_has_no_flow(ws):
    with ws.session() as s:
        assert flow(s, None, None, None) is None
    assert gather(ws).flow is None


def test_the_demos_flow_is_the_catalogues_and_the_page_shows_it(rated_copy, demo_dir):
    ws, _, _ = rated_copy
    create_split(ws, "flow", ratios="1:1:1", folds=0)
    report = gather(ws)
    assert report.flow is not None
    got = _numbers(report.flow)
    dicoms = len(list((demo_dir / "dicom").rglob("*.dcm")))
    with ws.session() as s:
        images = s.scalar(select(func.count(Image.id)))
        labelled = dict(
            s.execute(
                select(Rater.name, func.count(func.distinct(Annotation.image_id)))
                .join(Annotation, Annotation.rater_id == Rater.id)
                .where(Rater.name.in_(["rater1", "rater2"]))
                .group_by(Rater.name)
            ).all()
        )
        in_sample = s.get(AgreementSample, report.agreement.sample).n_images
        members = dict(
            s.execute(select(SplitMember.subset, func.count()).group_by(SplitMember.subset)).all()
        )
        marker = synthetic(s)
    assert got["received"] == dicoms  # the demo's files, each one catalogued
    assert got["images"] == images > 0
    assert got["labelled:rater1"] == labelled["rater1"]
    assert got["labelled:rater2"] == labelled["rater2"]
    assert got["agreement"] == in_sample > 0
    assert [got["set:train"], got["set:val"], got["set:test"]] == [
        members["train"],
        members["val"],
        members["test"],
    ]
    assert sum(members.values()) == images
    assert got["scored"] is None  # no model here
    assert marker is not None and (marker.images, marker.of) == (images, images)
    assert marker.marker == DEMO_MANUFACTURER

    html = render_html(report)
    assert "flow" in parse(html).ids
    for key, n in got.items():
        assert f'data-key="{key}" data-n="{"" if n is None else n}"' in html
    md = render_markdown(report, "files")
    assert f"DICOM files received: {dicoms}" in md
    assert f"labelled by rater1: {labelled['rater1']}" in md
