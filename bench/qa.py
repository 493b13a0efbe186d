"""The review queue's checks over the study's scale: 3000 images x 5 structures, two raters and
a model.

Goal (issue 10): ``datatool qa --run RUN`` under twice the baseline and under 30 s on this
machine. Baseline, measured in the same run: reading every mask the checks use once from the
store (both raters' labels and the model's draft of every image), in one process.

The model's drafts are synthetic (training at this scale is out of reach on a CPU): rater 1's
label moved by 3 pixels, stored as the whole-image drafts of a run recorded for the purpose
(``labels.drafts``), so ``qa`` finds a draft for every image and predicts nothing.

    python bench/qa.py                      # builds a 200-patient demo workspace first
    python bench/qa.py --workspace WS       # build into WS, or reuse it when it is there

``--planted`` measures what the queue finds instead (issue 21): on a demo workspace with its
natural inter-rater variation (the demo's own rater errors left out) it plants errors of six
kinds at known places and shows a share of the images mirrored (``datatool.demo.planted``),
runs the checks and prints the recall per kind, the precision at k (k: the errors planted and
the images mirrored) and the queue's length per labelled image. Goals: recall >= 0.95 for
missed, swap, wrong_image and blob, >= 0.8 for shift and dilation; precision at k >= 0.8; a
mirrored image raises no flag but its own one.

    python bench/qa.py --planted            # 20 patients, 4 images per side, 10 errors a kind
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from datatool.analysis.qa import list_queue, run_qa
from datatool.core.catalogue import Image, Rater, Run, RunStatus, Split, audit
from datatool.core.protocol import load_protocol
from datatool.core.workspace import open_workspace
from datatool.labels.annotations import latest_annotations_query, store_annotations
from datatool.labels.drafts import draft_ref, drafts_of, model_rater, model_rater_name
from datatool.learning.inference import ensure_drafts

from benchdata import build_rated  # bench/benchdata.py, beside this script

CHECKPOINT = "b" * 64  # the synthetic run's checkpoint (its drafts name it)


def synthetic_run(ws) -> int:
    """A run recorded for the benchmark, with rater 1's labels moved by 3 px as its drafts."""
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        run = s.scalar(select(Run).where(Run.code_version == "bench/qa.py"))
        if run is not None:
            return run.id
        split = Split(name="bench-qa", content_hash="0" * 64, seed=0, ratios="1:0:0", folds=0)
        s.add(split)
        s.flush()
        run = Run(split_id=split.id, split_hash="0" * 64, preset="tiny", config={}, seed=0,
                  code_version="bench/qa.py", device="none", status=RunStatus.done,
                  epochs_done=0, best_checkpoint=CHECKPOINT)  # fmt: skip
        s.add(run)
        s.flush()
        audit(s, "bench", "synthetic run", run=run.id)
        run_id = run.id
        rater1 = s.scalar(select(Rater.id).where(Rater.name == "rater1"))
        labels = {a.image_id: a.mask_hash for a in s.scalars(latest_annotations_query([rater1]))}
    ids = sorted(labels)
    start = time.perf_counter()
    for k in range(0, len(ids), 250):
        chunk = ids[k : k + 250]
        with ws.session() as s:
            rater = model_rater(s, run_id)
            images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(chunk)))}
            entries = [
                (images[i], np.roll(ws.store.get_array(labels[i]), 3, axis=1),
                 model_rater_name(run_id), draft_ref(run_id, CHECKPOINT))
                for i in chunk
            ]  # fmt: skip
            store_annotations(s, ws.store, rater, entries, protocol)
    print(f"synthetic drafts of run {run_id}: {len(ids)} in {time.perf_counter() - start:.0f} s")
    return run_id


