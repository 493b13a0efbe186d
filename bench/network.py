"""DICOM networking throughput against a PACS measured in the same run.

Listener (``bench_listen``): the same files sent by dcmtk's ``storescu`` (each group of files
in its own transfer syntax, one association per group, the same commands for both) to
Debian's Orthanc (receive and store: its C-STORE success comes once the object is stored and
indexed) and to ``datatool listen`` (receive, spool, then de-identify, decode, store and
catalogue). Each is timed from the first send to the last object stored (Orthanc: storescu
done) or catalogued (datatool: every receipt in ``received`` and the spool empty). Prints
both rates, datatool's ratio (goal >= 0.8 x Orthanc) and the load average beside them.

Pull (``bench_pull``): the files are put into a fresh Orthanc (HTTP and DICOMweb on
loopback, its DICOM port off); then the same studies are fetched, each time into a fresh
folder or workspace: by a bare dicomweb-client (QIDO-RS search, WADO-RS retrieve of each
study in its stored transfer syntax, every instance written to disk with pydicom), and by
``datatool pull --dicomweb`` (the library call the command makes: search, retrieve to the
spool, the whole ingest); and, for scale, ``ingest`` of the same files from disk. Prints
files/s of each and the ratios (goal: pull >= 0.8 x the bare retrieve), with the load average.

    python bench/network.py                      # 20 patients, about 300 images; both parts
    python bench/network.py --patients 40 --workers 2
    python bench/network.py --part pull --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.orthanc import orthanc_available, start_orthanc, storescu_groups
from datatool.ingest.pipeline import ingest, iter_files
from datatool.ingest.pull import DicomWebSource, make_query, pull

from benchdata import make_demo  # bench/benchdata.py, beside this script

LISTEN = [sys.executable, "-m", "datatool", "listen"]
STORED = (("application/dicom", "*"),)  # as stored: no transcoding, like datatool asks


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} (1 / 5 min, {os.cpu_count()} cores)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send_groups(files: list[Path]) -> list[tuple[str, list[Path]]]:
    return sorted(storescu_groups(files).items())


def storescu(groups: list[tuple[str, list[Path]]], port: int, aec: str) -> int:
    """Send every group (one association each); returns how many were acknowledged."""
    acked = 0
    for flag, group in groups:
        proc = subprocess.run(
            ["storescu", "-v", flag, "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)]
            + [str(f) for f in group],
            capture_output=True,
            text=True,
        )
        acked += (proc.stdout + proc.stderr).count("Received Store Response (Success)")
    return acked


def received(root: Path) -> int:
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite", timeout=60)
    try:
        return con.execute("select count(*) from received").fetchone()[0]
    finally:
        con.close()


def time_orthanc(groups: list[tuple[str, list[Path]]], n: int, scratch: Path) -> float:
    with start_orthanc(scratch / "orthanc", dicom_port=0, dicomweb=False) as server:
        assert server.dicom_port is not None
        start = time.perf_counter()
        acked = storescu(groups, server.dicom_port, server.aet)
        elapsed = time.perf_counter() - start
    if acked != n:
        sys.exit(f"Orthanc acknowledged {acked} of {n} objects")
    return elapsed


def time_datatool(
    groups: list[tuple[str, list[Path]]], n: int, scratch: Path, workers: int
) -> tuple[float, float]:
    """(seconds to all acknowledged, seconds to all catalogued)."""
    root = scratch / f"ws-{workers}"
    init_workspace(root)
    port = free_port()
    log = open(scratch / f"listen-{workers}.log", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [*LISTEN, "--port", str(port), "-j", str(workers), "--workspace", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while b"listening on" not in (scratch / f"listen-{workers}.log").read_bytes():
            if proc.poll() is not None:
                sys.exit(f"datatool listen exited {proc.returncode}")
            time.sleep(0.05)
        start = time.perf_counter()
        acked = storescu(groups, port, "DATATOOL")
        sent = time.perf_counter() - start
        incoming = root / ".datatool" / "spool" / "incoming"
        while received(root) < acked or any(incoming.iterdir()):
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        log.close()
    if acked != n:
        sys.exit(f"datatool listen acknowledged {acked} of {n} objects")
    return sent, elapsed


def bench_listen(files: list[Path], scratch: Path, workers: list[int]) -> None:
    """The listener half: Orthanc's receive-and-store against datatool's
    receive-and-ingest, the same files and storescu commands, in this run."""
    groups = send_groups(files)
    n = len(files)
    storescu_flags = ", ".join(f"{flag}: {len(g)}" for flag, g in groups)
    print(f"listener: {n} files sent by storescu in {len(groups)} associations ({storescu_flags})")
    t_orthanc = time_orthanc(groups, n, scratch)
    rate = n / t_orthanc
    print(f"  Orthanc receive + store:         {t_orthanc:6.2f} s {rate:7.1f} objects/s  {load()}")
    for w in workers:
        sent, t_dt = time_datatool(groups, n, scratch, w)
        print(
            f"  datatool listen -j {w} receive:    {sent:6.2f} s {n / sent:7.1f} objects/s  "
            f"(acknowledged)"
        )
        rate = n / t_dt
        print(f"  datatool listen -j {w} + ingest:   {t_dt:6.2f} s {rate:7.1f} objects/s  {load()}")
        print(
            f"  ratio datatool (-j {w}) / Orthanc throughput: {t_orthanc / t_dt:.2f}  (goal >= 0.8)"
        )


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
    parser.add_argument("--data", type=Path, help="send this DICOM folder instead of demo data")
    parser.add_argument(
        "--workers", default="1,2", help="datatool listen -j values to time (comma-separated)"
    )
    parser.add_argument(
        "--part", default="listen,pull", help="which benchmarks: listen, pull or both"
    )
    parser.add_argument("--pull-workers", type=int, default=None, help="pull's -j")
    parser.add_argument("--rounds", type=int, default=2, help="pull: rounds (best counts)")
    args = parser.parse_args()
    parts = set(args.part.split(","))
    if "listen" in parts and shutil.which("storescu") is None:
        sys.exit("dcmtk's storescu is not installed (apt-get install dcmtk)")
    reason = orthanc_available()
    if reason is not None:
        sys.exit(reason)
    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        scratch = Path(tmp)
        data = (
            args.data or make_demo(scratch / "demo", args.patients, args.images_per_side) / "dicom"
        )
        files = sorted(p for p in Path(data).rglob("*") if p.is_file())
        if "listen" in parts:
            bench_listen(files, scratch, [int(w) for w in args.workers.split(",")])
        if "pull" in parts:
            bench_pull(Path(data), scratch, args.pull_workers, args.rounds)


if __name__ == "__main__":
    main()
