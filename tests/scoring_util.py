"""The measures of a scored run worked out from scratch, for the tests that check what
``datatool score`` and the study report say: the test set's reference masks from the split's
frozen annotations and the run's own predictions, and confusion counts per class."""

from __future__ import annotations

import numpy as np


def confusion(pred, ref, c) -> tuple[int, int, int]:
    """(tp, fp, fn) of class ``c`` between a prediction and a reference."""
    p, r = pred == c, ref == c
    return int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())


def expected_scores(ws, run_id):
    """The test set's measures from scratch: reference masks from the split's frozen
    annotations (label values -> the protocol's class order, written out here), resized with
    nearest neighbour and centre-cropped; predictions from the run's best checkpoint."""
    import torch
    from PIL import Image as PILImage
    from sqlalchemy import select

    from datatool.core.catalogue import Annotation, Image, Run, SplitMember
    from datatool.learning.data import to_input
    from datatool.learning.training import build_for, load_checkpoint

    classes = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5}  # femur, adductor, nerve, semitendinosus, artery
    with ws.session() as s:
        run = s.get(Run, run_id)
        conf, digest = dict(run.config), run.best_checkpoint
        rows = s.execute(
            select(SplitMember.image_id, Image.store_hash, Annotation.mask_hash)
            .join(Image, Image.id == SplitMember.image_id)
            .join(Annotation, Annotation.id == SplitMember.annotation_id)
            .where(SplitMember.split_id == run.split_id, SplitMember.subset == "test")
            .order_by(SplitMember.image_id)
        ).all()
    h, w = conf["resize"]
    crop = conf["crop"]
    top, left = (h - crop) // 2, (w - crop) // 2
    images, refs = [], []
    for _, image_hash, mask_hash in rows:
        image = ws.store.get_array(image_hash)
        mask = np.vectorize(lambda v: classes.get(int(v), 0), otypes=[np.uint8])(
            ws.store.get_array(mask_hash)
        )
        images.append(np.asarray(PILImage.fromarray(image).resize((w, h), PILImage.BILINEAR)))
        mask = np.asarray(PILImage.fromarray(mask).resize((w, h), PILImage.NEAREST))
        refs.append(mask[top : top + crop, left : left + crop])
    model = build_for(conf, 6)
    model.load_state_dict(load_checkpoint(ws, digest)["model"])
    model.eval()
    with torch.no_grad():
        x, _ = to_input(torch.as_tensor(np.stack(images)), crop)
        preds = model(x).argmax(1).numpy()
    return [r[0] for r in rows], preds, refs
