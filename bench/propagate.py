"""Label propagation through the demo's cine loops against copying the labelled frame.

The demo's loops (``datatool demo-data --cines K``: 8 frames of 480 x 640, the anatomy sliding
about 6 mm over the loop, fresh speckle in every frame, both raters' labels on every frame)
are read back from the DICOM files (banner and all) and the raters' W x H x N NIfTI volumes.
For each rater, each labelled frame of each loop drafts the other frames
(``labels.propagate``); a draft at distance 1, 2 and 4 frames is scored against the rater's
own label of that frame: IoU per structure (structures absent from both left out). Baseline,
in the same run: the labelled frame's label map copied unchanged to the other frame. Printed:
mean IoU of each, their ratio, the number of pairs, and the load average beside each figure;
then the time per drafted frame (registration and warping, one loop from its first frame).

Goal (issue 22): drafts better than copying at every distance, well under 1 s per frame on
the 2-core CPU.

    python bench/propagate.py                       # 8 cines, direct mode
    python bench/propagate.py --cines 4 --modes chain,direct
    python bench/propagate.py --pairs 4   # also: two labelled frames, nearer vs blended
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datatool.core.protocol import load_protocol  # noqa: E402
from datatool.demo.generator import write_demo_dataset  # noqa: E402
from datatool.labels.propagate import Loop  # noqa: E402


def load() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else None


def read_loops(data: Path) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """(name, frames N x H x W, rater -> label maps N x H x W) for every demo cine."""
    loops = []
    for path in sorted((data / "dicom").rglob("*_cine.dcm")):
        frames = np.asarray(pydicom.dcmread(path).pixel_array, np.uint8)
        rel = path.relative_to(data / "dicom").with_suffix("")
        labels = {}
        for rater in ("rater1", "rater2"):
            volume = data / "labels" / rater / f"{rel}.nii.gz"
            labels[rater] = sitk.GetArrayFromImage(sitk.ReadImage(str(volume))).astype(np.uint8)
            assert labels[rater].shape == frames.shape, (volume, labels[rater].shape)
        loops.append((f"cine {len(loops) + 1}", frames, labels))  # no MRN folders printed
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cines", type=int, default=8, help="demo cine loops to make")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="direct", help="chain, direct or chain,direct")
    parser.add_argument("--distances", default="1,2,4")
    parser.add_argument("--data", type=Path, help="an existing demo-data folder with cines")
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        metavar="GAP",
        help="also: two frames GAP apart labelled, the frames between drafted from the nearer "
        "one against blended from both (and copying the nearer)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    distances = [int(d) for d in args.distances.split(",")]
    protocol = load_protocol()
    names = {s.value: s.name for s in protocol.structures}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "demo"
            start = time.perf_counter()
            write_demo_dataset(
                data,
                patients=math.ceil(args.cines / 2),
                seed=args.seed,
                images_per_side=(1, 1),
                cines=args.cines,
            )
            print(f"demo data: {args.cines} cines, {time.perf_counter() - start:.0f} s ({load()})")
        loops = read_loops(data)
        if not loops:
            sys.exit(f"no *_cine.dcm under {data / 'dicom'}: make it with --cines K")
        print(f"{len(loops)} loops of {loops[0][1].shape[0]} frames, {loops[0][1].shape[1:]} px")
        for mode in modes:
            scores: dict[tuple[int, int], list[tuple[float, float]]] = {}
            per_frame: list[float] = []
            start = time.perf_counter()
            for _name, frames, labels in loops:
                n = frames.shape[0]
                loop = Loop(frames)
                first = loop.propagate({0: labels["rater1"][0]}, mode=mode)  # timed, fresh
                per_frame.append(first.seconds / (n - 1))
                for lab in labels.values():
                    for s in range(n):
                        drafts = loop.propagate({s: lab[s]}, mode=mode).drafts
                        for d in distances:
                            for t in (s - d, s + d):
                                if not 0 <= t < n:
                                    continue
                                for value in names:
                                    truth = lab[t] == value
                                    got = iou(drafts[t] == value, truth)
                                    copied = iou(lab[s] == value, truth)
                                    if got is not None and copied is not None:
                                        scores.setdefault((d, value), []).append((got, copied))
            total = time.perf_counter() - start
            print(
                f"\nmode {mode}: IoU against the rater's own label of the frame, "
                f"propagated vs copied (baseline), {total:.0f} s in all ({load()})"
            )
            print(f"{'distance':>8}  {'structure':<16} {'pairs':>5} {'drafts':>7} {'copy':>7} "
                  f"{'ratio':>6}")  # fmt: skip
            for d in distances:
                rows = [(v, scores.get((d, v), [])) for v in names]
                for value, pairs in [*rows, (0, [p for _, ps in rows for p in ps])]:
                    if not pairs:
                        continue
                    got, copied = (float(np.mean(x)) for x in zip(*pairs))
                    label = names.get(value, "all structures")
                    print(f"{d:>8}  {label:<16} {len(pairs):>5} {got:>7.3f} {copied:>7.3f} "
                          f"{got / copied:>6.2f}  ({load()})")  # fmt: skip
            if args.pairs:
                between(loops, names, args.pairs, mode)
            print(
                f"time per drafted frame (one loop from its first frame): mean "
                f"{np.mean(per_frame):.3f} s, max {np.max(per_frame):.3f} s over "
                f"{len(per_frame)} loops ({load()})"
            )


def between(loops, names: dict[int, str], gap: int, mode: str) -> None:
    """Frames between two labelled frames ``gap`` apart: drafted from the nearer labelled frame
    (ties: the earlier), blended from both, and the nearer one copied, against the rater's own
    label of the frame (mean IoU over structures present in it or the draft)."""
    found: dict[str, list[float]] = {"nearest": [], "blend": [], "copy": []}
    for _name, frames, labels in loops:
        loop = Loop(frames)
        for lab in labels.values():
            for a in range(frames.shape[0] - gap):
                b = a + gap
                given = {a: lab[a], b: lab[b]}
                near = loop.propagate(given, mode=mode)
                mixed = loop.propagate(given, mode=mode, blend=True)
                for t in range(a + 1, b):
                    nearer = lab[near.source[t]]
                    for value in names:
                        truth = lab[t] == value
                        for key, draft in (
                            ("nearest", near.drafts[t]),
                            ("blend", mixed.drafts[t]),
                            ("copy", nearer),
                        ):
                            score = iou(draft == value, truth)
                            if score is not None:
                                found[key].append(score)
    got = {k: float(np.mean(v)) for k, v in found.items()}
    print(
        f"two frames {gap} apart labelled, the {gap - 1} between drafted ({mode}): nearest "
        f"{got['nearest']:.3f}, blend {got['blend']:.3f}, copy of the nearer {got['copy']:.3f}; "
        f"blend / nearest {got['blend'] / got['nearest']:.3f}, nearest / copy "
        f"{got['nearest'] / got['copy']:.2f} ({len(found['blend'])} scores, {load()})"
    )


if __name__ == "__main__":
    main()
