"""Retraining in the labelling loop (issue 23): after each batch of new labels, a run that
starts from the previous round's weights (``train --init-from``) beside a run from scratch
with the same epoch budget.

A demo workspace whose images come in unlabelled; the demo's second rater (``rater2``)
labels them in batches, in file order, and is the reference (``split create --reference
rater2``). Round 0: the first ``--start`` images labelled, split ``r0`` (6:2:2 by patient,
no folds), one run from scratch with the round-0 budget. Rounds 1..3: ``--batch-labels``
more images labelled (their ITK-SNAP files synced), split ``rK`` made with ``--extend`` (every
patient keeps its set; new patients are dealt), then a warm run from the previous round's
warm run and a run from scratch, both with ``--budget`` epochs, both scored on ``rK``'s test
patients. Per round: the ratio of the model's IoU to the raters' per structure (whole image),
the training time of each, and when (seconds of training, epoch) the warm run first reached
the best validation mIoU of the scratch run. The demo's first rater labels every image: the
raters' yardstick of the ratio.

Goal: from round 2 on, the warm start reaches the from-scratch run in at most half the time.

Run by ``bench/model.py --loop``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.generator import write_demo_dataset
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.sync import sync_itksnap
from datatool.learning.scoring import score_run
from datatool.learning.splits import create_split
from datatool.learning.training import RunSummary, TrainConfig, train

ROUNDS = 3


@dataclass
class Trained:
    run: RunSummary
    seconds: float
    load: float
    ratios: dict[str, float | None]

    @property
    def epoch_seconds(self) -> float:
        """The epochs' training time (validation left out), as ``reached`` counts it."""
        return sum(h.seconds for h in self.run.history)

    def reached(self, target: float | None) -> tuple[float, int] | None:
        """(seconds, epoch from 1) when the validation mIoU first reached ``target``."""
        if target is None:
            return None
        elapsed = 0.0
        for h in self.run.history:
            elapsed += h.seconds
            if h.val_miou is not None and h.val_miou >= target:
                return elapsed, h.epoch + 1
        return None


def _label(data: Path, staging: Path, files: list[Path]) -> None:
    """Copy rater2's label files (as the rater saves them) into the folder that is synced."""
    for f in files:
        dest = staging / f.relative_to(data / "labels" / "rater2")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)


def _train(ws, split: str, preset: str, device: str, epochs: int, init: int | None) -> Trained:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    run = train(
        ws, split, config=TrainConfig(preset=preset, device=device, epochs=epochs, init_from=init)
    )
    seconds = time.perf_counter() - start
    assert run is not None
    score = score_run(ws, run.run, device=device, store_predictions=False, figures=False)
    ratios = {v.structure: v.whole_ratio for v in score.versus_raters}
    return Trained(run, seconds, load, ratios)


def _f(v: float | None) -> str:
    return "  -  " if v is None else f"{v:5.2f}"


def main(
    preset: str,
    device: str,
    patients: int,
    per_side: tuple[int, int],
    start_labels: int,
    batch_labels: int,
    first_epochs: int,
    budget: int,
) -> bool:
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        root = Path(tmp)
        data = root / "data"
        write_demo_dataset(data, patients=patients, seed=0, images_per_side=per_side)
        meta = root / "ws" / ".datatool"
        meta.mkdir(parents=True)
        (meta / "secret.key").write_text(hashlib.sha256(b"bench loop").hexdigest() + "\n")
        (meta / "secret.key").chmod(0o600)
        init_workspace(root / "ws")
        ws = open_workspace(root / "ws")
        ingest(ws, [data / "dicom"])
        # rater1 labels everything: the raters' yardstick on the test images (the ratio)
        add_rater(ws, "rater1")
        sync_itksnap(ws, data / "labels" / "rater1", "rater1", dicom_root=data / "dicom")
        add_rater(ws, "rater2")
        files = sorted(p for p in (data / "labels" / "rater2").rglob("*") if p.is_file())
        staging = root / "rater2"
        labelled = min(start_labels, len(files))
        _label(data, staging, files[:labelled])
        sync_itksnap(ws, staging, "rater2", dicom_root=data / "dicom")
        create_split(ws, "r0", ratios="6:2:2", folds=0, seed=0, reference="rater2")
        first = _train(ws, "r0", preset, device, first_epochs, None)
        print(
            f"round 0: {labelled} images labelled by rater2, from scratch {first_epochs} epochs: "
            f"{first.seconds:.0f} s (load {first.load:.1f})",
            flush=True,
        )
        previous = first.run.run
        names = list(first.ratios)
        print(f"  {'':24s}" + " ".join(f"{n[:12]:>12s}" for n in names) + "   seconds")
        met = []
        for r in range(1, ROUNDS + 1):
            batch = files[labelled : labelled + batch_labels]
            labelled += len(batch)
            _label(data, staging, batch)
            sync_itksnap(ws, staging, "rater2", dicom_root=data / "dicom")
            create_split(ws, f"r{r}", extend=f"r{r - 1}", reference="rater2")
            warm = _train(ws, f"r{r}", preset, device, budget, previous)
            scratch = _train(ws, f"r{r}", preset, device, budget, None)
            previous = warm.run.run
            target = scratch.run.best_val_miou
            hit = warm.reached(target)
            half = hit is not None and hit[0] <= scratch.epoch_seconds / 2
            if r >= 2:
                met.append(half)
            print(f"round {r}: {labelled} images labelled, split r{r}, {budget} epochs each")
            for label, t in (
                (f"warm (from run {warm.run.parent})", warm),
                ("from scratch", scratch),
            ):
                print(
                    f"  {label:24s}"
                    + " ".join(f"{_f(t.ratios.get(n)):>12s}" for n in names)
                    + f"   {t.seconds:5.0f} s (load {t.load:.1f}), val mIoU "
                    f"{_f(t.run.best_val_miou)}",
                    flush=True,
                )
            reach = "never"
            if hit is not None:
                reach = f"after {hit[0]:.0f} s (epoch {hit[1]} of {budget})"
            print(
                f"  warm reached the scratch run's validation mIoU {_f(target).strip()} {reach}; "
                f"scratch trained {scratch.epoch_seconds:.0f} s: "
                f"{'within' if half else 'not within'} half",
                flush=True,
            )
        ws.close()
    ok = bool(met) and all(met)
    verdict = "met" if ok else "not met"
    print(f"goal (from round 2, warm reaches scratch in <= half the time): {verdict}")
    return ok
