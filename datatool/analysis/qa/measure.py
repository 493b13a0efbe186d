"""Reading each image's masks once (in worker processes for large workspaces) and measuring
every structure of the labels checked."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from datatool.analysis import shape
from datatool.analysis.qa.inputs import _Inputs, _Label
from datatool.core.catalogue import RaterKind
from datatool.core.processes import pool_context, worker_count
from datatool.core.protocol import Protocol
from datatool.core.store import Store
from datatool.core.workspace import Workspace

POOL_FROM = 200  # images; below this, checking in this process is faster than a pool
THUMB_STEP = 6  # a label's thumbnail keeps every 6th row and column (wrong-image check)

_WORKER: dict[str, Any] = {}


class Thumb(NamedTuple):
    """A label's thumbnail (every THUMB_STEP-th row and column), zlib-compressed: a label map
    is mostly background, so 8.4 KB of a 480 x 640 map's thumbnail keep in about 0.3 KB. Every
    human label of a run of the checks waits in memory as one until the wrong-image check,
    and the checks must stay under 1 GB at 30,000 images (issue 26)."""

    shape: tuple[int, ...]
    dtype: str
    data: bytes

    @classmethod
    def of(cls, label: np.ndarray) -> Thumb:
        small = np.ascontiguousarray(label[::THUMB_STEP, ::THUMB_STEP])
        return cls(small.shape, small.dtype.str, zlib.compress(small.tobytes(), 1))

    def array(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), self.dtype).reshape(self.shape)


def _init_worker(store_root: str, specs: tuple, swap_ratio: float) -> None:
    """``specs``: (value, max components, holes allowed, in view) per structure."""
    _WORKER["store"] = Store(Path(store_root))
    _WORKER["specs"] = specs
    _WORKER["swap_ratio"] = swap_ratio


def _measure_image(job: tuple) -> tuple[int, dict, dict]:
    """Every measure of one image's checked labels (the masks read once): per label and
    structure present, its centroid, extra components, holes, edge contact and, for each
    label it is compared with, which values of that label the structure's pixels hold; and a
    thumbnail of each checked human label (:class:`Thumb`), to compare it with the labels of
    the patient's other images."""
    image_id, shape_rc, regions, labels, hashes, stats = job
    store: Store = _WORKER["store"]
    specs, ratio = _WORKER["specs"], _WORKER["swap_ratio"]
    masks = {a: store.get_array(h) for a, h in hashes.items()}
    out: dict[int, dict] = {}
    thumbs: dict[int, Thumb] = {}
    for annotation_id, compared, human in labels:
        label = masks[annotation_id]
        if human:
            thumbs[annotation_id] = Thumb.of(label)
        per: dict[int, dict] = {}
        for value, max_components, holes_allowed, in_view in specs:
            area, _, components, box = stats[annotation_id][value]
            if not area:
                continue
            binary = shape.crop(label, box) == value
            rec: dict[str, Any] = {}
            rec["centroid"] = shape.centroid(binary, box[0], box[1])
            if max_components is not None and components > max_components:
                rec["components"] = shape.extra_component_px(binary, max_components)
            if not holes_allowed:
                rec["holes"] = shape.holes(binary)
            if in_view and not shape.inside_view(box, shape_rc, regions):
                near = shape.near_outside(shape_rc, regions)
                rec["edge"] = shape.edge_contact(binary, shape.crop(near, box))
            rec["vs"] = {
                other: shape.cross_counts(binary, shape.crop(masks[other], box), value, ratio, area)
                for other in compared
            }
            per[value] = rec
        out[annotation_id] = per
    return image_id, out, thumbs


def _jobs(inputs: _Inputs) -> Iterator[tuple]:
    """One job per image: its labels to check, each with the labels it is compared with (the
    human raters' labels but its own, and the draft) and whether it is a human label (only
    those need a thumbnail: the wrong-image check compares human labels)."""
    by_image: dict[int, list[_Label]] = defaultdict(list)
    for lab in inputs.checked:
        by_image[lab.image_id].append(lab)
    for image_id, labels in sorted(by_image.items()):
        info = inputs.images[image_id]
        draft = inputs.drafts.get(image_id)
        hashes: dict[int, str] = {}
        checks = []
        for lab in labels:
            compared = [*_backers(inputs, lab), *([draft] if draft is not None else [])]
            checks.append(
                (
                    lab.annotation_id,
                    [c.annotation_id for c in compared],
                    lab.kind == RaterKind.human,
                )
            )
            for x in (lab, *compared):
                hashes[x.annotation_id] = x.mask_hash
        yield (
            image_id,
            (info.rows, info.cols),
            info.regions,
            checks,
            hashes,
            {i: inputs.stats[i] for i in hashes},
        )


def _backers(inputs: _Inputs, lab: _Label) -> list[_Label]:
    """The human labels of the image that may back this one (all but itself)."""
    return [o for o in inputs.humans.get(lab.image_id, []) if o.annotation_id != lab.annotation_id]


def _others(inputs: _Inputs, lab: _Label) -> list[_Label]:
    """The other human raters' latest labels of the image, which a human label is checked
    against (none for a consensus label, which is made from them)."""
    if lab.kind != RaterKind.human:
        return []
    return [o for o in inputs.humans.get(lab.image_id, []) if o.annotation_id != lab.annotation_id]


def _measure(
    ws: Workspace,
    protocol: Protocol,
    inputs: _Inputs,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
    swap_ratio: float = shape.SWAP_RATIO,
) -> tuple[dict[int, dict], dict[int, Thumb]]:
    """The measures per label (see :func:`_measure_image`) and the human labels' thumbnails;
    the jobs (:func:`_jobs`, one per image) are generated, never held as a list of objects
    (the pool's feeder pickles them as it takes them)."""
    specs = tuple((s.value, s.max_components, s.holes, s.in_view) for s in protocol.structures)
    n = worker_count(workers, cap=8)
    results: dict[int, dict] = {}
    thumbs: dict[int, Thumb] = {}
    total = len({lab.image_id for lab in inputs.checked})
    jobs = _jobs(inputs)
    if total >= POOL_FROM and n > 1:
        with pool_context().Pool(
            n, initializer=_init_worker, initargs=(str(ws.store.root), specs, swap_ratio)
        ) as pool:
            for k, (_, out, th) in enumerate(pool.imap(_measure_image, jobs, chunksize=64), 1):
                results.update(out)
                thumbs.update(th)
                if progress:
                    progress(k, total)
    else:
        _init_worker(str(ws.store.root), specs, swap_ratio)
        for k, job in enumerate(jobs, 1):
            _, out, th = _measure_image(job)
            results.update(out)
            thumbs.update(th)
            if progress:
                progress(k, total)
    return results, thumbs
