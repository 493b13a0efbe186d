"""Cost as the work grows: catalogues of 3,000, 10,000 and 30,000 images (issue 26).

A small demo set is rendered once (``bench/benchdata.py``: ``--patients`` patients, a fixed
``--images-per-side``) and then copied, patient by patient, under new identities: each copy's
DICOM files get a new PatientName, PatientID and AccessionNumber (carrying the demo's PHI
token) and new Study, Series and SOP Instance UIDs (pydicom; the pixels are kept as they are),
and both raters' ITK-SNAP label maps are linked beside them under the copy's folder (sync
matches them by ``--dicom-root``). Nothing is rendered per image.

The catalogue is grown to each size in turn. The last ``--batch`` images of a size are
ingested and synced (both raters) on their own and timed: the per-image cost of adding them,
the marginal cost at that size, not an average over everything before. Then every command
below runs as a subprocess (``datatool ...``, as a user runs it) and its wall time and peak
resident memory (``ru_maxrss`` of that child, by /usr/bin/time) are printed with the load
average. ``next`` ranks with a run of the tiniest preset, trained once for one epoch on the
first patients (split ``scale-seed``); rater 2 leaves one patient of the second copy
unlabelled, so ``next`` has the same few images to rank at every size.

Goals: per-image ingest and sync cost within 25 % from 3,000 to 30,000 images; every read
command under 2 s at 30,000; peak memory under 1 GB for every command at 30,000.

Everything is built under /tmp/scale-<pid> and removed at the end (also on Ctrl-C or
SIGTERM). ``--db-url URL`` (or DATATOOL_DB_URL) puts the catalogue on that server;
``--postgres`` starts a PostgreSQL server in a temporary folder the way the test suite does
(tests/core/test_postgres.py) and uses it.

    python bench/scale.py --sizes 3000,10000          # SQLite
    python bench/scale.py --sizes 3000 --postgres     # the same on a PostgreSQL server
    python bench/scale.py --sizes 3000 --commands status --keep     # kept for --alternate
    python bench/scale.py --alternate /tmp/scale-A /tmp/scale-B     # batches in turn

The per-image cost of one batch at each size drifts with the machine (a shared one: by a
third between runs a quarter of an hour apart); ``--alternate`` adds batches to two kept
catalogues in turn, which compares the sizes in the same minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from benchdata import make_demo  # bench/benchdata.py, beside this script

RATERS = ("rater1", "rater2")
GB = 1 << 30
READ_GOAL_S = 2.0
# Commands timed at every size: (label, arguments after ``datatool``). {size} and {run} are
# filled in. Reads: the goal of 2 s applies; the others write (consensus, split create, qa).
COMMANDS: list[tuple[str, list[str], bool]] = [
    ("status", ["status"], True),
    ("images --json", ["images", "--json"], True),
    ("labels", ["labels"], True),
    ("agreement --sample 300", ["agreement", "--sample", "300"], True),
    ("consensus", ["consensus", "--method", "{method}"], False),
    ("split create", ["split", "create", "scale-{size}"], False),
    ("split check", ["split", "check", "scale-{size}"], True),
    # again: the reference masks hashed intact a moment ago are not read again (their file's
    # size, time and inode unchanged: core/verified.py); --deep reads them all
    ("split check again", ["split", "check", "scale-{size}"], True),
    ("split check --deep", ["split", "check", "scale-{size}", "--deep"], True),
    ("qa", ["qa"], False),
    ("next", ["next", "--rater", "rater2", "--run", "{run}", "--n", "10"], True),
    ("report", ["report", "--out", "{root}/report-{size}.html"], True),
]


@dataclass
class Timed:
    seconds: float
    cpu: float  # user + system seconds of the child (and its children)
    max_rss: int  # bytes
    rc: int
    tail: str  # the end of stderr (and stdout), for a failure


class Bench:
    """The folders, the environment and the copying state of one benchmark run."""

    def __init__(self, root: Path, db_url: str | None) -> None:
        self.root = root
        self.data = root / "data"
        self.ws = root / "ws"
        self.env = dict(os.environ, DATATOOL_WORKSPACE=str(self.ws), NO_COLOR="1")
        self.env.pop("DATATOOL_DB_URL", None)
        if db_url:
            self.env["DATATOOL_DB_URL"] = db_url
        self.exe = str(Path(sys.executable).with_name("datatool"))
        self.units: list[tuple[str, list[str]]] = []  # base patient folder, its files' stems
        self.copies = 0  # patient copies made so far
        self.images = 0
        self.method = "staple"  # consensus --method

    def run(self, args: list[str], check: bool = True) -> Timed:
        """``datatool ARGS`` as a child process: wall time, its CPU time and peak RSS, exit
        code. The child is started by /usr/bin/time: a child forked from this process counts
        this process's pages in its ``ru_maxrss`` until it execs (about 250 MB here)."""
        out, usage = self.root / "last-output.txt", self.root / "last-usage.txt"
        with out.open("wb") as fh:
            start = time.perf_counter()
            rc = subprocess.run(
                ["/usr/bin/time", "-q", "-f", "%M %U %S", "-o", str(usage), self.exe, *args],
                env=self.env,
                stdout=fh,
                stderr=fh,
            ).returncode
            took = time.perf_counter() - start
        kb, user, system = usage.read_text().split()[-3:]
        tail = out.read_bytes()[-600:].decode(errors="replace")
        if check and rc != 0:
            raise SystemExit(f"datatool {' '.join(args)} failed ({rc}):\n{tail}")
        return Timed(took, float(user) + float(system), int(kb) * 1024, rc, tail)

    def base_units(self, base: Path) -> None:
        """The demo's patients: the units that are copied."""
        for folder in sorted(p for p in (base / "dicom").iterdir() if p.is_dir()):
            stems = sorted(f.stem for f in folder.glob("*.dcm"))
            self.units.append((folder.name, stems))
        self.base = base

    def copy_until(self, target: int, dest: Path) -> int:
        """Copy patients into ``dest`` (dicom/, labels/RATER/) until the catalogue would hold
        ``target`` images; returns how many images were copied."""
        made = 0
        while self.images + made < target:
            mrn, stems = self.units[self.copies % len(self.units)]
            k = self.copies
            new_mrn = f"SC{k:06d}PHIDEMO"
            uids: dict[str, str] = {}

            def uid(old: str, k: int = k, uids: dict[str, str] = uids) -> str:
                if old not in uids:
                    digest = hashlib.sha256(f"{k}/{old}".encode()).hexdigest()[:30]
                    uids[old] = f"2.25.{int(digest, 16)}"
                return uids[old]

            (dest / "dicom" / new_mrn).mkdir(parents=True)
            for stem in stems:
                ds = pydicom.dcmread(self.base / "dicom" / mrn / f"{stem}.dcm")
                ds.PatientName = f"SCALE^COPY{k}^PHIDEMO"
                ds.PatientID = new_mrn
                ds.AccessionNumber = f"A{k:07d}"
                ds.StudyInstanceUID = uid(ds.StudyInstanceUID)
                ds.SeriesInstanceUID = uid(ds.SeriesInstanceUID)
                ds.SOPInstanceUID = uid(ds.SOPInstanceUID)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(dest / "dicom" / new_mrn / f"{stem}.dcm", enforce_file_format=True)
            for rater in RATERS:
                if rater == "rater2" and k == 1:
                    continue  # left unlabelled by rater 2: what `next` ranks
                folder = dest / "labels" / rater / new_mrn
                folder.mkdir(parents=True)
                for stem in stems:
                    name = f"{stem}.nii.gz"
                    os.link(self.base / "labels" / rater / mrn / name, folder / name)
            self.copies += 1
            made += len(stems)
        return made

    def add(self, target: int, name: str) -> tuple[int, Timed, list[Timed]]:
        """Grow the catalogue to ``target`` images with copies in ``data/NAME``: ingest them,
        sync both raters; the copies are removed afterwards (the store holds the images)."""
        dest = self.data / name
        n = self.copy_until(target, dest)
        ingest = self.run(["ingest", str(dest / "dicom")])
        syncs = [
            self.run(
                [
                    "sync",
                    "itksnap",
                    str(dest / "labels" / r),
                    "--rater",
                    r,
                    "--dicom-root",
                    str(dest / "dicom"),
                ]
            )
            for r in RATERS
        ]
        shutil.rmtree(dest)
        self.images += n
        return n, ingest, syncs


