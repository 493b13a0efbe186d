"""``labelstudio push --gold N`` against a real Label Studio server: gold tasks look like every
other task of the rater's project (the same fields, the same data keys in the same order, the
same kind of values), come mixed among the new tasks by the seed rather than as a block, a
re-push adds nothing, and the rater's labels synced back are scored by ``datatool raters``,
drift in the order the rater labelled them."""

from __future__ import annotations

import json

import pytest
from label_studio_sdk import LabelStudio
from typer.testing import CliRunner

from datatool.analysis.rater_quality import rater_quality
from datatool.cli import app
from datatool.core.protocol import load_protocol
from datatool.labels.labelstudio.push import annotate, push
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.labels.matching import image_id_from_name, image_name
from tests.gold_util import FEMUR, NERVE, SHAPE, femur_shifted, label, reference_mask, study
from tests.handmade import box

# what differs from task to task by nature (ids, times, the image itself)
PER_TASK = {"id", "inner_id", "data", "created_at", "updated_at"}


def _plain(task) -> dict:
    return task if isinstance(task, dict) else task.model_dump()


def test_gold_tasks_look_like_any_other_and_are_scored(ws, tmp_path, labelstudio_server):
    srv = labelstudio_server
    server = {"url": srv.url, "token": srv.token, "local_root": srv.local_root}
    ids = study(ws, tmp_path, 10)
    for i in ids[:5]:
        label(ws, "EXP", i, reference_mask())
    result = push(ws, "AN1", image_ids=ids[5:], gold=3, gold_reference="EXP", gold_seed=2,
                  **server)  # fmt: skip
    handed = result.gold
    assert handed is not None and len(handed.gold) == 3 and set(handed.gold) <= set(ids[:5])
    assert result.tasks_created == 8 and result.images == 8
    pid = result.project_id

    client = LabelStudio(base_url=srv.url, api_key=srv.token)
    tasks = sorted(
        (_plain(t) for t in client.tasks.list(project=pid, fields="all")), key=lambda t: t["id"]
    )
    assert len(tasks) == 8
    by_image = {image_id_from_name(t["data"]["image_id"]): t for t in tasks}
    # the data: the same keys in the same order, the values made the same way
    for image_id, task in by_image.items():
        name = image_name(image_id)
        assert list(task["data"]) == ["image", "image_id"]
        assert task["data"] == {
            "image": f"/data/local-files/?d=datatool/{pid}/{name}.png",
            "image_id": name,
        }
    # every other field: the same keys in the same order, the same values on every task
    first = tasks[0]
    for task in tasks:
        assert list(task) == list(first)
        assert {k: v for k, v in task.items() if k not in PER_TASK} == {
            k: v for k, v in first.items() if k not in PER_TASK
        }
    # the order of the tasks: the seeded mix of all new ones, gold not as a block at one end
    order = [image_id_from_name(t["data"]["image_id"]) for t in tasks]
    assert order == handed.mixed(handed.queue) and order != sorted(order)
    positions = [k for k, i in enumerate(order) if i in handed.gold]
    assert positions not in ([0, 1, 2], [5, 6, 7])

    # a re-push (here through the command) adds nothing and hands no new gold
    again = CliRunner().invoke(
        app,
        ["labelstudio", "push", "--rater", "AN1", "--images", ",".join(map(str, ids[5:])),
         "--gold", "3", "--gold-reference", "EXP", "--gold-seed", "2", "--url", srv.url,
         "--token", srv.token, "--local-root", str(srv.local_root), "-w", str(ws.root), "--json"],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert (data["tasks_created"], data["already_pushed"]) == (0, 8)
    assert (data["gold"]["new"], data["gold"]["gold"]) == (0, handed.gold)

    # the rater labels the ordinary tasks as the reference, then the gold ones from the last
    # task to the first: the two labelled first with the femur 2 px off, the last one exact
    protocol = load_protocol(ws.protocol_name)
    gold_tasks = [by_image[i]["id"] for i in order if i in handed.gold]
    for image_id, task in by_image.items():
        if image_id not in handed.gold:
            annotate(srv.url, srv.token, pid, task["id"], reference_mask(), protocol)
    # the last one's femur exact, its nerve 1 px off: a label identical to the reference
    # rater's would be refused as a copy (a blinding breach), gold task or not
    exact_femur = box(SHAPE, {FEMUR: (5, 15, 5, 15), NERVE: (18, 26, 11, 31)})
    for k, task_id in enumerate(reversed(gold_tasks)):
        mask = femur_shifted(2) if k < 2 else exact_femur
        annotate(srv.url, srv.token, pid, task_id, mask, protocol)
    synced = sync_from_server(ws, "AN1", url=srv.url, token=srv.token)  # all at once
    assert synced.new_versions == 8 and not synced.rejected
    (an1,) = rater_quality(ws).raters
    femur = next(g for g in an1.structures if g.structure == "femur")
    assert (an1.handed, an1.labelled, an1.half, femur.images) == (3, 3, 1, 3)
    assert femur.iou["mean"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # drift follows the order labelled (the server's annotation ids), not the task order
    assert (femur.dice_first_half, femur.dice_second_half) == (pytest.approx(0.8), 1.0)
    assert femur.drift == pytest.approx(0.2)
