"""A rater corrects with clicks, in real Chromium against the session's Label Studio server:
the task of a project pushed with --interactive is opened, a positive point is placed on the
nerve with the smart KeyPointLabels tool, Label Studio sends it to a real ``datatool serve``
of an interactive tiny run (connected with --interactive), the nerve's brush region appears,
the rater submits, and ``sync labelstudio`` stores the label with its provenance (the run,
1 click).

Chromium is Debian's, driven by playwright (no browser download)."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from scipy import ndimage
from sqlalchemy import select

from datatool.assist.connect import connect_backend
from datatool.assist.serving import PASSWORD_ENV, USER_ENV
from datatool.core.catalogue import Annotation, Image
from datatool.core.protocol import load_protocol
from datatool.labels.annotations import get_rater, latest_annotation
from datatool.labels.labelstudio.formats import results_to_mask
from datatool.labels.labelstudio.push import push
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.report.chromium import CHROMIUM_FLAGS, find_chromium
from tests.backend_server import PASSWORD, serve_subprocess
from tests.ci import require, unavailable
from tests.qa_util import clone

P = load_protocol()
NERVE = next(s for s in P.structures if "nerve" in s.name)
NOT_OURS = ("--headless", "--host-resolver-rules")  # playwright's own; loopback excluded below
WAIT_MS = 120_000
BIG_IMAGE = """([cols, rows]) => {
  const big = [...document.querySelectorAll("img")].find(
    img => img.complete && img.naturalWidth === cols && img.naturalHeight === rows
      && img.getBoundingClientRect().width >= cols / 2);
  if (big) big.setAttribute("data-datatool-task-image", "");
  return Boolean(big);
}"""  # a loaded 2-core machine: Label Studio's page and the model are slow


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        unavailable("Chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def clicked_study(trained_interactive, tmp_path_factory):
    """A copy of the workspace with the interactive run, and the image to click on: the one
    with the largest nerve in rater2's labels, and the nerve's innermost pixel there."""
    source, run = trained_interactive
    ws = clone(source, tmp_path_factory.mktemp("clicks-chromium") / "ws")
    with ws.session() as s:
        r2 = get_rater(s, "rater2").id
        best = None
        for image in s.scalars(select(Image).order_by(Image.id)):
            label = latest_annotation(s, image.id, r2)
            if label is None:
                continue
            nerve = ws.store.get_array(label.mask_hash) == NERVE.value
            if best is None or nerve.sum() > best[1].sum():
                best = (image, nerve)
        assert best is not None
        image, nerve = best
        s.expunge(image)
    depth = ndimage.distance_transform_edt(nerve)
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    yield ws, run, image, (int(row), int(col))
    ws.close()


def test_a_positive_point_on_the_nerve_draws_it_and_sync_keeps_the_clicks(
    clicked_study, labelstudio_server, chromium, tmp_path, monkeypatch
):
    sync_api = require("playwright.sync_api")
    ws, run, image, (row, col) = clicked_study
    srv = labelstudio_server
    server = {"url": srv.url, "token": srv.token}
    ls = LabelStudio(base_url=srv.url, api_key=srv.token)
    pushed = push(
        ws, "rater1", local_root=srv.local_root, image_ids=[image.id], interactive=True, **server
    )
    pid = pushed.project_id
    (task,) = ls.tasks.list(project=pid)
    monkeypatch.setenv(USER_ENV, "datatool")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with serve_subprocess(ws.root, run, tmp_path / "serve.log") as (backend_url, _):
        connected = connect_backend(ws, "rater1", backend_url, interactive=True, **server)
        assert connected.interactive
        (registered,) = ls.ml.list(project=pid)
        assert registered.is_interactive
        # the rater starts from an empty image: no automatic draft when the task opens
        ls.projects.update(pid, show_collab_predictions=False)

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                args=[
                    *(f for f in CHROMIUM_FLAGS if not f.startswith(NOT_OURS)),
                    # offline, but the loopback servers are reached
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(WAIT_MS)
                _log_in(page, srv)
                page.goto(f"{srv.url}/projects/{pid}/data?tab=0&task={task.id}")
                # the labelling view's image: the task's image at its own size, shown larger
                # than the list's thumbnail, loaded
                page.wait_for_function(BIG_IMAGE, arg=[image.cols, image.rows])
                shown = page.locator("img[data-datatool-task-image]")
                page.screenshot(path=str(tmp_path / "opened.png"))
                # the rater turns on Auto-Annotation (the smart tools) and auto-accepting
                page.get_by_test_id("bottombar-auto-annotation-toggle").click()
                page.get_by_test_id("bottombar-auto-accept-toggle").click()
                # the points' label (the second 'sciatic nerve': the brush's comes first), then
                # the smart key point tool: Auto-Detect (the toolbar's smart button) cycles
                # through the smart tools (the brush's, then the points')
                page.get_by_text(NERVE.name, exact=True).nth(1).click()
                smart = page.locator("button.lsf-tool_smart[aria-label='key-point-tool']")
                for _ in range(3):
                    if smart.count() and "active" in (smart.first.get_attribute("class") or ""):
                        break
                    page.locator(".lsf-tool_smart:visible").first.click()
                # choosing a tool lets go of the label: the points' label again
                page.get_by_text(NERVE.name, exact=True).nth(1).click()
                page.screenshot(path=str(tmp_path / "tool.png"))
                # the toggles and tools can make Label Studio draw the image element anew
                # (a clean-clone CI run lost the mark): the image is found and marked again
                page.wait_for_function(BIG_IMAGE, arg=[image.cols, image.rows])
                box = shown.bounding_box()
                assert box is not None
                x = box["x"] + (col + 0.5) * box["width"] / image.cols
                y = box["y"] + (row + 0.5) * box["height"] / image.rows
                with page.expect_response(
                    lambda r: "/interactive-annotating" in r.url and r.request.method == "POST"
                ) as asked:
                    page.mouse.click(x, y)
                answer = asked.value.json()
                assert "errors" not in answer, answer
                results = answer["data"]["result"]
                assert [r["value"]["brushlabels"] for r in results] == [[NERVE.name]]
                # the region appears in the rater's annotation, as a brush of the nerve
                page.wait_for_function(
                    "name => window.dataManager.lsf.currentAnnotation.serializeAnnotation()"
                    ".some(r => r.type === 'brushlabels' && r.value.brushlabels[0] === name)",
                    arg=NERVE.name,
                )
                page.screenshot(path=str(tmp_path / "redrawn.png"))
                with page.expect_response(
                    lambda r: (
                        "/api/tasks/" in r.url
                        and "/annotations" in r.url
                        and r.request.method == "POST"
                    )
                ) as submitted:
                    page.get_by_role("button", name="Submit").click()
                assert submitted.value.status == 201, submitted.value.text()
            except Exception:
                page.screenshot(path=str(tmp_path / "failed.png"))  # for whoever reads the failure
                raise
            finally:
                browser.close()

    report = sync_from_server(ws, "rater1", **server)
    assert (report.new_versions, report.rejected) == (1, []), report.notes
    with ws.session() as s:
        label = latest_annotation(s, image.id, get_rater(s, "rater1").id)
        assert isinstance(label, Annotation)
        assert (label.source, label.draft_run_id, label.draft_clicks) == ("labelstudio", run, 1)
        stored = ws.store.get_array(label.mask_hash)
    # the backend's nerve, as it drew it, and nothing else (the point is no label)
    np.testing.assert_array_equal(stored, results_to_mask(results, P, stored.shape).mask)
    assert set(np.unique(stored)) == {0, NERVE.value}


def _log_in(page, srv) -> None:
    page.goto(f"{srv.url}/user/login/")
    page.fill("input[name=email]", srv.username)
    page.fill("input[name=password]", srv.password)
    with page.expect_navigation():
        page.locator("button[type=submit], input[type=submit]").first.click()
