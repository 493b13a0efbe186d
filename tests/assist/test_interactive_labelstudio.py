"""Click-guided labelling in Label Studio, against the real server of the session: push
--interactive gives the rater's project the smart KeyPointLabels tool, connect --interactive
registers the backend for interactive pre-annotations, and a label made with clicks syncs
with its provenance (the run, the number of clicks; the points themselves are no label) and
is left out of agreement like a label started from a draft."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from sqlalchemy import select

from datatool.analysis.agreement import run_agreement
from datatool.core.catalogue import Image
from datatool.core.errors import DatatoolError
from datatool.core.protocol import load_protocol
from datatool.labels.annotations import get_rater, latest_annotation
from datatool.labels.labelstudio.formats import CLICKS_NAME, clicks_meta, mask_to_results
from datatool.labels.labelstudio.push import has_clicks_tool, push
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.labels.matching import image_id_from_name
from datatool.learning.inference import load_run_model
from tests.qa_util import clone

P = load_protocol()
NERVE = next(s for s in P.structures if "nerve" in s.name)


@pytest.fixture(scope="module")
def study(trained, tmp_path_factory):
    """A copy of the trained workspace (rater1 and rater2 have labelled every image)."""
    source, run = trained
    ws = clone(source, tmp_path_factory.mktemp("clicks-ls") / "ws")
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image).order_by(Image.id))}
    version = load_run_model(ws, run, device="cpu").model_version
    yield ws, run, version, images
    ws.close()


@pytest.fixture()
def ls(labelstudio_server):
    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def _server(srv) -> dict:
    return {"url": srv.url, "token": srv.token}


def _point(task_image: Image, name: str, row: int, col: int, positive: bool = True) -> dict:
    """A point as Label Studio's smart KeyPointLabels tool serialises it."""
    return {
        "type": "keypointlabels",
        "from_name": CLICKS_NAME,
        "to_name": "image",
        "original_width": task_image.cols,
        "original_height": task_image.rows,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {
            "x": 100 * col / task_image.cols,
            "y": 100 * row / task_image.rows,
            "width": 0.5,
            "keypointlabels": [name],
        },
    }


def test_push_interactive_gives_the_project_the_clicks_tool_once(study, labelstudio_server, ls):
    ws, _run, _version, _images = study
    srv = labelstudio_server
    first = push(ws, "rater2", local_root=srv.local_root, **_server(srv))
    assert not first.interactive and not has_clicks_tool(
        ls.projects.get(first.project_id).label_config, P
    )
    added = push(ws, "rater2", local_root=srv.local_root, interactive=True, **_server(srv))
    assert (added.project_id, added.interactive, added.config_updated) == (
        first.project_id, True, True)  # fmt: skip
    assert added.tasks_created == 0 and added.already_pushed == first.tasks_created
    config = ls.projects.get(first.project_id).label_config
    assert has_clicks_tool(config, P)
    assert config.strip() == P.labelstudio_config(interactive=True).strip()
    again = push(ws, "rater2", local_root=srv.local_root, interactive=True, **_server(srv))
    assert (again.config_updated, again.tasks_created) == (False, 0)
    # a push without the flag leaves the tool there
    push(ws, "rater2", local_root=srv.local_root, **_server(srv))
    assert has_clicks_tool(ls.projects.get(first.project_id).label_config, P)


