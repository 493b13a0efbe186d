"""The paper preset on a GPU, end to end (issue 23): a demo study of about 3,000 images
(200 patients, 7-8 images a side), its 6:2:2 split, ``datatool train --preset paper`` (bf16
autocast and channels_last on CUDA: the AMP of ``learning.device``), ``datatool score`` on the
held-out patients, then the selected network's inference speed. Prints training images/s,
inference ms per image at batch 1 and images/s at batch 32, peak GPU memory, and per structure
the ratio of the model's IoU to the raters' (the study's frame and the whole image), with the
load average beside the timings.

Run by ``bench/gpu.sh`` (no setup beyond ``make install``). Without a GPU, ``--tiny`` (or
``GPU_BENCH_TINY=1``) runs the same steps on the CPU at a tiny size (the tiny preset, 6
patients, 2 epochs) so that the script is known to work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import train as bench_train  # bench/train.py, beside this script

from datatool.demo.generator import parse_images_per_side
from datatool.learning.data import split_items
from datatool.learning.device import autocast, channels_last, synchronize
from datatool.learning.inference import load_run_model
from datatool.learning.scoring import score_run
from datatool.learning.training import TrainConfig, train


def _timed(fn, iters: int, device) -> list[float]:
    out = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - start)
    return out


def inference_speed(network, crop: int, device, iters: int) -> tuple[float, float]:
    """(ms per image at batch 1, images/s at batch 32) of the network at its crop size."""
    x1 = channels_last(torch.randn(1, 3, crop, crop, device=device), device)
    x32 = channels_last(torch.randn(32, 3, crop, crop, device=device), device)
    with torch.no_grad(), autocast(device):
        for _ in range(3):  # warm-up (cuDNN's algorithm search), not timed
            network(x1)
            network(x32)
        one = _timed(lambda: network(x1), iters * 4, device)
        many = _timed(lambda: network(x32), iters, device)
    return statistics.median(one) * 1000, 32 / statistics.median(many)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tiny_env = os.environ.get("GPU_BENCH_TINY", "") not in ("", "0")
    parser.add_argument(
        "--tiny", action="store_true", default=tiny_env, help="CPU smoke run at a tiny size"
    )
    parser.add_argument("--patients", type=int, default=None)
    parser.add_argument("--images-per-side", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    args = parser.parse_args()
    tiny = args.tiny
    preset = "tiny" if tiny else "paper"
    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run it on a GPU machine, or with --tiny on the CPU")
    patients = args.patients or (6 if tiny else 200)
    per_side = parse_images_per_side(args.images_per_side or ("2" if tiny else "7-8"))
    epochs = args.epochs or (2 if tiny else None)
    torch.backends.cudnn.benchmark = True
    dev = torch.device(device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        start = time.perf_counter()
        ws = bench_train.build_workspace(Path(tmp), patients, per_side, seed=0)
        n_train = len(split_items(ws, "demo", "train", None)[1].image_ids)
        print(
            f"set-up: {patients} patients, {per_side[0]}-{per_side[1]} images a side, "
            f"{n_train} training images: {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        run = train(ws, "demo", config=TrainConfig(preset=preset, device=device, epochs=epochs))
        seconds = time.perf_counter() - start
        assert run is not None
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        epoch_seconds = sum(h.seconds for h in run.history)
        print(
            f"training: preset {preset}, {run.epochs_done} epochs on {run.device}: "
            f"{seconds:.0f} s wall, {n_train * run.epochs_done / epoch_seconds:.1f} training "
            f"images/s (epochs alone; {n_train * run.epochs_done / seconds:.1f} with "
            f"validation); load average {load:.1f}",
            flush=True,
        )
        print(
            "peak GPU memory (training): "
            + (f"{peak:.2f} GiB" if peak is not None else "- (the CPU run)")
        )
        score = score_run(ws, run.run, device=device, store_predictions=False, figures=False)
        model = load_run_model(ws, run.run, device=device)
        ms1, rate32 = inference_speed(
            model.network, run.config["crop"], dev, iters=20 if dev.type == "cuda" else 2
        )
        print(
            f"inference at {run.config['crop']}x{run.config['crop']}: {ms1:.2f} ms per image at "
            f"batch 1, {rate32:.1f} images/s at batch 32; load average {os.getloadavg()[0]:.1f}"
        )
        print(f"test: {score.images} images; ratio of the model's IoU to the raters'")
        print(f"  {'structure':16s} {'frame':>6s} {'whole':>6s}")
        for v in score.versus_raters:
            print(
                f"  {v.structure:16s} {bench_train._f(v.ratio):>6s} "
                f"{bench_train._f(v.whole_ratio):>6s}"
            )
        ws.close()


if __name__ == "__main__":
    main()
