"""DICOM networking throughput against a PACS measured in the same run.

Listener (``bench_listen``): the same files sent by dcmtk's ``storescu`` (each group of files
in its own transfer syntax, one association per group, the same commands for both) to
Debian's Orthanc (receive and store: its C-STORE success comes once the object is stored and
indexed) and to ``datatool listen`` (receive, spool, then de-identify, decode, store and
catalogue). Each is timed from the first send to the last object stored (Orthanc: storescu
done) or catalogued (datatool: every receipt in ``received`` and the spool empty). Prints
both rates, datatool's ratio (goal >= 0.8 x Orthanc) and the load average beside them.

    python bench/network.py                      # 20 patients, about 300 images
    python bench/network.py --patients 40 --workers 2
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
from collections import defaultdict
from pathlib import Path

import pydicom

from datatool.core.workspace import init_workspace
from datatool.demo.orthanc import start_orthanc

from benchdata import make_demo  # bench/benchdata.py, beside this script

PROPOSE = {  # storescu's option proposing a file's own (compressed) syntax
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.1.99": "-xd",
}


LISTEN = [sys.executable, "-m", "datatool", "listen"]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} (1 / 5 min, {os.cpu_count()} cores)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send_groups(files: list[Path]) -> list[tuple[str, list[Path]]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        syntax = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups[PROPOSE.get(syntax, "-xe")].append(f)
    return sorted(groups.items())


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--images-per-side", default="7-8")
    parser.add_argument("--data", type=Path, help="send this DICOM folder instead of demo data")
    parser.add_argument(
        "--workers", default="1,2", help="datatool listen -j values to time (comma-separated)"
    )
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        sys.exit("dcmtk's storescu is not installed (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="datatool-bench-") as tmp:
        scratch = Path(tmp)
        data = (
            args.data or make_demo(scratch / "demo", args.patients, args.images_per_side) / "dicom"
        )
        files = sorted(p for p in Path(data).rglob("*") if p.is_file())
        bench_listen(files, scratch, [int(w) for w in args.workers.split(",")])


if __name__ == "__main__":
    main()
