"""``split export``: a frozen split written for training elsewhere, as an nnU-Net v2 raw
dataset (with the split's patient-level folds as ``splits_final.json``) or a CSV manifest with
image and label PNGs."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.catalogue import Image, SplitMember, audit
from datatool.core.csvcells import csv_writer
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.store import encode_png
from datatool.core.workspace import Workspace
from datatool.labels.itksnap.formats import spacing_mm, write_image, write_segmentation
from datatool.labels.matching import image_name
from datatool.learning.options import ExportFormat, FileEnding, Subset, choice
from datatool.learning.splits import check_split, get_split, split_members

#: nnU-Net dataset ids run 1..999; ours default to 500 + a number fixed by the split's content
#: hash (nnU-Net's own and the Medical Segmentation Decathlon's datasets use low ids).
DATASET_ID_BASE = 500
DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def default_dataset_id(split_hash: str) -> int:
    """500..999, the same for the same split on any machine."""
    return DATASET_ID_BASE + int(split_hash[:12], 16) % (1000 - DATASET_ID_BASE)


def dataset_name_of(split_name: str) -> str:
    """A split name made into an nnU-Net dataset name: letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", split_name)


def nnunet_folds(members: list[tuple[str, str, int | None]], folds: int) -> list[dict]:
    """``splits_final.json``: the split's frozen folds over the case ids of train and val
    (case, subset, fold). Without folds, one fold: train against val."""
    rest = [(c, subset, fold) for c, subset, fold in members if subset != Subset.test]
    if not folds:
        return [
            {
                "train": sorted(c for c, subset, _ in rest if subset == Subset.train),
                "val": sorted(c for c, subset, _ in rest if subset == Subset.val),
            }
        ]
    return [
        {
            "train": sorted(c for c, _, fold in rest if fold != k),
            "val": sorted(c for c, _, fold in rest if fold == k),
        }
        for k in range(folds)
    ]


@dataclass
class SplitExport:
    """What ``split export`` wrote. For nnU-Net: the dataset folder and where its
    ``splits_final.json`` went (``splits_in_preprocessed``: where nnU-Net reads it)."""

    name: str
    format: ExportFormat
    out_dir: str  # --out: the nnUNet_raw folder for nnunet, the manifest folder for csv
    images: int
    test: int  # of them in the test set
    dataset_dir: str | None = None  # nnunet: OUT/DatasetNNN_Name
    dataset_id: int | None = None
    dataset_name: str | None = None
    file_ending: str | None = None
    splits_file: str | None = None
    splits_in_preprocessed: bool = False
    folds: int = 0  # folds in splits_final.json
    replaced: bool = False  # an earlier export was replaced whole
    uncalibrated: int = 0  # images written with 1 mm pixels (no calibration)
    notes: list[str] = field(default_factory=list)


def _nonempty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _other_dataset_with_id(folder: Path | None, dataset_id: int, name: str) -> Path | None:
    """A ``DatasetNNN_Other`` in ``folder`` with the same id: nnU-Net refuses an id that
    names two datasets."""
    if folder is None or not folder.is_dir():
        return None
    prefix = f"Dataset{dataset_id:03d}_"
    for p in sorted(folder.iterdir()):
        if p.name.startswith(prefix) and p.name != name and p.is_dir():
            return p
    return None


