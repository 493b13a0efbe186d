"""Pre-labelling throughput against bare inference, measured in the same run.

Baseline: ``learning.inference.predict`` of a run on every image of the study, the images
already read from the store, nothing else. Then ``datatool prelabel`` of the same run for a
rater whose project holds the same images, against a real Label Studio server started here
(the .lsvenv of ``make test``): model loading, listing the tasks, reading the images from the
store, the same inference, RLE encoding, uploading the predictions and setting the project,
all timed together. Prints drafts per second of both and their ratio.

Goal (issue 9): RLE encoding and upload cost less than the inference itself, i.e. prelabel
runs at >= 0.5 x the drafts per second of bare inference (tiny preset, CPU).

    python bench/prelabel.py                     # 10 patients, 80 images, tiny preset, CPU
    python bench/prelabel.py --preset paper --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/: the demo loader and the Label Studio server launcher

from datatool.analysis.consensus import make_consensus  # noqa: E402
from datatool.assist.prelabel import prelabel  # noqa: E402
from datatool.core.workspace import init_workspace, open_workspace  # noqa: E402
from datatool.labels.annotations import add_rater  # noqa: E402
from datatool.labels.labelstudio.push import push  # noqa: E402
from datatool.learning.inference import load_run_model, predict  # noqa: E402
from datatool.learning.splits import create_split  # noqa: E402
from datatool.learning.training import TrainConfig, train  # noqa: E402
from tests import labelstudio_server as lss  # noqa: E402
from tests.labels_util import ingest_demo_with_labels  # noqa: E402

from benchdata import make_demo  # noqa: E402  (bench/benchdata.py, beside this script)


def start_label_studio(base: Path):
    """A Label Studio server as the tests start one; returns (process, server)."""
    base.mkdir(parents=True, exist_ok=True)
    exe = lss.ls_venv() / "bin" / "label-studio"
    if not exe.exists():
        sys.exit(f"{exe} is missing: run 'make test' (or 'make labelstudio') once to build it")
    proc, server = lss._start(exe, base, 0)
    deadline = time.monotonic() + lss.START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if lss._healthy(server.url):
            return proc, server
        time.sleep(1)
    lss._stop(proc)
    sys.exit(f"Label Studio did not start; see {server.log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--images-per-side", default="4")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-prelabel-") as tmp:
        base = Path(tmp)
        demo = make_demo(base / "demo", args.patients, args.images_per_side)
        ws = open_workspace(init_workspace(base / "ws").root)
        start = time.perf_counter()
        ingest_demo_with_labels(ws, demo)
        make_consensus(ws, "staple")
        create_split(ws, "bench", ratios="6:2:2", folds=0, seed=0)
        config = TrainConfig(
            preset=args.preset, epochs=args.epochs, batch=args.batch, device=args.device
        )
        run = train(ws, "bench", config=config)
        assert run is not None
        print(
            f"workspace, labels and a {args.epochs}-epoch run: {time.perf_counter() - start:.0f} s"
        )

        proc, server = start_label_studio(base / "ls")
        try:
            add_rater(ws, "bench")
            pushed = push(
                ws, "bench", url=server.url, token=server.token, local_root=server.local_root
            )
            print(f"pushed {pushed.tasks_created} tasks to Label Studio")

            model = load_run_model(ws, run.run, device=args.device)
            from sqlalchemy import select

            from datatool.core.catalogue import Image

            with ws.session() as s:
                hashes = list(s.scalars(select(Image.store_hash).order_by(Image.id)))
            images = [ws.store.get_array(h) for h in hashes]
            predict(model, images[:2], batch=args.batch)  # warm up
            t0 = time.perf_counter()
            predict(model, images, batch=args.batch)
            bare = time.perf_counter() - t0
            bare_rate = len(images) / bare

            t0 = time.perf_counter()
            report = prelabel(
                ws,
                run.run,
                "bench",
                url=server.url,
                token=server.token,
                batch=args.batch,
                device=args.device,
            )
            whole = time.perf_counter() - t0
            assert report.drafted == len(images), report
            rate = report.drafted / whole
            sec = report.seconds
            print(
                f"bare inference ({args.preset}, batch {args.batch}, {model.device}): "
                f"{len(images)} images in {bare:.2f} s = {bare_rate:.1f} drafts/s"
            )
            print(
                f"prelabel (server round trip included): {report.drafted} drafts in "
                f"{whole:.2f} s = {rate:.1f} drafts/s; inside it: inference "
                f"{sec['inference']:.2f} s, store read {sec['read']:.2f} s, RLE encoding "
                f"{sec['encode']:.2f} s, upload {sec['upload']:.2f} s, the rest (model load, "
                f"task listing, project) {whole - sum(sec.values()):.2f} s"
            )
            print(
                f"ratio prelabel / bare inference: {rate / bare_rate:.2f} (goal >= 0.5); "
                f"encoding + upload / inference: "
                f"{(sec['encode'] + sec['upload']) / sec['inference']:.2f}"
            )
        finally:
            lss._stop(proc)
            ws.close()


if __name__ == "__main__":
    main()