def start_postgres(base: Path) -> tuple[str, list[str]]:
    """A PostgreSQL server in ``base`` as tests/core/test_postgres.py starts one: its URL and
    the command that stops it."""
    import pwd
    import socket

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    found = shutil.which("initdb")
    bin_dir = (
        bins[0]
        if bins and (bins[0] / "initdb").exists()
        else (Path(found).resolve().parent if found else None)
    )
    if bin_dir is None:
        raise SystemExit("--postgres: PostgreSQL's server programs (initdb) are not installed")
    run_as: list[str] = []
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    base.mkdir(parents=True)
    os.chmod(base, 0o777)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "datatool",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(base / "log"), "-o", f"-k {sock} -p {port} -c listen_addresses=''",
                    "start"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*run_as, str(bin_dir / "createdb"), "-h", str(sock), "-p", str(port),
                    "-U", "datatool", "catalogue"], check=True, capture_output=True)  # fmt: skip
    stop = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
    return f"postgresql+psycopg://datatool@/catalogue?host={sock}&port={port}", stop


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def seed_run(bench: Bench, patients: int) -> int:
    """The first ``patients`` patients, a consensus, a split and a run of the tiniest preset
    trained for one epoch: the run ``next`` ranks with."""
    first = sum(len(stems) for _, stems in bench.units[:patients])
    bench.add(first, "seed")
    bench.run(["consensus", "--method", bench.method])
    bench.run(["split", "create", "scale-seed", "--ratios", "1:1:1", "--folds", "0"])
    bench.run(["train", "--split", "scale-seed", "--preset", "tiny", "--epochs", "1",
               "--batch", "4", "--device", "cpu"])  # fmt: skip
    from sqlalchemy import create_engine, text

    url = bench.env.get("DATATOOL_DB_URL") or f"sqlite:///{bench.ws}/.datatool/catalogue.sqlite"
    engine = create_engine(url)
    with engine.connect() as conn:
        run = conn.execute(text("SELECT max(id) FROM runs WHERE status = 'done'")).scalar()
    engine.dispose()
    if run is None:
        raise SystemExit("the seed run did not finish")
    return int(run)


