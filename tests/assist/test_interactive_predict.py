"""The interactive /predict: a rater's points read from Label Studio's context, and a real
``datatool serve`` process of an interactive run redrawing the clicked structure."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from datatool.assist.interactive_predict import (
    BadContext,
    Point,
    answer,
    context_of,
    points_of,
)
from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask
from datatool.core.protocol import load_protocol
from datatool.labels.annotations import get_rater
from datatool.labels.labelstudio.formats import clicks_meta, results_to_mask
from datatool.labels.matching import image_name
from datatool.learning.clicks import Click
from datatool.learning.inference import load_run_model
from datatool.learning.training import run_summary
from tests.backend_server import PASSWORD, serve_subprocess
from tests.qa_util import clone

P = load_protocol()
PROJECT = 57


def _point(label: str, x: float, y: float, positive: bool | None = True) -> dict:
    region = {
        "type": "keypointlabels",
        "from_name": "clicks",
        "to_name": "image",
        "original_width": 640,
        "original_height": 480,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
    }
    if positive is not None:
        region["is_positive"] = positive
    return region


def test_points_are_read_from_label_studios_context():
    brush = {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2]}}
    context = {
        "result": [
            _point("sciatic nerve", 50.0, 25.0),
            brush,  # the draft being corrected: not a point
            _point("femur", 10, 90, positive=False),
            _point("femur", 0, 100, positive=None),  # no flag: positive
        ]
    }
    points = points_of(context, P)
    assert points == [
        Point("sciatic nerve", 50.0, 25.0, True),
        Point("femur", 10.0, 90.0, False),
        Point("femur", 0.0, 100.0, True),
    ]
    # percent -> pixels of a 480 x 640 image, the far edge kept inside
    assert points[0].click(480, 640) == Click("sciatic nerve", 120, 320, True)
    assert points[2].click(480, 640) == Click("femur", 479, 0, True)
    assert points_of(None, P) == [] and points_of({"result": []}, P) == []
    body = {"params": {"login": None, "context": context}}
    assert context_of(body) is context and context_of({"context": 5}) == 5


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        ("nope", "must be a JSON object"),
        ({"result": {}}, "must be a list"),
        ({"result": [_point("liver", 1, 1)]}, "'liver', not a structure"),
        ({"result": [_point("femur", 101, 1)]}, "outside the image"),
        ({"result": [_point("femur", float("nan"), 1)]}, "needs numbers"),
        ({"result": [{"type": "keypointlabels", "value": {"x": 1, "y": 1}}]}, "exactly one"),
        ({"result": [{**_point("femur", 1, 1), "is_positive": "yes"}]}, "true or false"),
    ],
)
def test_a_bad_context_says_why(context, reason):
    with pytest.raises(BadContext, match=reason):
        points_of(context, P)


@pytest.fixture(scope="module")
def served(trained_interactive, trained, tmp_path_factory):
    """A copy of the interactive workspace whose rater1 has project 57 with two tasks, and
    ``datatool serve`` of its interactive run in a subprocess."""
    source, run = trained_interactive
    root = tmp_path_factory.mktemp("interactive-serve") / "ws"
    ws = clone(source, root)
    with ws.session() as s:
        row = LabelStudioProject(
            project_id=PROJECT, rater_id=get_rater(s, "rater1").id, title="rater1 (clicks)"
        )
        s.add(row)
        s.flush()
        rows = list(s.scalars(select(Image).order_by(Image.id).limit(2)))
        for k, image in enumerate(rows):
            s.add(LabelStudioTask(project_id=row.id, task_id=300 + k, image_id=image.id))
        images = [SimpleNamespace(id=i.id, store_hash=i.store_hash) for i in rows]
    log = root.parent / "serve.log"
    with serve_subprocess(root, run, log) as (url, _):
        yield ws, run, url, images, log
    ws.close()


def _body(image_id: int, task_id: int, points: list[dict] | None) -> dict:
    return {
        "tasks": [
            {
                "id": task_id,
                "project": PROJECT,
                "data": {"image": "/data/x.png", "image_id": image_name(image_id)},
            }
        ],
        "project": f"{PROJECT}.1764600000",
        "label_config": P.labelstudio_config(),
        "params": {"login": None, "password": None, "context": {"result": points or []}},
    }


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/predict", json=body, auth=("datatool", PASSWORD), timeout=120)


def test_a_point_on_the_nerve_redraws_the_nerve_alone_at_the_images_size(served):
    ws, run, url, images, log = served
    image = images[0]
    array = ws.store.get_array(image.store_hash)
    # the checkpoint is gone from the store: the server answers from the model it loaded
    digest = run_summary(ws, run).best_checkpoint
    blob = ws.store.blob_path(digest)
    saved = blob.read_bytes()
    blob.unlink()
    try:
        points = [_point("sciatic nerve", 50, 50), _point("sciatic nerve", 30, 60, False)]
        response = _post(url, _body(image.id, 300, points))
    finally:
        blob.write_bytes(saved)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["results"]
    labels = {r["value"]["brushlabels"][0] for r in prediction["result"]}
    assert labels <= {"sciatic nerve"}
    for r in prediction["result"]:
        assert (r["original_height"], r["original_width"]) == array.shape
    # the same as the library's answer for the same points
    model = load_run_model(ws, run, device="cpu")
    expected = answer(model, array, points_of({"result": points}, P), P)
    got = results_to_mask(prediction["result"], P, array.shape).mask
    want = results_to_mask(expected["result"], P, array.shape).mask
    assert np.array_equal(got, want)
    assert "2 clicks" in log.read_text()
    # each region says what redrew it, from how many points: sync's provenance (clicks-ls)
    for r in prediction["result"]:
        assert r["meta"] == clicks_meta(model.model_version, 2)
    assert httpx.get(url + "/health").json()["interactive"] is True


def test_without_points_the_interactive_run_drafts_the_whole_image(served):
    _ws, run, url, images, _ = served
    response = _post(url, _body(images[1].id, 301, None))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["model_version"].startswith(f"datatool-run-{run}-")


def test_bad_points_are_refused_in_one_line(served):
    _, _, url, images, _ = served
    response = _post(url, _body(images[0].id, 300, [_point("liver", 5, 5)]))
    assert response.status_code == 422
    assert "'liver', not a structure" in response.json()["error"]


def test_a_run_without_clicks_refuses_points(trained, tmp_path):
    from datatool.assist.serving import Credentials, create_app
    from tests.backend_server import uvicorn_thread

    source, run = trained
    ws = clone(source, tmp_path / "ws")
    with ws.session() as s:
        row = LabelStudioProject(
            project_id=PROJECT, rater_id=get_rater(s, "rater1").id, title="rater1"
        )
        s.add(row)
        s.flush()
        image = s.scalars(select(Image).order_by(Image.id).limit(1)).one()
        s.add(LabelStudioTask(project_id=row.id, task_id=300, image_id=image.id))
        image_id = image.id
    creds = Credentials("datatool", PASSWORD, "environment")
    app = create_app(ws, run, creds, device="cpu")
    try:
        with uvicorn_thread(app) as url:
            response = _post(url, _body(image_id, 300, [_point("femur", 5, 5)]))
    finally:
        ws.close()
    assert response.status_code == 422
    assert "not trained with clicks" in response.json()["error"]
