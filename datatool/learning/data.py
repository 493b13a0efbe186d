"""The data pipeline of training and scoring: a split's members and their frozen reference
labels, decoded once into a cache as arrays at the preset's size, and turned on the device
into the network's input (a per-sample rotation when training, the centre crop, the gray
normalisation in three channels).

Images and masks go through the same steps: bilinear for the image, nearest neighbour for the
mask, both filled with 0 (black / background) outside the rotated frame.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from datatool.core.atomic import write_bytes_atomic
from datatool.core.catalogue import Annotation, Image, Split, SplitMember
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol
from datatool.core.workspace import Workspace
from datatool.learning.options import Subset, choice
from datatool.learning.splits import get_split

GRAY_MEAN, GRAY_STD = 0.449, 0.226  # ImageNet's channel means/SDs, averaged: gray in 3 channels


def class_lut(protocol: Protocol) -> np.ndarray:
    """Label value -> class index (0 background, then the structures in protocol order)."""
    lut = np.zeros(256, np.uint8)
    for i, s in enumerate(protocol.structures, start=1):
        lut[s.value] = i
    return lut


@dataclass
class Items:
    """Images of a split's part, in image id order, with their reference labels' masks."""

    image_ids: list[int] = field(default_factory=list)
    image_hashes: list[str] = field(default_factory=list)
    mask_hashes: list[str] = field(default_factory=list)

    def head(self, n: int) -> Items:
        """The first ``n`` items."""
        return Items(self.image_ids[:n], self.image_hashes[:n], self.mask_hashes[:n])


def split_items(ws: Workspace, split_name: str, part: str, fold: int | None) -> tuple[Split, Items]:
    """The members of a split's part: ``train``/``val`` (of the fold when given: the other
    folds train, the fold validates) or ``test``, with their frozen reference labels."""
    part = choice(Subset, part, "the set")
    with ws.session() as s:
        split = get_split(s, split_name)
        if fold is not None and not 0 <= fold < max(split.folds, 1):
            if not split.folds:
                raise UsageError(
                    f"split {split_name!r} has no folds (it was made with --folds 0): "
                    "train without --fold, or make a split with --folds K"
                )
            raise UsageError(f"split {split_name!r} has {split.folds} folds (0..{split.folds - 1})")
        q = (
            select(SplitMember.image_id, Image.store_hash, Annotation.mask_hash)
            .join(Image, SplitMember.image_id == Image.id)
            .outerjoin(Annotation, SplitMember.annotation_id == Annotation.id)
            .where(SplitMember.split_id == split.id)
            .order_by(SplitMember.image_id)
        )
        if part == Subset.test:
            q = q.where(SplitMember.subset == Subset.test)
        elif fold is None:
            q = q.where(SplitMember.subset == part)
        elif part == Subset.train:
            q = q.where(SplitMember.subset != Subset.test, SplitMember.fold != fold)
        else:
            q = q.where(SplitMember.subset != Subset.test, SplitMember.fold == fold)
        rows = s.execute(q).all()
        s.expunge(split)
    missing = [i for i, _, m in rows if m is None]
    if missing:
        raise DatatoolError(
            f"split {split_name!r}: {len(missing)} {part} image(s) have no "
            "reference label; run 'datatool split check'"
        )
    items = Items([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    return split, items


def load_arrays(
    ws: Workspace, items: Items, resize: tuple[int, int], lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x H x W uint8) and class-index masks at ``resize``, decoded once and cached:
    whatever the source images' size, training works on the preset's (:func:`fit_to`)."""
    key = hashlib.sha256(
        json.dumps([items.image_hashes, items.mask_hashes, list(resize), lut.tolist()]).encode()
    ).hexdigest()[:24]
    cache = ws.meta_dir / "cache" / f"{key}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return data["images"], data["masks"]
    h, w = resize
    images = np.empty((len(items.image_ids), h, w), np.uint8)
    masks = np.empty_like(images)
    for k, (ih, mh) in enumerate(zip(items.image_hashes, items.mask_hashes)):
        images[k], masks[k] = fit_to(ws.store.get_array(ih), lut[ws.store.get_array(mh)], resize)
    cache.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, images=images, masks=masks)
    write_bytes_atomic(cache, buf.getvalue())
    return images, masks


