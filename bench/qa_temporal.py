"""What the temporal check of ``datatool qa`` finds on the demo's cine loops (issue 22).

Builds a demo dataset with cine loops (``demo-data --cines``: the anatomy sweeps and breathes,
each rater redraws every frame), ingests it, stores both raters' labels (a cine's W x H x N
volume frame by frame), runs the checks and prints the temporal flags on the loops as drawn
(per rater: with ``--rater-errors`` the demo's rater 2 draws sloppily and now and then misses
the artery or swaps the muscles, which are real temporal errors). Then it plants one error in
one frame of rater 1 in each loop, in turn a nerve left out, the two muscles swapped and every
structure moved by 3 mm, runs the checks again and prints per kind how many planted frames
were flagged on the structures concerned, and how many other temporal flags there are.
Beside the time of the checks, the load average (this machine is shared).

    python bench/qa_temporal.py                     # 10 patients, 12 loops of 8 frames
    python bench/qa_temporal.py --patients 20 --cines 30 --rater-errors
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sqlalchemy import select

from datatool.analysis.qa import list_queue, run_qa
from datatool.core.catalogue import Annotation, Image, Rater, SourceFile
from datatool.core.protocol import load_protocol
from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.generator import write_demo_dataset
from datatool.ingest import deid
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import read_sop_instance_uid

KINDS = ("missed", "swap", "shift")
SHIFT_MM = 3.0


def load(ws, demo: Path, protocol) -> list[list[int]]:
    """Both raters' labels into the catalogue; the loops' image ids in frame order."""
    loops = []
    for name in ("rater1", "rater2"):
        add_rater(ws, name)
        with ws.session() as s:
            rater = get_rater(s, name)
            for f in sorted((demo / "labels" / name).rglob("*.nii.gz")):
                rel = str(f.relative_to(demo / "labels" / name))
                uid = read_sop_instance_uid(demo / "dicom" / rel.replace(".nii.gz", ".dcm"))
                file_id = s.scalar(
                    select(SourceFile.id).where(SourceFile.sop_uid == deid.uid_for(ws.key, uid))
                )
                images = list(
                    s.scalars(
                        select(Image)
                        .where(Image.source_file_id == file_id)
                        .order_by(Image.frame_index)
                    )
                )
                maps = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.uint8)
                maps = maps[None] if maps.ndim == 2 else maps
                for image, m in zip(images, maps):
                    store_annotation(s, ws.store, image, rater, m, "itksnap", rel, protocol)
                if len(images) > 1 and name == "rater1":
                    loops.append([i.id for i in images])
    return loops


def temporal(ws) -> list[tuple[int, str, str]]:
    items = list_queue(ws, reasons=["temporal"], limit=0).items
    return [(it.image_id, it.rater, it.structure) for it in items]


def plant(ws, loops: list[list[int]], protocol) -> dict[int, tuple[str, set[str]]]:
    """One error in one frame of rater 1 per loop (the kinds in turn, the frame in the loop's
    inner frames in turn)."""
    v = {s.name: s.value for s in protocol.structures}
    planted = {}
    with ws.session() as s:
        rater = get_rater(s, "rater1")
        for n, ids in enumerate(loops):
            kind, image_id = KINDS[n % 3], ids[1 + n % (len(ids) - 2)]
            ann = s.scalars(
                select(Annotation)
                .join(Rater)
                .where(Annotation.image_id == image_id, Rater.name == "rater1")
                .order_by(Annotation.version.desc())
            ).first()
            m = ws.store.get_array(ann.mask_hash).copy()
            image = s.get_one(Image, image_id)
            if kind == "missed":
                m[m == v["sciatic nerve"]] = 0
                want = {"sciatic nerve"}
            elif kind == "swap":
                am, st = m == v["adductor magnus"], m == v["semitendinosus"]
                m[am], m[st] = v["semitendinosus"], v["adductor magnus"]
                want = {"adductor magnus", "semitendinosus"}
            else:
                m = np.roll(m, round(SHIFT_MM / image.mm_per_px_x), axis=1)
                want = set(v)
            store_annotation(s, ws.store, image, rater, m, "itksnap", "planted", protocol)
            planted[image_id] = (kind, want)
    return planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--cines", type=int, default=12)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--rater-errors", action="store_true", help="keep the demo's rater errors")
    args = ap.parse_args()
    protocol = load_protocol()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo_dataset(root / "demo", patients=args.patients, seed=0,
                           images_per_side=(2, 3), rater_errors=args.rater_errors,
                           cines=args.cines, cine_frames=args.frames)  # fmt: skip
        init_workspace(root / "ws")
        ws = open_workspace(root / "ws")
        ingest(ws, [root / "demo" / "dicom"], workers=0)
        loops = load(ws, root / "demo", protocol)
        start = time.perf_counter()
        result = run_qa(ws)
        took = time.perf_counter() - start
        load_avg = os.getloadavg()[0]
        drawn = temporal(ws)
        by_rater: dict[str, int] = defaultdict(int)
        for _, rater, _ in drawn:
            by_rater[rater] += 1
        print(f"{len(loops)} loops of {args.frames} frames, {result.labels} labels checked "
              f"in {took:.1f} s (load average {load_avg:.1f}); rater errors "
              f"{'kept' if args.rater_errors else 'left out'}")  # fmt: skip
        print(f"as drawn: {len(drawn)} temporal flags ({dict(by_rater) or 'none'})")
        for note in result.notes:
            if note.startswith("temporal"):
                print(f"  note: {note}")
        planted = plant(ws, loops, protocol)
        run_qa(ws)
        after = temporal(ws)
        flagged: dict[int, set[str]] = defaultdict(set)
        for image_id, rater, structure in after:
            if image_id in planted and rater == "rater1":
                flagged[image_id].add(structure)
        for kind in KINDS:
            mine = [(i, want) for i, (k, want) in planted.items() if k == kind]
            frames = sum(1 for i, want in mine if flagged[i] & want)
            hit = sum(len(flagged[i] & want) for i, want in mine)
            total = sum(len(want) for _, want in mine)
            print(f"planted {kind:6s}: {frames} of {len(mine)} frames flagged; "
                  f"{hit} of {total} structures concerned")  # fmt: skip
        other = [f for f in after if not (f[0] in planted and f[1] == "rater1")]
        print(f"other temporal flags: {len(other)}")
        for f in other:
            print(f"  {f}")
        ws.close()


if __name__ == "__main__":
    main()
