"""ITK-SNAP sync throughput against a baseline measured in the same run.

Baseline: SimpleITK ``ReadImage`` + ``GetArrayFromImage`` of the same label files, nothing
else, in one process. Then ``sync_itksnap`` of one rater's demo folder with ``--dicom-root``
(match each label to its DICOM's SOP Instance UID, read, validate, per-structure statistics,
store the mask, catalogue the version) for a fresh rater, and again for the same rater (every
label unchanged). Prints label maps/s and the ratio of sync to bare reading speed.

Goals (issues 3 and 26): sync of new labels >= 0.7 x the speed of bare reading; >= 0.9 x when
every file is unchanged (a re-sync does not decode files whose bytes decoded before to the
rater's latest label: ``labels.itksnap.decoded``). The load average is printed beside them.

    python bench/sync.py                              # 30 patients, about 450 maps per rater
    python bench/sync.py --patients 200               # the study's scale (about 3000)
    python bench/sync.py --profile                    # where the sync's time goes (pyinstrument)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from datatool.core.workspace import init_workspace, open_workspace
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.locate import find_label_files
from datatool.labels.itksnap.sync import sync_itksnap

from benchdata import make_demo  # bench/benchdata.py, beside this script


def bare_read(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return time.perf_counter() - start


def timed_sync(ws, labels: Path, dicom: Path, rater: str, profile: bool = False):
    profiler = None
    if profile:
        from pyinstrument import Profiler  # the test extras: pip install -e '.[test]'

        profiler = Profiler(interval=0.001)
        profiler.start()
    start = time.perf_counter()
    report = sync_itksnap(ws, labels, rater, dicom_root=dicom)
    elapsed = time.perf_counter() - start
    if profiler:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False))
    if report.rejected:
        sys.exit(f"sync was not clean: {report.rejected[:3]}")
    return elapsed, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--images-per-side", default="7-8")
    parser.add_argument(
        "--data", type=Path, help="use this demo dataset (dicom/, labels/) instead of making one"
    )
    parser.add_argument("--profile", action="store_true", help="profile the first sync")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        scratch = Path(tmp)
        data = args.data
        if data is None:
            data = make_demo(scratch / "demo", args.patients, args.images_per_side)
        root = init_workspace(scratch / "ws").root
        ws = open_workspace(root)
        t = time.perf_counter()
        ingest(ws, [data / "dicom"], workers=2)
        print(f"ingest: {time.perf_counter() - t:.1f} s")
        labels = data / "labels" / "rater1"
        files, _ = find_label_files(labels)
        bare_read(files[:20])  # warm the page cache and imports
        load_before = os.getloadavg()[0]
        t_bare = bare_read(files)
        rater = f"bench-{time.strftime('%H%M%S')}"
        add_rater(ws, rater)
        t_new, report = timed_sync(ws, labels, data / "dicom", rater, args.profile)
        assert report.new_versions == len(files)
        t_same, again = timed_sync(ws, labels, data / "dicom", rater)
        assert again.unchanged == len(files)
        t_bare2 = bare_read(files)  # again: the load may have changed
        load_after = os.getloadavg()[0]
        ws.close()
    n = len(files)
    t_bare = (t_bare + t_bare2) / 2
    print(f"label maps: {n}; cores: {os.cpu_count()}")
    print(f"load average (1 min) before: {load_before:.1f}, after: {load_after:.1f}")
    print(f"bare SimpleITK read (baseline, mean of before and after): {t_bare:6.2f} s  "
          f"{n / t_bare:7.1f} maps/s")  # fmt: skip
    print(f"sync, new labels:               {t_new:6.2f} s  {n / t_new:7.1f} maps/s")
    print(f"sync again, all unchanged:      {t_same:6.2f} s  {n / t_same:7.1f} maps/s")
    print(f"ratio sync/bare speed, new labels: {t_bare / t_new:.2f}  (goal >= 0.7)")
    print(f"ratio sync/bare speed, unchanged:  {t_bare / t_same:.2f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
