"""Agreement over the study's scale: 3000 images x 5 structures, two raters.

Goal (issue 4): ``datatool agreement`` over all 3000 doubly labelled images in under 5 s on
this machine. Baseline, measured in the same run: the naive computation of the same Dice
values (both masks of every image from the store, one whole-image comparison per structure).
Since issue 21 agreement also computes the surface distances (HD95, ASSD, NSD) of every
image and structure both raters labelled; ``--no-surface-baseline`` skips the line that
times ``metrics.surface`` alone over the same masks. The load average is printed beside
each figure (the machine is shared).

    python bench/agreement.py                      # builds a 200-patient demo workspace first
    python bench/agreement.py --workspace WS       # reuse a workspace that has two raters
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from datatool.analysis import metrics
from datatool.analysis.agreement import run_agreement
from datatool.core.catalogue import Rater
from datatool.core.protocol import load_protocol
from datatool.core.workspace import open_workspace
from datatool.labels.annotations import latest_annotations_query

from benchdata import build_rated  # bench/benchdata.py, beside this script


def naive_dice(ws) -> tuple[float, int]:
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        raters = list(s.scalars(select(Rater).where(Rater.kind == "human").order_by(Rater.name)))[
            :2
        ]
        latest = {
            (a.image_id, a.rater_id): a.mask_hash
            for a in s.scalars(latest_annotations_query([r.id for r in raters]))
        }
    images = sorted(
        {i for i, r in latest if r == raters[0].id} & {i for i, r in latest if r == raters[1].id}
    )
    start = time.perf_counter()
    for i in images:
        a = ws.store.get_array(latest[(i, raters[0].id)])
        b = ws.store.get_array(latest[(i, raters[1].id)])
        for st in protocol.structures:
            x, y = a == st.value, b == st.value
            total = x.sum() + y.sum()
            _ = 2 * (x & y).sum() / total if total else np.nan
    return time.perf_counter() - start, len(images)


def naive_surface(ws) -> float:
    """metrics.surface alone on every (image, structure) both raters labelled, one process."""
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        raters = list(s.scalars(select(Rater).where(Rater.kind == "human").order_by(Rater.name)))
        latest = {
            (a.image_id, a.rater_id): a.mask_hash
            for a in s.scalars(latest_annotations_query([r.id for r in raters[:2]]))
        }
    a_id, b_id = raters[0].id, raters[1].id
    images = sorted({i for i, r in latest if r == a_id} & {i for i, r in latest if r == b_id})
    start = time.perf_counter()
    for i in images:
        a, b = ws.store.get_array(latest[(i, a_id)]), ws.store.get_array(latest[(i, b_id)])
        for st in protocol.structures:
            x, y = a == st.value, b == st.value
            if x.any() and y.any():
                metrics.surface(x, y, (0.1, 0.1))
    return time.perf_counter() - start


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--images-per-side", default="7-8")
    parser.add_argument("--no-surface-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        root = args.workspace
        if root is None:
            build_rated(Path(tmp), args.patients, args.images_per_side)
            root = Path(tmp) / "ws"
        ws = open_workspace(root)
        t_naive, n = naive_dice(ws)
        l_naive = load()
        t_surface = None if args.no_surface_baseline else naive_surface(ws)
        l_surface = load()
        start = time.perf_counter()
        report = run_agreement(ws, out_dir=Path(tmp) / "report", resample=True)
        t_agree = time.perf_counter() - start
        l_agree = load()
        start = time.perf_counter()
        run_agreement(ws, out_dir=Path(tmp) / "report2")
        t_again = time.perf_counter() - start
        l_again = load()
        start = time.perf_counter()
        run_agreement(ws, out_dir=Path(tmp) / "report3", surface=False)
        t_plain = time.perf_counter() - start
        l_plain = load()
    print(f"images labelled by both raters: {n}, structures: {len(report.structures)}")
    print(f"naive whole-image Dice loop (baseline): {t_naive:6.2f} s  ({l_naive})")
    if t_surface is not None:
        print(f"metrics.surface alone, one process:     {t_surface:6.2f} s  ({l_surface})")
    print(
        f"datatool agreement (new sample):        {t_agree:6.2f} s  "
        f"ratio {t_agree / t_naive:.2f} of the baseline (goal: under 5 s)  ({l_agree})"
    )
    print(f"datatool agreement (saved sample):      {t_again:6.2f} s  ({l_again})")
    print(
        f"the same, --no-surface:                 {t_plain:6.2f} s  "
        f"ratio {t_plain / t_naive:.2f} of the baseline  ({l_plain})"
    )


if __name__ == "__main__":
    main()