def test_a_label_made_with_clicks_syncs_with_its_provenance_and_agreement_leaves_it_out(
    study, labelstudio_server, ls
):
    ws, run, version, images = study
    srv = labelstudio_server
    made = push(ws, "rater1", local_root=srv.local_root, interactive=True, **_server(srv))
    pid = made.project_id
    assert made.project_created and has_clicks_tool(ls.projects.get(pid).label_config, P)
    tasks = sorted(ls.tasks.list(project=pid, fields="all"), key=lambda t: t.id)
    clicked, by_hand = tasks[:2]
    image = images[image_id_from_name(clicked.data["image_id"])]
    redrawn = np.zeros((image.rows, image.cols), np.uint8)
    redrawn[40:70, 50:110] = NERVE.value
    redrawn[100:120, 10:30] = 1
    brush = mask_to_results(redrawn, P)
    for entry in brush:  # the nerve redrawn by the backend from two clicks; the femur by hand
        if entry["value"]["brushlabels"] == [NERVE.name]:
            entry["meta"] = clicks_meta(version, 2)
    points = [_point(image, NERVE.name, 55, 80), _point(image, NERVE.name, 45, 60, False)]
    ls.annotations.create(clicked.id, result=[points[0], *brush, points[1]], project=pid)
    own = images[image_id_from_name(by_hand.data["image_id"])]
    drawn = np.zeros((own.rows, own.cols), np.uint8)
    drawn[30:60, 40:90] = NERVE.value
    ls.annotations.create(by_hand.id, result=mask_to_results(drawn, P), project=pid)

    report = sync_from_server(ws, "rater1", **_server(srv))
    assert (report.new_versions, report.rejected) == (2, []), report.notes
    with ws.session() as s:
        r1 = get_rater(s, "rater1")
        a = latest_annotation(s, image.id, r1.id)
        np.testing.assert_array_equal(ws.store.get_array(a.mask_hash), redrawn)  # no points
        assert (a.draft_version, a.draft_run_id, a.draft_clicks) == (version, run, 2)
        assert (a.draft_hash, a.draft_unchanged, a.draft_link) == (None, None, None)
        b = latest_annotation(s, own.id, r1.id)
        assert (b.draft_version, b.draft_clicks) == (None, None)

    # a label made with clicks is not an independent rating: a new sample leaves it out
    left = run_agreement(ws, raters=["rater1", "rater2"], resample=True, plots=False)
    assert left.prelabelled_left_out == 1 and left.sample.images == len(images) - 1
    assert any("made with clicks" in n for n in left.notes)
    kept = run_agreement(
        ws, raters=["rater1", "rater2"], resample=True, include_prelabelled=True, plots=False
    )
    assert (kept.sample.images, kept.prelabelled_in_sample) == (len(images), 1)


def test_connect_interactive_needs_the_clicks_tool(study, labelstudio_server):
    from datatool.assist.connect import connect_backend
    from datatool.labels.annotations import add_rater

    ws, _run, _version, _images = study
    srv = labelstudio_server
    add_rater(ws, "plain")
    push(ws, "plain", local_root=srv.local_root, image_ids=[1], **_server(srv))
    with pytest.raises(DatatoolError, match=r"no smart KeyPointLabels tool.*--interactive"):
        connect_backend(ws, "plain", "http://127.0.0.1:9", interactive=True, **_server(srv))


def test_connect_interactive_refuses_a_backend_serving_a_run_without_clicks(
    study, labelstudio_server, tmp_path
):
    """The project has the clicks tool, but ``datatool serve`` serves the plain run (its
    ``/health`` says ``interactive: false``): refused with one line that says what to serve,
    before any backend is registered; connected without --interactive it is accepted."""
    from datatool.assist.connect import connect_backend
    from datatool.labels.annotations import add_rater
    from tests.backend_server import PASSWORD, serve_subprocess

    ws, run, version, _images = study
    srv = labelstudio_server
    add_rater(ws, "clicker")
    pushed = push(ws, "clicker", local_root=srv.local_root, image_ids=[1], interactive=True,
                  **_server(srv))  # fmt: skip
    with serve_subprocess(ws.root, run, tmp_path / "serve.log") as (url, _):
        env = {"DATATOOL_SERVE_USER": "datatool", "DATATOOL_SERVE_PASSWORD": PASSWORD}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            with pytest.raises(DatatoolError) as refused:
                connect_backend(ws, "clicker", url, interactive=True, **_server(srv))
            assert str(refused.value) == (
                f"the ML backend at {url} serves {version}, which was not trained with "
                "--interactive: serve an interactive run ('datatool train --interactive'), "
                "or connect without --interactive"
            )
            ls = LabelStudio(base_url=srv.url, api_key=srv.token)
            assert not list(ls.ml.list(project=pushed.project_id))
            plain = connect_backend(ws, "clicker", url, **_server(srv))
    assert not plain.interactive and [p.project_id for p in plain.projects] == [pushed.project_id]
