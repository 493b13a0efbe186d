"""Triplet Attention Net throughput at 473x473: inference (batched and single image) and
training, on the GPU when there is one, else the CPU.

Baselines measured in the same run: the plain model (float32, eager, contiguous) for
inference; the study's 218 ms per image (A100, metrics included) as a fixed reference.
Goals on a GPU (issue 5): inference >= 1500 images/s batched and < 10 ms for one image;
training >= 400 images/s.

    python bench/model.py                       # auto device, paper preset
    python bench/model.py --device cpu --batch 2 --iters 3

``--train PRESET`` instead trains that preset on demo data and scores it against the raters
(bench/train.py): training time, images/s, and per structure the ratio of the model's IoU to
the raters' (issue 16):

    python bench/model.py --train cpu                              # 20 patients, seeds 0 and 1
    python bench/model.py --train paper --patients 200 --images-per-side 7-8 --seeds 0  # GPU

``--train cpu --interactive`` trains with clicks (``train --interactive``) and also runs the
simulated clicker (``score --clicks``) on the test set: per structure NoC and the IoU after
0, 1, 3 and 5 clicks (issue 24; goal NoC <= 2, training within 15 minutes).

``--source-sizes`` times training on source images of the demo's size (480 x 640) and of
600 x 800, through the training pipeline (resize to the preset's size once, as the cache does,
then epochs of augmentation and steps): the preset fixes the input size, so the two rates
should match (issue 23):

    python bench/model.py --source-sizes --preset cpu --device cpu

``--loop PRESET``: retraining in the labelling loop (bench/loop.py): 3 rounds of 20 more
labels from the demo's second rater, a warm start (``train --init-from``) beside a run from
scratch with the same epoch budget:

    python bench/model.py --loop tiny --device cpu --budget 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from datatool.learning.device import autocast, channels_last, resolve_device, synchronize
from datatool.learning.options import DEFAULT_PRESET, DeviceChoice, PresetName
from datatool.model import build_model, segmentation_loss

STUDY_MS = 218.0


def timed(fn, iters: int, device) -> list[float]:
    out = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - start)
    return out


SOURCE_SIZES = {"demo 480x640": (480, 640), "600x800": (600, 800)}


def source_size_rates(preset: str, device, images: int, epochs: int) -> dict[str, float]:
    """Training images/s (the one-off resize included) for synthetic images of each source
    size, with the same network, seed and steps."""
    import math

    import numpy as np

    from datatool.learning.data import fit_to, to_input
    from datatool.model import PRESETS

    p = PRESETS[preset]
    rates = {}
    for name, (h, w) in SOURCE_SIZES.items():
        rng = np.random.default_rng(0)
        src = rng.integers(0, 256, (images, h, w), dtype=np.uint8)
        src_masks = rng.integers(0, 6, (images, h, w), dtype=np.uint8)
        torch.manual_seed(0)
        net = channels_last(build_model(6, p).to(device).train(), device)
        opt = torch.optim.Adam(net.parameters(), lr=p.lr)
        synchronize(device)
        start = time.perf_counter()
        fitted = [fit_to(i, m, p.resize) for i, m in zip(src, src_masks)]
        x_all = torch.as_tensor(np.stack([f[0] for f in fitted])).to(device)
        y_all = torch.as_tensor(np.stack([f[1] for f in fitted])).to(device)
        for _ in range(epochs):
            for k in range(0, images, p.batch):
                angles = (torch.rand(len(x_all[k : k + p.batch]), device=device) * 2 - 1) * (
                    math.radians(p.rotation)
                )
                x, y = to_input(x_all[k : k + p.batch], p.crop, angles, y_all[k : k + p.batch])
                with autocast(device):
                    loss = segmentation_loss(net(channels_last(x, device)), y, loss=p.loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        synchronize(device)
        rates[name] = images * epochs / (time.perf_counter() - start)
        print(
            f"training on {name} source images: {rates[name]:7.1f} images/s at the preset's "
            f"{p.crop}x{p.crop} crop of {p.resize[0]}x{p.resize[1]} ({images} images, {epochs} "
            f"epochs); load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    first, second = rates.values()
    print(f"600x800 / demo: x{second / first:.2f} (goal: about 1, the input size is the preset's)")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=[d.value for d in DeviceChoice])
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET.value, choices=[p.value for p in PresetName]
    )
    parser.add_argument("--batch", type=int, default=None, help="inference batch (GPU 64)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (GPU 32)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument(
        "--train",
        choices=[p.value for p in PresetName],
        help="train this preset on demo data and score it against the raters instead",
    )
    parser.add_argument("--patients", type=int, default=20, help="with --train")
    parser.add_argument("--images-per-side", default="4", help="with --train")
    parser.add_argument("--seeds", default="0,1", help="with --train: demo datasets")
    parser.add_argument("--epochs", type=int, default=None, help="with --train")
    parser.add_argument("--loss", default=None, help="with --train: a lever (train --loss)")
    parser.add_argument("--val-every", type=int, default=None, help="with --train: a lever")
    parser.add_argument("--select", default=None, help="with --train: miou or min (a lever)")
    parser.add_argument(
        "--ema", type=float, default=None, help="with --train: moving-average decay (a lever)"
    )
    parser.add_argument("--zoom", type=float, default=None, help="with --train: a lever")
    parser.add_argument("--gain", type=float, default=None, help="with --train: a lever")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="with --train: build each dataset in KEEP/seed-N and leave it (a new folder)",
    )
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="with --train: train with clicks and run the simulated clicker (issue 24)",
    )
    parser.add_argument(
        "--loop",
        choices=[p.value for p in PresetName],
        help="retraining in the labelling loop with this preset (bench/loop.py): 3 rounds of "
        "20 more labels, a warm start beside a run from scratch",
    )
    parser.add_argument("--start-labels", type=int, default=40, help="with --loop")
    parser.add_argument("--batch-labels", type=int, default=20, help="with --loop")
    parser.add_argument("--budget", type=int, default=10, help="with --loop: epochs a round")
    parser.add_argument(
        "--first-epochs", type=int, default=None, help="with --loop: round 0 (the preset's)"
    )
    parser.add_argument(
        "--source-sizes",
        action="store_true",
        help="training images/s on demo-size and 600x800 source images (the preset's size)",
    )
    args = parser.parse_args()
    if args.loop:
        import loop  # bench/loop.py, beside this script

        from datatool.demo.generator import parse_images_per_side
        from datatool.model import PRESETS

        met = loop.main(
            args.loop,
            args.device,
            args.patients,
            parse_images_per_side(args.images_per_side),
            args.start_labels,
            args.batch_labels,
            args.first_epochs or PRESETS[args.loop].epochs,
            args.budget,
        )
        raise SystemExit(0 if met else 1)
    if args.source_sizes:
        device = resolve_device(args.device)
        gpu = device.type == "cuda"
        source_size_rates(args.preset, device, images=64 if gpu else 16, epochs=3 if gpu else 2)
        return
    if args.train:
        import train  # bench/train.py, beside this script

        from datatool.demo.generator import parse_images_per_side

        met = train.main(
            args.train,
            args.device,
            args.patients,
            parse_images_per_side(args.images_per_side),
            [int(s) for s in args.seeds.split(",")],
            args.epochs,
            {
                k: v
                for k, v in (
                    ("loss", args.loss),
                    ("val_every", args.val_every),
                    ("selection", args.select),
                    ("ema", args.ema),
                    ("zoom", args.zoom),
                    ("gain", args.gain),
                    ("interactive", args.interactive or None),
                )
                if v is not None
            },
            args.keep,
        )
        raise SystemExit(0 if met else 1)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (64 if gpu else 2)
    train_batch = args.train_batch or (32 if gpu else 2)
    iters = args.iters or (20 if gpu else 3)
    torch.backends.cudnn.benchmark = True
    net = build_model(6, args.preset).to(device).eval()
    x1 = torch.randn(1, 3, args.size, args.size, device=device)
    xb = torch.randn(batch, 3, args.size, args.size, device=device)
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    print(
        f"device: {name}, preset {args.preset}, {args.size}x{args.size}, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}"
    )

    with torch.no_grad():  # baseline: float32, eager, contiguous
        net(xb[:1])
        base_b = timed(lambda: net(xb), iters, device)
        base_1 = timed(lambda: net(x1), iters * 2, device)
    fast = channels_last(net, device)  # the same module (in place): measured after the baseline
    if gpu and args.compile:
        fast = torch.compile(fast, mode="max-autotune-no-cudagraphs")
    xb_fast, x1_fast = channels_last(xb, device), channels_last(x1, device)
    with torch.no_grad(), autocast(device):
        for _ in range(3):
            fast(xb_fast)
            fast(x1_fast)
        fast_b = timed(lambda: fast(xb_fast), iters, device)
        fast_1 = timed(lambda: fast(x1_fast), iters * 2, device)

    train_net = channels_last(build_model(6, args.preset).to(device).train(), device)
    opt = torch.optim.Adam(train_net.parameters(), lr=5e-5)
    xt = channels_last(torch.randn(train_batch, 3, args.size, args.size, device=device), device)
    yt = torch.randint(0, 6, (train_batch, args.size, args.size), device=device)

    def step():
        with autocast(device):
            loss = segmentation_loss(train_net(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    train_t = timed(step, iters, device)

    def rate(ts, n):
        return n / statistics.median(ts)

    ms1 = [t * 1000 for t in fast_1]
    print(f"inference, batch {batch}, baseline fp32:   {rate(base_b, batch):9.1f} images/s")
    print(
        f"inference, batch {batch}, optimised:      {rate(fast_b, batch):9.1f} images/s  "
        f"(x{rate(fast_b, batch) / rate(base_b, batch):.2f} the baseline; GPU goal >= 1500)"
    )
    print(f"single image, baseline fp32:         {statistics.median(base_1) * 1000:9.2f} ms")
    print(
        f"single image, optimised:             {statistics.mean(ms1):9.2f} ± "
        f"{statistics.pstdev(ms1):.2f} ms  (GPU goal < 10 ms)"
    )
    print(
        f"ratio to the study's 218 ms:         {statistics.mean(ms1) / STUDY_MS:9.3f}  "
        f"(speed x{STUDY_MS / statistics.mean(ms1):.2f} the study's)"
    )
    print(
        f"training, batch {train_batch}:                 {rate(train_t, train_batch):9.1f} "
        "images/s  (GPU goal >= 400)"
    )


if __name__ == "__main__":
    main()
