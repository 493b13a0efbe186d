"""Ingest throughput against a baseline measured in the same run.

Baseline: plain pydicom read + decode (``dcmread`` + ``pixel_array``) of the same files in one
process. Then the whole ingest (decode, de-identification, store, catalogue), each into a fresh
workspace: all in one process (``--workers 0``), and with 1 and 2 worker processes decoding
while the main process writes the catalogue. Prints images/s and the ratios.

Goals (issues 2 and 26): 1-worker ingest time <= 1.3 x bare decode; 2 workers >= 1.8 x 1
worker; the study's 3000-image scale (``--patients 200 --images-per-side 7-8``) in under a
minute. The CPU seconds (the workers' included) and the load average are printed beside them:
on a shared machine the CPU ratio is the steadier figure.

    python bench/ingest.py                       # 40 patients, about 600 images
    python bench/ingest.py --patients 200 --images-per-side 7-8   # the study's scale
    python bench/ingest.py --orthanc             # and Orthanc's REST upload as the anchor

With ``--orthanc`` (issue 26): Debian's Orthanc (loopback, fresh temporary index and storage,
DICOM port off; datatool.demo.orthanc) receives the same files over REST from 2 keep-alive
clients (httpx), and datatool's 2-worker ingest rate is printed as a ratio of Orthanc's
files/s (goal >= 0.8), with the load average beside each figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from datatool.core.workspace import init_workspace, open_workspace
from datatool.ingest.pipeline import ingest, iter_files

from benchdata import make_demo  # bench/benchdata.py, beside this script


def orthanc_rate(files: list[Path], scratch: Path, clients: int = 2) -> tuple[float, str]:
    """Seconds for Orthanc to receive and store ``files`` posted to /instances by
    ``clients`` keep-alive httpx clients at once, and the load average after."""
    import threading

    import httpx

    from datatool.demo.orthanc import orthanc_available, start_orthanc

    reason = orthanc_available()
    if reason is not None:
        sys.exit(f"--orthanc: {reason}")
    shares = [files[k::clients] for k in range(clients)]
    refused: list[str] = []

    def post(url: str, share: list[Path]) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for path in share:
                answer = client.post("/instances", content=path.read_bytes())
                if answer.status_code != 200:
                    refused.append(f"{path}: HTTP {answer.status_code}")

    with start_orthanc(scratch / "orthanc", dicom_port=None, dicomweb=False) as server:
        threads = [threading.Thread(target=post, args=(server.http_url, s)) for s in shares]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    if refused:
        sys.exit(f"Orthanc refused files: {refused[:3]}")
    one, five, _ = os.getloadavg()
    return elapsed, f"load {one:.2f} (5 min {five:.2f})"


def cpu() -> float:
    """CPU seconds of this process and its finished children (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bare_decode(files: list[Path]) -> tuple[float, int]:
    start = time.perf_counter()
    frames = 0
    for path in files:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        frames += arr.shape[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else 1
    return time.perf_counter() - start, frames


CPU: dict[str, float] = {}  # CPU seconds of each timed step (the workers' included)


def timed_ingest(data: Path, workers: int, scratch: Path) -> tuple[float, int]:
    root = scratch / f"ws-{workers}"
    init_workspace(root)
    ws = open_workspace(root)
    start, start_cpu = time.perf_counter(), cpu()
    report = ingest(ws, [data], workers=workers)
    elapsed = time.perf_counter() - start
    CPU[f"ingest {workers}"] = cpu() - start_cpu
    ws.close()
    if not report.ok:
        sys.exit(f"ingest was not clean: {report.as_dict()}")
    return elapsed, report.images_added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--images-per-side", default="7-8")
    parser.add_argument("--data", type=Path, help="ingest this DICOM folder instead of demo data")
    parser.add_argument(
        "--orthanc", action="store_true", help="also time Orthanc receiving the files (REST)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="time each step this many times, keep the best"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        scratch = Path(tmp)
        data = args.data
        if data is None:
            data = make_demo(scratch / "demo", args.patients, args.images_per_side)
            data = data / "dicom"
        files = list(iter_files([data]))
        bare_decode(files[:20])  # warm the page cache and imports
        load_before = os.getloadavg()[0]
        best: dict[str, tuple[float, int]] = {}
        for round_ in range(args.repeat):  # steps interleaved: a burst of load hits all
            start_cpu = cpu()
            timed = {"bare": bare_decode(files)}
            used = {"bare": cpu() - start_cpu}
            for workers in (0, 1, 2):
                timed[f"ingest {workers}"] = timed_ingest(data, workers, scratch / f"r{round_}")
                used[f"ingest {workers}"] = CPU[f"ingest {workers}"]
            for step, figure in timed.items():
                if step not in best or figure[0] < best[step][0]:
                    best[step], CPU[step] = figure, used[step]
        (t_bare, n_bare), (t0, n0) = best["bare"], best["ingest 0"]
        (t1, n1), (t2, n2) = best["ingest 1"], best["ingest 2"]
        load_after = os.getloadavg()[0]
        if args.orthanc:
            t_orthanc, orthanc_load = orthanc_rate(files, scratch)
    print(f"files: {len(files)}, images: {n1}; cores: {os.cpu_count()}")
    if args.repeat > 1:
        print(f"each figure the best of {args.repeat} runs (its CPU seconds those of that run)")
    print(f"load average (1 min) before: {load_before:.1f}, after: {load_after:.1f}")
    print(f"bare decode (1 process): {t_bare:6.2f} s  {n_bare / t_bare:7.1f} images/s")
    print(f"ingest, all in 1 process:{t0:6.2f} s  {n0 / t0:7.1f} images/s")
    print(f"ingest, 1 worker:        {t1:6.2f} s  {n1 / t1:7.1f} images/s")
    print(f"ingest, 2 workers:       {t2:6.2f} s  {n2 / t2:7.1f} images/s")
    print(f"ratio ingest(1 worker)/bare decode time: {t1 / t_bare:.2f}  (goal <= 1.3)")
    print(
        f"CPU: bare {CPU['bare']:.2f} s; ingest in 1 process {CPU['ingest 0']:.2f} s "
        f"(ratio {CPU['ingest 0'] / CPU['bare']:.2f}), 1 worker {CPU['ingest 1']:.2f} s "
        f"(ratio {CPU['ingest 1'] / CPU['bare']:.2f}), 2 workers {CPU['ingest 2']:.2f} s"
    )
    print(f"ratio ingest(1 process)/bare decode time: {t0 / t_bare:.2f}  (no goal: no overlap)")
    print(f"ratio 2 workers/1 worker speed:   {t1 / t2:.2f}  (goal >= 1.8)")
    per_3000 = t2 / n2 * 3000
    print(f"projected 3000 images with 2 workers: {per_3000:.1f} s  (goal < 60 s)")
    if args.orthanc:
        one, five, _ = os.getloadavg()
        rate = len(files) / t_orthanc
        print(f"Orthanc REST, 2 clients:  {t_orthanc:6.2f} s  {rate:7.1f} files/s  {orthanc_load}")
        print(
            f"ratio ingest(2 workers)/Orthanc files/s: {len(files) / t2 / rate:.2f}  "
            f"(goal >= 0.8)  load {one:.2f} (5 min {five:.2f})"
        )


if __name__ == "__main__":
    main()
