"""DICOM networking against a real PACS (Debian's Orthanc), measured in one run.

Pull (``bench_pull``): the demo's exams are put into a fresh Orthanc (HTTP and DICOMweb on
loopback, its DICOM port off); then the same studies are fetched twice, each time into a
fresh folder or workspace: by a bare dicomweb-client (QIDO-RS search, WADO-RS retrieve of
each study in its stored transfer syntax, every instance written to disk with pydicom), and by
``datatool pull --dicomweb`` (the library call the command makes: search, retrieve to the
spool, the whole ingest: decode, de-identify, store, catalogue). Prints files/s of each and
the ratio, with the load average beside each figure.

Goal (issue 25): datatool's pull at least 0.8 x the bare retrieve's files/s.

    python bench/network.py                 # 20 patients, about 300 files
    python bench/network.py --patients 40
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.orthanc import orthanc_available, start_orthanc
from datatool.ingest.pipeline import ingest, iter_files
from datatool.ingest.pull import DicomWebSource, make_query, pull

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdata import make_demo  # bench/benchdata.py, beside this script

STORED = (("application/dicom", "*"),)  # as stored: no transcoding, like datatool asks


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (5 min {five:.2f})"


def upload_all(url: str, files: list[Path], clients: int = 2) -> float:
    """POST every file to Orthanc's /instances with ``clients`` keep-alive clients; seconds."""
    import threading

    import httpx

    shares = [files[k::clients] for k in range(clients)]
    errors: list[str] = []

    def post(share: list[Path]) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for path in share:
                answer = client.post("/instances", content=path.read_bytes())
                if answer.status_code != 200:
                    errors.append(f"{path}: HTTP {answer.status_code}")

    start = time.perf_counter()
    threads = [threading.Thread(target=post, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        sys.exit(f"Orthanc refused files: {errors[:3]}")
    return elapsed


def bare_retrieve(dicomweb_url: str, out: Path) -> tuple[float, int]:
    """dicomweb-client alone: search the studies, retrieve each, write every instance."""
    from dicomweb_client.api import DICOMwebClient

    out.mkdir(parents=True)
    start = time.perf_counter()
    client = DICOMwebClient(dicomweb_url)
    studies = client.search_for_studies(fields=["StudyInstanceUID"])
    written = 0
    for study in studies:
        uid = study["0020000D"]["Value"][0]
        for ds in client.iter_study(uid, media_types=STORED):
            ds.save_as(out / f"{written:08d}.dcm", enforce_file_format=True)
            written += 1
    return time.perf_counter() - start, written


def datatool_pull(dicomweb_url: str, root: Path, workers: int | None) -> tuple[float, int]:
    init_workspace(root)
    ws = open_workspace(root)
    start = time.perf_counter()
    report = pull(ws, DicomWebSource(dicomweb_url), make_query(), workers=workers)
    elapsed = time.perf_counter() - start
    ws.close()
    if not report.ok:
        sys.exit(f"the pull was not clean: {report.as_dict()}")
    return elapsed, report.instances_retrieved


def bench_pull(data: Path, scratch: Path, workers: int | None = None, rounds: int = 2) -> None:
    """Pull from Orthanc by DICOMweb: datatool vs a bare dicomweb-client retrieve."""
    files = list(iter_files([data]))
    with start_orthanc(scratch / "orthanc", dicom_port=None) as server:
        upload_all(server.http_url, files)
        url = server.dicomweb_url or ""
        print(f"pull: {len(files)} files from Orthanc 1.10 over loopback HTTP")
        bare_retrieve(url, scratch / "warm")  # warm Orthanc's cache and the imports
        best_bare = best_pull = best_ingest = None
        for k in range(rounds):
            t_bare, n_bare = bare_retrieve(url, scratch / f"bare{k}")
            show("bare dicomweb-client retrieve to disk", t_bare, n_bare)
            t_pull, n_pull = datatool_pull(url, scratch / f"ws{k}", workers)
            show("datatool pull --dicomweb (ingest)", t_pull, n_pull)
            t_ingest, n_ingest = disk_ingest(data, scratch / f"disk{k}", workers)
            show("datatool ingest of the files on disk", t_ingest, n_ingest)
            assert n_bare == n_pull == n_ingest == len(files), (n_bare, n_pull, n_ingest)
            best_bare = min(best_bare or t_bare, t_bare)
            best_pull = min(best_pull or t_pull, t_pull)
            best_ingest = min(best_ingest or t_ingest, t_ingest)
        assert best_bare is not None and best_pull is not None and best_ingest is not None
        print(
            f"ratio datatool pull / bare retrieve speed (best of {rounds}): "
            f"{best_bare / best_pull:.2f}  (goal >= 0.8)  {load()}"
        )
        print(
            f"ratio datatool pull / ingest from disk speed: {best_ingest / best_pull:.2f}  "
            f"(what the network adds to ingest)  {load()}"
        )


def show(what: str, seconds: float, files: int) -> None:
    print(f"  {what:<40} {seconds:6.2f} s {files / seconds:7.1f} files/s  {load()}")


def disk_ingest(data: Path, root: Path, workers: int | None) -> tuple[float, int]:
    init_workspace(root)
    ws = open_workspace(root)
    start = time.perf_counter()
    report = ingest(ws, [data], workers=workers)
    elapsed = time.perf_counter() - start
    ws.close()
    return elapsed, report.ingested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--images-per-side", default="7-8")
    parser.add_argument("--workers", type=int, default=None, help="pull's decoding processes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, help="use this DICOM folder instead of demo data")
    args = parser.parse_args()
    reason = orthanc_available()
    if reason is not None:
        sys.exit(reason)
    with tempfile.TemporaryDirectory(prefix="datatool-bench-net-") as tmp:
        scratch = Path(tmp)
        data = args.data
        if data is None:
            data = make_demo(scratch / "demo", args.patients, args.images_per_side) / "dicom"
        bench_pull(data, scratch, args.workers, args.rounds)


if __name__ == "__main__":
    main()
