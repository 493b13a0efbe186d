"""Training treats a cine's frames like stills: on a catalogue with a real ingested 4-frame
cine beside the demo's stills (tests/cine_util.py), consensus and a split take every frame as
an image with its own reference label, every frame of the loop lands in its patient's set,
and a tiny run trains on them, its inputs the frames' own pixels and masks."""

from __future__ import annotations

import numpy as np

from tests.ci import require

torch = require("torch")
from sqlalchemy import select  # noqa: E402

from datatool.analysis.consensus import make_consensus  # noqa: E402
from datatool.core.catalogue import Annotation, Image, RunStatus, SplitMember  # noqa: E402
from datatool.core.protocol import load_protocol  # noqa: E402
from datatool.learning.data import class_lut, load_arrays, split_items  # noqa: E402
from datatool.learning.splits import create_split  # noqa: E402
from datatool.learning.training import TrainConfig, train  # noqa: E402
from datatool.model import PRESETS  # noqa: E402
from tests.cine_util import cine_ws, frames_of  # noqa: E402

FRAMES = 4


def test_a_cines_frames_train_like_stills(ws, demo_dir, tmp_path):
    cine_ws(ws, demo_dir, tmp_path, FRAMES)
    ids, _ = frames_of(ws)
    assert make_consensus(ws, "staple").images == 12 + FRAMES
    create_split(ws, "s", folds=0, seed=1)
    with ws.session() as s:
        members = {m.image_id: m for m in s.scalars(select(SplitMember))}
        assert set(ids) <= set(members)
        # the loop stays with its patient: one set for every frame
        assert len({members[i].subset for i in ids}) == 1
        part = members[ids[0]].subset
        for i in ids:  # each frame's own reference label, the consensus of its frame
            ann = s.get(Annotation, members[i].annotation_id)
            assert ann.image_id == i and ann.rater.name == "consensus:staple"
        hashes = {i: s.get(Image, i).store_hash for i in ids}
    _, items = split_items(ws, "s", part, None)
    preset = PRESETS["tiny"]
    images, masks = load_arrays(ws, items, preset.resize, class_lut(load_protocol()))
    at = [items.image_ids.index(i) for i in ids]
    assert [items.image_hashes[k] for k in at] == [hashes[i] for i in ids]
    # the frames differ (the cine moves 2 px a frame), and so do their masks
    assert not np.array_equal(images[at[0]], images[at[-1]])
    assert not np.array_equal(masks[at[0]], masks[at[-1]])
    run = train(ws, "s", config=TrainConfig(epochs=1, seed=0, preset="tiny", batch=4,
                                            device="cpu"))  # fmt: skip
    assert run is not None and run.status == RunStatus.done and run.epochs_done == 1
