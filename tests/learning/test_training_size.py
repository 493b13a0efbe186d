"""The preset fixes the network's input size, not the source images: a study of 600 x 800
images trains on the same tensors as the demo's 480 x 640 (issue 23)."""

from __future__ import annotations

import numpy as np

from tests.ci import require

torch = require("torch")
from datatool.core.protocol import load_protocol  # noqa: E402
from datatool.learning import training  # noqa: E402
from datatool.learning.data import class_lut, load_arrays, split_items  # noqa: E402
from datatool.learning.splits import create_split  # noqa: E402
from datatool.learning.training import TrainConfig, train  # noqa: E402
from datatool.model import PRESETS  # noqa: E402
from tests.gold_util import label  # noqa: E402
from tests.handmade import box, workspace_with_key, write_us  # noqa: E402

BIG = (600, 800)


def test_a_600_by_800_study_trains_at_the_preset_s_input_size(tmp_path, monkeypatch):
    from sqlalchemy import select

    from datatool.core.catalogue import Image
    from datatool.ingest.pipeline import ingest
    from datatool.labels.annotations import add_rater

    ws = workspace_with_key(tmp_path / "ws")
    rng = np.random.default_rng(0)
    for k in range(6):
        pixels = rng.integers(0, 255, BIG, dtype=np.uint8)
        write_us(tmp_path / "dicom" / f"{k}.dcm", pixels, patient_id=f"B{k}")
    assert ingest(ws, [tmp_path / "dicom"], workers=0).images_added == 6
    add_rater(ws, "EXP")
    with ws.session() as s:
        images = list(s.scalars(select(Image).order_by(Image.id)))
        assert all(ws.store.get_array(i.store_hash).shape == BIG for i in images)
        ids = [i.id for i in images]
    for k, image_id in enumerate(ids):
        label(ws, "EXP", image_id, box(BIG, {1: (100, 300, 100 + k, 400), 3: (350, 420, 200, 600)}))
    create_split(ws, "big", ratios="4:1:1", folds=0, seed=0, reference="EXP")
    _, items = split_items(ws, "big", "train", None)
    tiny = PRESETS["tiny"]
    images, masks = load_arrays(ws, items, tiny.resize, class_lut(load_protocol()))
    assert images.shape[1:] == masks.shape[1:] == tiny.resize

    seen: list[tuple] = []
    real = training.to_input

    def spy(images_u8, size, *args, **kwargs):
        seen.append(tuple(images_u8.shape[1:]))
        x, y = real(images_u8, size, *args, **kwargs)
        seen.append(tuple(x.shape[1:]))
        return x, y

    monkeypatch.setattr(training, "to_input", spy)
    run = train(ws, "big", config=TrainConfig(preset="tiny", epochs=1, batch=2, device="cpu"))
    assert run is not None and run.epochs_done == 1
    assert set(seen) == {tiny.resize, (3, tiny.crop, tiny.crop)}
    ws.close()
