"""Training with clicks (``train --interactive``), the DeepEdit way: in a share of the samples
no clicks at all (the click channels empty, so the network keeps drafting automatically), in
the others clicks simulated from the errors of the network's own prediction, a few rounds
per batch: predict (no gradient), click where the prediction is most wrong on one structure
of the sample (:func:`datatool.learning.clicks.next_click`, the point drawn among the error
region's deep pixels), predict again with the clicks so far... and the training step then
learns from the image and all the clicks placed.

Every random draw comes from the generator handed in (seeded by the run's seed and the
epoch), so a resumed run repeats what the uninterrupted one did.
"""

from __future__ import annotations

import numpy as np

from datatool.learning.clicks import Click, click_maps, next_click
from datatool.learning.device import autocast, channels_last

AUTO_SHARE = 0.5  # share of the samples trained without clicks (automatic drafting)
MAX_ROUNDS = 3  # click rounds per batch: 1 .. MAX_ROUNDS, drawn per batch


def _structure_of(truth: np.ndarray, pred: np.ndarray, k: int, rng: np.random.Generator) -> int:
    """A class (1 .. k-1) to click on: one the truth holds, or, where it holds none, one the
    prediction spilled; 0 when neither holds any."""
    present = [c for c in range(1, k) if (truth == c).any()]
    if not present:
        present = [c for c in range(1, k) if (pred == c).any()]
    return int(present[rng.integers(len(present))]) if present else 0


def with_clicks(model, x, y, k: int, rng: np.random.Generator, device):
    """The batch's input with click channels: ``x`` (B x 3 x H x W, normalised) and ``y``
    (B x H x W class indices) -> B x (3 + 2 (k-1)) x H x W. The model is put in evaluation
    mode while clicks are simulated and back in training mode after."""
    import torch

    b, _, h, w = x.shape
    names = [str(c) for c in range(1, k)]
    maps = torch.zeros(b, 2 * (k - 1), h, w, device=x.device, dtype=x.dtype)
    interactive = rng.random(b) >= AUTO_SHARE
    if not interactive.any():
        return torch.cat([x, maps], 1)
    truth = y.cpu().numpy()
    clicks: list[list[Click]] = [[] for _ in range(b)]
    target = [0] * b
    rounds = int(rng.integers(1, MAX_ROUNDS + 1))
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(rounds):
                with autocast(device):
                    logits = model(channels_last(torch.cat([x, maps], 1), device))
                pred = logits.float().argmax(1).cpu().numpy()
                for i in np.nonzero(interactive)[0]:
                    if not target[i]:
                        target[i] = _structure_of(truth[i], pred[i], k, rng)
                    s = target[i]
                    if not s:
                        continue
                    click = next_click(pred[i] == s, truth[i] == s, str(s), rng)
                    if click is None:
                        continue
                    clicks[i].append(click)
                    maps[i] = torch.from_numpy(click_maps(clicks[i], (h, w), names)).to(maps)
    finally:
        model.train()
    return torch.cat([x, maps], 1)


__all__ = ["AUTO_SHARE", "MAX_ROUNDS", "with_clicks"]