def measure(bench: Bench, size: int, batch: int, run: int) -> dict:
    """Grow to ``size`` (the last ``batch`` images timed on their own), then time the
    commands. Prints the size's table; returns its figures."""
    if size - batch > bench.images:
        start = time.perf_counter()
        n, _, _ = bench.add(size - batch, f"bulk-{size}")
        print(f"  grown by {n} images to {bench.images} in {time.perf_counter() - start:.0f} s "
              f"(load {load()})", flush=True)  # fmt: skip
    load_before = load()
    n, ingest, syncs = bench.add(size, f"batch-{size}")
    row = {"size": bench.images, "batch": n, "ingest_ms": 1000 * ingest.seconds / n,
           "sync_ms": [1000 * s.seconds / n for s in syncs],
           "ingest_cpu_ms": 1000 * ingest.cpu / n,
           "sync_cpu_ms": [1000 * s.cpu / n for s in syncs],
           "ingest_rss": ingest.max_rss, "sync_rss": max(s.max_rss for s in syncs)}  # fmt: skip
    print(f"\n== {bench.images} images (load average {load_before} before the last batch) ==")
    print(f"  last {n} images, wall / CPU: ingest {row['ingest_ms']:.1f} / "
          f"{row['ingest_cpu_ms']:.1f} ms/image, sync itksnap "
          + ", ".join(f"{r} {ms:.1f} / {cpu:.1f} ms/image"
                      for r, ms, cpu in zip(RATERS, row["sync_ms"], row["sync_cpu_ms"]))
          + f" (load {load()})", flush=True)  # fmt: skip
    row["commands"] = time_commands(bench, run)
    return row