def _swap_in(built: Path, target: Path) -> bool:
    """Put the folder ``built`` at ``target`` by rename; an existing ``target`` is moved
    aside first and removed after, so no file of it survives. True when one was replaced."""
    if not target.exists():
        os.rename(built, target)
        return False
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(built, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def _build_folder(target: Path, write: Callable[[Path], None]) -> bool:
    """Make the folder ``target`` whole or not at all: ``write`` fills a new folder beside
    it, which is then renamed into place (:func:`_swap_in`); on any failure the new folder is
    removed and ``target`` is as it was. True when files in ``target`` were replaced."""
    had_files = _nonempty(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        write(build)
        os.chmod(build, 0o777 & ~_umask())  # mkdtemp made it 0700
        return _swap_in(build, target) and had_files
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _refuse_nonempty(target: Path, replace: bool, other: str) -> None:
    """A target folder that is a file, or not empty without ``replace``, is a usage error
    (``other``: what else the user can choose)."""
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a folder")
    if _nonempty(target) and not replace:
        raise UsageError(
            f"{target} is not empty (an earlier export?); pass --replace to rebuild it "
            f"whole, or choose {other}"
        )


def _dataset_json(name: str, split_hash: str, training: int, ending: str, protocol) -> dict:
    consecutive = {s.value: i + 1 for i, s in enumerate(protocol.structures)}
    return {
        "channel_names": {"0": "US"},
        "labels": {
            "background": 0,
            **{s.name: consecutive[s.value] for s in protocol.structures},
        },
        "numTraining": training,
        "file_ending": ending,
        "name": name,
        "description": f"datatool split {name} (hash {split_hash}); "
        "label values renumbered 1..N in protocol order: "
        + ", ".join(f"{s.name} {s.value}->{consecutive[s.value]}" for s in protocol.structures),
    }


def _write_manifest(out: Path, cases) -> None:
    buf = io.StringIO()
    writer = csv_writer(buf)
    writer.writerow(["case", "image_id", "patient", "side", "subset", "fold", "image", "label"])
    for case, m, pseudonym, side in cases:
        writer.writerow(
            [
                case,
                image_name(m.image_id),
                pseudonym,
                side or "",
                m.subset,
                "" if m.fold is None else m.fold,
                f"images/{case}.png",
                f"labels/{case}.png",
            ]
        )
    write_text_atomic(out / "manifest.csv", buf.getvalue())


def _nnunet_target(
    out: Path,
    dataset_dir: Path,
    dataset_id: int,
    preprocessed: Path | None,
    splits_text: str,
    replace: bool,
) -> None:
    """Refuse, before anything is written, a target nnU-Net would misread."""
    _refuse_nonempty(dataset_dir, replace, "another --dataset-id/--dataset-name")
    for folder in (out, preprocessed):
        other = _other_dataset_with_id(folder, dataset_id, dataset_dir.name)
        if other is not None:
            raise UsageError(
                f"{other} already has dataset id {dataset_id}: nnU-Net needs one name per "
                "id; choose another --dataset-id"
            )
    if preprocessed is not None:
        target = preprocessed / dataset_dir.name / "splits_final.json"
        if target.exists() and not replace:
            try:
                same = target.read_text() == splits_text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                raise UsageError(
                    f"{target} holds other folds (an earlier export?); pass --replace to "
                    "overwrite it"
                )


def export_split(
    ws: Workspace,
    name: str,
    fmt: str,
    out_dir: Path,
    *,
    dataset_id: int | None = None,
    dataset_name: str | None = None,
    file_ending: str = FileEnding.nifti,
    preprocessed: Path | None = None,
    replace: bool = False,
) -> SplitExport:
    """An nnU-Net v2 raw dataset ``OUT/DatasetNNN_Name`` (imagesTr, labelsTr, imagesTs,
    labelsTs, dataset.json) with the split's frozen patient-level folds as
    ``splits_final.json`` in ``preprocessed/DatasetNNN_Name`` (where nnU-Net reads it) or,
    without ``preprocessed``, in the dataset folder with a note saying where it must go; or a
    CSV manifest with image and label PNGs in ``out_dir``.

    The dataset folder (nnU-Net) or ``out_dir`` (CSV) is built beside its place and renamed
    into it: a non-empty one is refused unless ``replace``, and then replaced whole, so no
    case of an earlier export stays in imagesTr (nnU-Net trains on every case there) or
    beside the manifest. (The CLI also refuses a CSV --out that datatool did not write as a
    split export, unless --force: ``core.outputs``.)"""
    fmt = choice(ExportFormat, fmt, "--format")
    ending = choice(FileEnding, file_ending, "--file-ending")
    if dataset_id is not None and not 1 <= dataset_id <= 999:
        raise UsageError(
            f"--dataset-id must be 1 .. 999 (nnU-Net's three digits), not {dataset_id}"
        )
    if dataset_name is not None and not DATASET_NAME_RE.match(dataset_name):
        raise UsageError(
            f"--dataset-name {dataset_name!r}: letters, digits, '_' or '-' (max 64), "
            "starting with a letter or digit"
        )
    protocol = load_protocol(ws.protocol_name)
    check = check_split(ws, name)
    with ws.session() as s:
        split = get_split(s, name)
        rows = split_members(s, split)
        masks = {m.annotation_id: m.mask_hash for m, *_ in rows if m.annotation_id}
        folds, split_hash = split.folds, split.content_hash
        mm_of = {
            i: (x, y)
            for i, x, y in s.execute(
                select(Image.id, Image.mm_per_px_x, Image.mm_per_px_y)
                .join(SplitMember, SplitMember.image_id == Image.id)
                .where(SplitMember.split_id == split.id)
            )
        }
    unlabelled = [m for m, *_ in rows if m.annotation_id is None]
    if unlabelled:
        raise DatatoolError(
            f"split {name!r}: {len(unlabelled)} image(s) have no reference "
            "label; 'datatool split check' lists them"
        )
    if not check.hash_ok:
        raise DatatoolError(f"split {name!r} was altered; refusing to export it")
    out = Path(out_dir)
    store = ws.store
    cases = [
        (f"{pseudonym}_{image_name(m.image_id)}", m, pseudonym, side)
        for m, pseudonym, _sex, side, _ in rows
    ]
    if fmt == ExportFormat.csv:
        target = Path(os.path.abspath(out))
        _refuse_nonempty(target, replace, "another --out")

        def write_csv(build: Path) -> None:
            for (case, m, _, _), (*_, store_hash) in zip(cases, rows):
                write_bytes_atomic(
                    build / "images" / f"{case}.png", encode_png(store.get_array(store_hash))
                )
                mask = store.get_array(masks[m.annotation_id])
                write_bytes_atomic(build / "labels" / f"{case}.png", encode_png(mask))
            _write_manifest(build, cases)

        replaced = _build_folder(target, write_csv)
        with ws.session() as s:
            audit(
                s,
                "split export",
                "export",
                name=name,
                format=fmt,
                images=len(cases),
                replaced=replaced,
            )
        return SplitExport(
            name=name,
            format=fmt,
            out_dir=str(out),
            images=len(cases),
            test=sum(1 for _, m, _, _ in cases if m.subset == Subset.test),
            replaced=replaced,
            notes=[f"replaced {target} whole"] if replaced else [],
        )

    ds_id = default_dataset_id(split_hash) if dataset_id is None else dataset_id
    ds_name = dataset_name_of(name) if dataset_name is None else dataset_name
    dataset_dir = out / f"Dataset{ds_id:03d}_{ds_name}"
    fold_list = nnunet_folds([(c, m.subset, m.fold) for c, m, _, _ in cases], folds)
    splits_text = json.dumps(fold_list, indent=2)
    pre = Path(preprocessed) if preprocessed else None
    _nnunet_target(out, dataset_dir, ds_id, pre, splits_text, replace)

    consecutive = {s.value: i + 1 for i, s in enumerate(protocol.structures)}
    lut = np.array([consecutive.get(v, 0) for v in range(256)], np.uint8)

    def write(build: Path) -> None:
        for (case, m, _, _), (*_, store_hash) in zip(cases, rows):
            image = store.get_array(store_hash)
            label = lut[store.get_array(masks[m.annotation_id])]
            tr = "Ts" if m.subset == Subset.test else "Tr"
            image_path = build / f"images{tr}" / f"{case}_0000{ending}"
            label_path = build / f"labels{tr}" / f"{case}{ending}"
            if ending == FileEnding.png:
                write_bytes_atomic(image_path, encode_png(image))
                write_bytes_atomic(label_path, encode_png(label))
            else:
                write_image(image_path, image, spacing_mm(*mm_of[m.image_id]))
                write_segmentation(label_path, label, spacing_mm(*mm_of[m.image_id]))
        training = sum(1 for _, m, _, _ in cases if m.subset != Subset.test)
        write_text_atomic(
            build / "dataset.json",
            json.dumps(_dataset_json(name, split_hash, training, ending, protocol), indent=2),
        )
        if pre is None:
            write_text_atomic(build / "splits_final.json", splits_text)
        (build / "imagesTs").mkdir(exist_ok=True)  # nnU-Net's layout, also with no test set

    replaced = _build_folder(dataset_dir, write)
    notes = []
    if pre is not None:
        splits_file = pre / dataset_dir.name / "splits_final.json"
        write_text_atomic(splits_file, splits_text)
    else:
        splits_file = dataset_dir / "splits_final.json"
        notes.append(
            f"copy {splits_file} to $nnUNet_preprocessed/{dataset_dir.name}/splits_final.json "
            "before training: nnU-Net reads the folds only there (without it, it makes its "
            "own folds by image and one patient's images land in train and validation)"
        )
    if replaced:
        notes.append(
            f"replaced {dataset_dir} whole; run nnUNetv2_plan_and_preprocess again (data "
            "preprocessed from the earlier export is stale)"
        )
    if not folds:
        notes.append(
            f"split {name} has no folds: splits_final.json holds one fold (its train against "
            "its val set); train nnU-Net with fold 0"
        )
    uncalibrated = sum(1 for x, y in mm_of.values() if not (x and y))  # spacing_mm's 1 mm
    if ending == FileEnding.png:
        notes.append("PNG carries no pixel spacing: nnU-Net takes 1 mm pixels")
    elif uncalibrated:
        notes.append(
            f"{uncalibrated} image(s) have no calibration: written with 1.0 mm pixel spacing"
        )
    with ws.session() as s:
        audit(
            s,
            "split export",
            "export",
            name=name,
            format=fmt,
            images=len(cases),
            dataset=dataset_dir.name,
            file_ending=str(ending),
            splits_file=str(splits_file),
            replaced=replaced,
        )
    return SplitExport(
        name=name,
        format=fmt,
        out_dir=str(out),
        images=len(cases),
        test=sum(1 for _, m, _, _ in cases if m.subset == Subset.test),
        dataset_dir=str(dataset_dir),
        dataset_id=ds_id,
        dataset_name=ds_name,
        file_ending=str(ending),
        splits_file=str(splits_file),
        splits_in_preprocessed=pre is not None,
        folds=len(fold_list),
        replaced=replaced,
        uncalibrated=uncalibrated,
        notes=notes,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "SplitExport",
    "dataset_name_of",
    "default_dataset_id",
    "export_split",
    "nnunet_folds",
]