def fit_to(
    image: np.ndarray, mask: np.ndarray, resize: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """An image (bilinear) and its label map (nearest neighbour) at ``resize`` (height,
    width), the preset's size: the network's input never depends on the source's size."""
    from PIL import Image as PILImage

    h, w = resize
    if image.shape != (h, w):
        image = np.asarray(PILImage.fromarray(image).resize((w, h), PILImage.Resampling.BILINEAR))
    return image, resize_mask(mask, resize)


def resize_mask(mask: np.ndarray, resize: tuple[int, int]) -> np.ndarray:
    """A label map (uint8) at ``resize`` (height, width), nearest neighbour, as training
    sees it."""
    from PIL import Image as PILImage

    h, w = resize
    if mask.shape == (h, w):
        return mask
    return np.asarray(PILImage.fromarray(mask).resize((w, h), PILImage.Resampling.NEAREST))


# --------------------------------------------------------------------------- the frame


def crop_offsets(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """(top, left) of the centred ``size`` x ``size`` window in an image of ``shape`` (its
    last two axes; a side shorter than ``size`` is kept whole)."""
    h, w = shape[-2:]
    return max((h - size) // 2, 0), max((w - size) // 2, 0)


def frame_description(resize: tuple[int, int], crop: int) -> str:
    """The scored frame in words: the resized image and the window the centre crop keeps (a
    side shorter than the crop is kept whole, so a 320 crop of 240 x 320 keeps all of it)."""
    h, w = min(resize[0], crop), min(resize[1], crop)
    kept = "the whole of it" if (h, w) == tuple(resize) else f"centre crop {h}x{w}"
    return f"resized to {resize[0]}x{resize[1]}, {kept}"


def centre_crop(a, size: int):
    """The centred ``size`` x ``size`` window of the last two axes (a numpy array or a
    tensor; a view, not a copy)."""
    top, left = crop_offsets(a.shape, size)
    return a[..., top : top + size, left : left + size]


def uncrop(a: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """A ``size`` centre crop put back where :func:`centre_crop` took it from, in a zero
    canvas of ``shape``: the inverse of the crop, 0 outside it."""
    canvas = np.zeros(shape, a.dtype)
    top, left = crop_offsets(shape, size)
    canvas[top : top + a.shape[0], left : left + a.shape[1]] = a
    return canvas


# --------------------------------------------------------------------------- tensors


def rotate(images, masks, angles, scales=None):
    """Rotate each sample by its own angle (radians) about its centre, and with ``scales``
    (B factors) zoom it by its own factor (> 1: in): images bilinear, masks nearest
    neighbour, both filled with 0 outside. images: B x 1 x H x W float."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    if scales is not None:  # the output samples a region 1/scale the size of the input's
        cos, sin = cos / scales, sin / scales
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(
        masks.unsqueeze(1).to(images.dtype),
        grid,
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    ).squeeze(1)
    return images, masks.round().long()


def to_input(images_u8, size: int, angles=None, masks_u8=None, flips=None, scales=None, tones=None):
    """uint8 B x H x W (on the device) -> normalised B x 3 x size x size (and masks).
    ``flips`` (bool, B) mirrors those samples left-right first; ``angles`` rotates each and
    ``scales`` zooms each (with ``angles``); ``tones`` (B x 2: gain, gamma) changes each
    image's brightness, ``min(1, gain * x ** gamma)`` of its intensities x in [0, 1]."""
    if flips is not None:
        import torch

        mirror = flips.view(-1, 1, 1)
        images_u8 = torch.where(mirror, images_u8.flip(-1), images_u8)
        if masks_u8 is not None:
            masks_u8 = torch.where(mirror, masks_u8.flip(-1), masks_u8)
    x = images_u8.unsqueeze(1).float().div_(255.0)
    y = masks_u8.long() if masks_u8 is not None else None
    if tones is not None:
        gain, gamma = tones[:, 0].view(-1, 1, 1, 1), tones[:, 1].view(-1, 1, 1, 1)
        x = (x.pow(gamma) * gain).clamp_(max=1.0)
    if angles is not None:
        x, y = rotate(x, masks_u8, angles, scales)
    x = centre_crop(x, size)
    x = ((x - GRAY_MEAN) / GRAY_STD).expand(-1, 3, -1, -1)
    return x, (centre_crop(y, size) if y is not None else None)


__all__ = [
    "GRAY_MEAN",
    "GRAY_STD",
    "Items",
    "centre_crop",
    "class_lut",
    "crop_offsets",
    "fit_to",
    "frame_description",
    "load_arrays",
    "resize_mask",
    "rotate",
    "split_items",
    "to_input",
    "uncrop",
]