def time_commands(bench: Bench, run: int, tag: str = "") -> dict[str, Timed]:
    """Each command of COMMANDS once, printed as a table row with its goal (``tag``: added
    to the new split's and report's names)."""
    print(f"  {'command':24s} {'wall s':>7s} {'CPU s':>7s} {'peak RSS MB':>12s} {'load':>5s}  goal")
    timed: dict[str, Timed] = {}
    for label, args, read in COMMANDS:
        filled = [
            a.format(size=f"{bench.images}{tag}", run=run, root=bench.root, method=bench.method)
            for a in args
        ]
        t = bench.run(filled, check=False)
        timed[label] = t
        goal = []
        if read and t.seconds >= READ_GOAL_S:
            goal.append(f"over {READ_GOAL_S:.0f} s")
        if t.max_rss >= GB:
            goal.append("over 1 GB")
        last = t.tail.strip().splitlines()[-1] if t.tail.strip() else ""
        # exit 1 is also a command that found something (qa's flags, a split check's
        # problems): shown when its last line is an error
        errored = t.rc not in (0, 1) or (t.rc == 1 and last.startswith("error"))
        failed = f"  exit {t.rc}: {last}" if errored else ""
        print(f"  {label:24s} {t.seconds:7.2f} {t.cpu:7.2f} {t.max_rss / 1e6:12.0f} "
              f"{load():>5s}  {', '.join(goal) or 'ok'}{failed}", flush=True)  # fmt: skip
    return timed


def catalogue_size(bench: Bench, db_url: str | None) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url or f"sqlite:///{bench.ws}/.datatool/catalogue.sqlite")
    with engine.connect() as conn:
        size = int(conn.execute(text("SELECT count(*) FROM images")).scalar() or 0)
    engine.dispose()
    return size


def alternate(roots: list[Path], rounds: int, batch: int) -> None:
    """Add ``batch`` images (ingest, then sync of both raters) to each kept catalogue in
    turn, ``rounds`` times: the per-image cost at two sizes in the same minutes. On a shared
    machine the speed drifts by a third between runs a quarter of an hour apart; alternating
    batches leaves the drift out of the comparison."""
    benches = []
    for k, root in enumerate(roots):
        bench = Bench(root, None)
        bench.base_units(root / "base")
        # new identities every time (a copy's bytes follow from its number: a number used
        # before gives files the catalogue holds already, ingested for nothing)
        bench.copies = 10**9 * (k + 1) + time.time_ns() // 10**6 % 10**9
        bench.images = catalogue_size(bench, None)
        benches.append(bench)
    totals: dict[int, list[list[float]]] = {k: [] for k in range(len(benches))}
    for r in range(rounds):
        for k, bench in enumerate(benches):
            size = bench.images
            n, ingest, syncs = bench.add(size + batch, f"alternate-{r}")
            cpu = [1000 * ingest.cpu / n] + [1000 * t.cpu / n for t in syncs]
            totals[k].append(cpu)
            print(f"round {r + 1}, at {size} images: ingest {cpu[0]:.2f}, sync "
                  + ", ".join(f"{c:.2f}" for c in cpu[1:])
                  + f" ms of CPU an image (load {load()})", flush=True)  # fmt: skip
    means = {k: [sum(c) / len(c) for c in zip(*rows)] for k, rows in totals.items()}
    first, last = means[0], means[len(benches) - 1]
    names = ["ingest", *(f"sync {r}" for r in RATERS)]
    ratios = ", ".join(f"{name} {b / a:.2f}x" for name, a, b in zip(names, first, last))
    print(f"mean CPU per image, the larger catalogue against the smaller: {ratios} "
          "(goal within 25 %)")  # fmt: skip