def cpu() -> float:
    """CPU seconds of this process and its finished children (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def baseline(ws, run_id: int) -> tuple[float, float, int]:
    """Read every mask the checks use once: both raters' labels and the draft of each image.
    Returns (wall s, CPU s, masks)."""
    with ws.session() as s:
        raters = list(s.scalars(select(Rater.id).where(Rater.kind == "human")))
        hashes = [a.mask_hash for a in s.scalars(latest_annotations_query(raters))]
        hashes += [a.mask_hash for a in drafts_of(s, run_id).values()]
    start, start_cpu = time.perf_counter(), cpu()
    for h in hashes:
        ws.store.get_array(h)
    return time.perf_counter() - start, cpu() - start_cpu, len(hashes)


def planted(patients: int, images_per_side: str, per_kind: int, mirrored: float) -> None:
    """The planted-error benchmark (see the module's docstring)."""
    from datatool.core.workspace import init_workspace
    from datatool.demo.generator import parse_images_per_side, write_demo_dataset
    from datatool.demo.planted import plant, score

    from benchdata import ingest_rated

    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_demo_dataset(root / "data", patients=patients, seed=3,
                           images_per_side=parse_images_per_side(images_per_side),
                           rater_errors=False)  # fmt: skip
        init_workspace(root / "ws")
        ws = open_workspace(root / "ws")
        ingest_rated(ws, root / "data")
        print(f"set-up (demo data, ingest, two raters): {time.perf_counter() - start:.0f} s")
        plan = plant(ws, per_kind, mirrored_share=mirrored, seed=0)
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = run_qa(ws)
        took = time.perf_counter() - start
        got = score(ws, plan)
        load_after = os.getloadavg()
        queue = list_queue(ws, limit=12)
        ws.close()
    print(f"load average before: {load_before[0]:.1f}, after: {load_after[0]:.1f} (1 min); "
          f"datatool qa: {took:.1f} s")  # fmt: skip
    print(f"labelled images: {plan.images}, labels checked: {result.labels}; planted: "
          f"{len(plan.planted)} errors, {len(plan.mirrored)} images mirrored")  # fmt: skip
    goals = {"missed": 0.95, "swap": 0.95, "wrong_image": 0.95, "blob": 0.95, "shift": 0.8,
             "dilation": 0.8, "mirrored": 0.95}  # fmt: skip
    for kind, recall in got.recall.items():
        print(f"  recall {kind:12s} {recall:5.2f}  ({got.found.get(kind, 0)} of "
              f"{got.planted[kind]}; goal >= {goals.get(kind, 0):.2f})")  # fmt: skip
    print(f"precision at k={got.k}: {got.precision_at_k:.2f} (goal >= 0.80)")
    print(f"queue: {got.queue} open items, {got.queue_per_image:.2f} per labelled image")
    print(f"flags on mirrored images besides their own one: {got.mirrored_extra} (goal 0)")
    for note in result.notes:
        print(f"  note: {note}")
    for p in got.missed:
        print(f"  not found: {p.kind} on image {p.image_id} ({p.rater}, {', '.join(p.structures)})")
    for it in queue.items:
        print(f"  {it.rank}. {it.image} {it.rater} {it.structure}: {it.reason} ({it.summary})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, help="build into this folder, or reuse it")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--images-per-side", default="7-8")
    parser.add_argument("--planted", action="store_true", help="the planted-error benchmark")
    parser.add_argument("--per-kind", type=int, default=10, help="--planted: errors a kind")
    parser.add_argument("--mirrored", type=float, default=0.05, help="--planted: share mirrored")
    args = parser.parse_args()
    if args.planted:
        patients = args.patients if args.patients != 200 else 20
        per_side = args.images_per_side if args.images_per_side != "7-8" else "4"
        planted(patients, per_side, args.per_kind, args.mirrored)
        return
    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        root = args.workspace or Path(tmp)
        if not (root / "ws" / ".datatool").is_dir():
            build_rated(root, args.patients, args.images_per_side)
        ws = open_workspace(root / "ws")
        run_id = synthetic_run(ws)
        load_before = os.getloadavg()
        t_base, c_base, n_masks = baseline(ws, run_id)
        start, start_cpu = time.perf_counter(), cpu()
        first = run_qa(ws, run=run_id, drafts=ensure_drafts)
        t_first, c_first = time.perf_counter() - start, cpu() - start_cpu
        start, start_cpu = time.perf_counter(), cpu()
        again = run_qa(ws, run=run_id, drafts=ensure_drafts)
        t_again, c_again = time.perf_counter() - start, cpu() - start_cpu
        t_base2, c_base2, _ = baseline(ws, run_id)  # again, the load may have changed
        load_after = os.getloadavg()
        queue = list_queue(ws, limit=5)
    print(
        f"images: {first.images}, label versions checked: {first.labels}, masks read by the "
        f"baseline: {n_masks}; cores: {os.cpu_count()}"
    )
    print(f"load average before: {load_before[0]:.1f}, after: {load_after[0]:.1f} (1 min)")
    base = (t_base + t_base2) / 2  # the baseline before and after
    base_cpu = (c_base + c_base2) / 2
    print(
        f"baseline (every mask read once, one process): {t_base:6.2f} s before, "
        f"{t_base2:.2f} s after ({base_cpu:.2f} s CPU)"
    )
    print(
        f"datatool qa --run (first, {first.drafts_reused} drafts reused): {t_first:6.2f} s  "
        f"ratio {t_first / base:.2f} of the baseline (goal: under 2, and under 30 s); "
        f"CPU {c_first:.2f} s, ratio {c_first / base_cpu:.2f}"
    )
    print(
        f"datatool qa --run (again, flags refreshed): {t_again:6.2f} s  "
        f"ratio {t_again / base:.2f}; CPU {c_again:.2f} s, ratio {c_again / base_cpu:.2f}"
    )
    print(f"open flags: {again.open} " + ", ".join(f"{r.reason} {r.open}" for r in again.reasons))
    for it in queue.items:
        print(f"  {it.rank}. {it.image} {it.rater} {it.structure}: {it.reason} ({it.summary})")


if __name__ == "__main__":
    main()