def again(root: Path, db_url: str | None, method: str) -> None:
    """The commands timed again on the catalogue a ``--keep`` run left in ``root``."""
    bench = Bench(root, db_url)
    bench.method = method
    from sqlalchemy import create_engine, text

    bench.images = catalogue_size(bench, db_url)
    engine = create_engine(db_url or f"sqlite:///{bench.ws}/.datatool/catalogue.sqlite")
    with engine.connect() as conn:
        run = conn.execute(text("SELECT max(id) FROM runs WHERE status = 'done'")).scalar()
    engine.dispose()
    print(f"again on {root}: {bench.images} images; load {load()}", flush=True)
    time_commands(bench, int(run or 0), tag=f"-again-{os.getpid()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3000,10000,30000", help="catalogue sizes, images")
    parser.add_argument("--batch", type=int, default=1000, help="the last images, timed alone")
    parser.add_argument("--patients", type=int, default=30, help="patients rendered once")
    parser.add_argument("--images-per-side", default="5")
    parser.add_argument("--db-url", default=os.environ.get("DATATOOL_DB_URL"),
                        help="the catalogue on this server (default: DATATOOL_DB_URL)")  # fmt: skip
    parser.add_argument("--postgres", action="store_true", help="start a PostgreSQL server")
    parser.add_argument("--commands", default=None,
                        help="only these commands (labels, comma-separated)")  # fmt: skip
    parser.add_argument("--consensus-method", default="staple", choices=["staple", "majority"],
                        help="consensus --method (STAPLE: about 0.3 s an image here)")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the folder (workspace, run) at the end for --again")  # fmt: skip
    parser.add_argument("--again", type=Path, metavar="ROOT",
                        help="time the commands again on the catalogue a --keep run left in "
                        "ROOT (after a change to datatool), nothing added")  # fmt: skip
    parser.add_argument("--alternate", type=Path, nargs=2, metavar=("SMALL", "LARGE"),
                        help="add --batch images to two kept catalogues (SQLite) in turn, "
                        "--rounds times: their per-image cost in the same minutes")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="--alternate: rounds")
    args = parser.parse_args()
    if args.alternate:
        alternate(list(args.alternate), args.rounds, args.batch)
        return
    if args.commands:
        wanted = [c.strip() for c in args.commands.split(",")]
        unknown = sorted(set(wanted) - {label for label, _, _ in COMMANDS})
        if unknown:
            parser.error(f"unknown command(s) {unknown}; choose from "
                         + ", ".join(label for label, _, _ in COMMANDS))  # fmt: skip
        COMMANDS[:] = [c for c in COMMANDS if c[0] in wanted]
    if args.again:
        again(args.again, args.db_url, args.consensus_method)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(tempfile.gettempdir()) / f"scale-{os.getpid()}"
    root.mkdir()

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    stop_pg: list[str] | None = None
    rows = []
    try:
        db_url = args.db_url
        if args.postgres:
            db_url, stop_pg = start_postgres(root / "pg")
        bench = Bench(root, db_url)
        bench.method = args.consensus_method
        print(f"root {root}; catalogue: {'PostgreSQL' if db_url else 'SQLite'}; "
              f"cores {os.cpu_count()}; load {load()}", flush=True)  # fmt: skip
        bench.base_units(make_demo(root / "base", args.patients, args.images_per_side, seed=2))
        bench.run(["init", str(bench.ws)])
        for r in RATERS:
            bench.run(["rater", "add", r])
        start = time.perf_counter()
        run = seed_run(bench, 3)
        print(f"seed: {bench.images} images, run {run} trained in "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        for size in sizes:
            rows.append(measure(bench, size, args.batch, run))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        if stop_pg:
            subprocess.run(stop_pg, capture_output=True)
        if args.keep and not stop_pg:
            print(f"kept {root}: python bench/scale.py --again {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\nper-image cost at {last['size']} vs {first['size']} images (goal within "
              "25 %), wall and CPU (CPU is what counts on a loaded machine):")  # fmt: skip
        print(f"  ingest {last['ingest_ms'] / first['ingest_ms']:.2f}x wall, "
              f"{last['ingest_cpu_ms'] / first['ingest_cpu_ms']:.2f}x CPU")  # fmt: skip
        for k, r in enumerate(RATERS):
            wall = last["sync_ms"][k] / first["sync_ms"][k]
            cpu = last["sync_cpu_ms"][k] / first["sync_cpu_ms"][k]
            print(f"  sync itksnap {r} {wall:.2f}x wall, {cpu:.2f}x CPU")


if __name__ == "__main__":
    main()
