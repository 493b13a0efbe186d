"""Splits over a partly labelled catalogue: split create freezes only images with a reference
label (counting the others by reason), deals patients by their labelled images, and a later
split made with --extend keeps every patient where it was; train never meets an unlabelled
image. Catalogues built by hand, so every expected number comes from what the test put in."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.cli import app
from datatool.core.catalogue import Image, Patient, Series, SourceFile, SplitMember, Study
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.learning.data import split_items
from datatool.learning.splits import SUBSETS, check_split, create_split, deal, parse_ratios
from tests.handmade import save, us_dataset, workspace_with_key

MULTIFRAME_US = "1.2.840.10008.5.1.4.1.1.3.1"
# patient -> (stills labelled, stills unlabelled, frames of an unlabelled cine)
CATALOGUE = {
    "P1": (4, 0, 0),
    "P2": (1, 1, 3),  # one labelled still; a still and a 3-frame cine nobody labelled
    "P3": (2, 0, 0),
    "P4": (2, 0, 0),
    "P5": (1, 5, 0),
    "P6": (1, 0, 0),
}


def _cine(path, patient_id, frames: int):
    ds = us_dataset(np.zeros((16, 16), np.uint8), patient_id=patient_id)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_US
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join(np.full((16, 16), 10 * k, np.uint8).tobytes() for k in range(frames))
    return save(ds, path)


LABELLED: set[int] = set()  # the images rater1 labelled in the fixture


@pytest.fixture()
def partial(tmp_path):
    """CATALOGUE ingested; rater1 (the reference) labelled the 'labelled' stills; rater2
    labelled one of P5's unlabelled stills (a label, but not the reference's)."""
    ws = workspace_with_key(tmp_path / "ws")
    labelled_paths = []
    for pid, (labelled, unlabelled, frames) in CATALOGUE.items():
        for k in range(labelled + unlabelled):
            pixels = np.full((16, 16), 20 + k, np.uint8)
            pixels[0, 0] = int(pid[1:])
            path = save(
                us_dataset(pixels, patient_id=pid, sop_uid=generate_uid()),
                tmp_path / "d" / pid / f"{k}.dcm",
            )
            if k < labelled:
                labelled_paths.append(path)
        if frames:
            _cine(tmp_path / "d" / pid / "cine.dcm", pid, frames)
    report = ingest(ws, [tmp_path / "d"], workers=0)
    assert report.images_added == sum(a + b + c for a, b, c in CATALOGUE.values())
    add_rater(ws, "rater1")
    add_rater(ws, "rater2")
    labelled = _label(ws, "rater1", labelled_paths, tmp_path)
    _label(ws, "rater2", [tmp_path / "d" / "P5" / "1.dcm"], tmp_path)
    LABELLED.clear()
    LABELLED.update(labelled)
    yield ws
    ws.close()


def _label(ws, rater, paths, tmp_path) -> set[int]:
    from datatool.labels.matching import image_for_dicom

    protocol = load_protocol(ws.protocol_name)
    ids = set()
    with ws.session() as s:
        row = get_rater(s, rater)
        for path in paths:
            image = image_for_dicom(s, ws.key, path)
            mask = np.zeros((16, 16), np.uint8)
            mask[4:8, 4:8] = 3
            store_annotation(s, ws.store, image, row, mask, "itksnap", path.name, protocol)
            ids.add(image.id)
    return ids


def _members(ws, name):
    with ws.session() as s:
        return {
            m.image_id: (m.patient_id, m.subset, m.fold, m.annotation_id)
            for m in s.scalars(select(SplitMember).where(SplitMember.split.has(name=name)))
        }


def _pseudonyms(ws) -> dict[str, str]:
    """Catalogue pseudonym -> the handmade patient id (by the pixel each image carries)."""
    with ws.session() as s:
        rows = s.execute(
            select(Patient.pseudonym, Image.store_hash, SourceFile.n_frames)
            .join(Study, Study.patient_id == Patient.id)
            .join(Series, Series.study_id == Study.id)
            .join(Image, Image.series_id == Series.id)
            .join(SourceFile, Image.source_file_id == SourceFile.id)
        ).all()
        out = {}
        for pseudonym, store_hash, n_frames in rows:
            if n_frames == 1:
                out[pseudonym] = f"P{int(ws.store.get_array(store_hash)[0, 0])}"
        return out


def test_only_images_with_a_reference_label_are_frozen_and_the_rest_counted_by_reason(partial):
    ws = partial
    info = create_split(ws, "s", reference="rater1", folds=0, ratios="6:2:2")
    members = _members(ws, "s")
    assert set(members) == LABELLED and all(m[3] is not None for m in members.values())
    # left out: P2's still and 3 cine frames, P5's 5 stills (one of them rater2's)
    assert info.left_out == 1 + 3 + 5
    reasons = {r.reason: r for r in info.left_out_reasons}
    assert set(reasons) == {
        "labelled by a rater, but no reference label from rater1",
        "not labelled by any rater",
    }
    by_rater2 = reasons["labelled by a rater, but no reference label from rater1"]
    assert (by_rater2.images, by_rater2.patients, by_rater2.cine_frames) == (1, 1, 0)
    nobody = reasons["not labelled by any rater"]
    assert (nobody.images, nobody.patients, nobody.cine_frames) == (8, 2, 3)
    assert "consensus" in by_rater2.next_step and "--extend" in nobody.next_step
    assert info.total.images == len(LABELLED) == info.total.with_reference
    check = check_split(ws, "s")
    assert check.ok, check.problems
    assert "not in this split" in check.notes[0]  # the 9 left out, as before
    # the training data loader's lists: labelled images only, every one with its mask
    seen = set()
    for part in SUBSETS:
        _, items = split_items(ws, "s", part, None)
        assert all(items.mask_hashes)
        seen |= set(items.image_ids)
    assert seen == LABELLED


def test_patients_are_dealt_by_their_labelled_images(partial):
    """The assignment is deal() over labelled-image counts, which differs here from a deal
    over all images (P5: 1 labelled of 6)."""
    ws = partial
    create_split(ws, "s", reference="rater1", folds=0, ratios="6:2:2", seed=3)
    names = _pseudonyms(ws)
    by_name = {v: k for k, v in names.items()}
    weights = list(parse_ratios("6:2:2"))
    labelled = [(by_name[p], a) for p, (a, _, _) in CATALOGUE.items()]
    everything = [(by_name[p], a + b + c) for p, (a, b, c) in CATALOGUE.items()]
    expected = deal(labelled, weights, seed=3)
    assert expected != deal(everything, weights, seed=3)  # the two rules disagree here
    with ws.session() as s:
        got = dict(
            s.execute(
                select(Patient.pseudonym, SplitMember.subset)
                .join(Patient, Patient.id == SplitMember.patient_id)
                .where(SplitMember.split.has(name="s"))
                .distinct()
            ).all()
        )
    assert got == {p: SUBSETS[k] for p, k in expected.items()}
    info = create_split(ws, "t", reference="rater1", folds=0, ratios="6:2:2", seed=3)
    assert [info.subsets[k].images for k in SUBSETS] == [
        sum(n for p, n in labelled if expected[p] == k) for k in range(3)
    ]


def test_all_images_keeps_the_unlabelled_ones_and_split_check_reports_them(partial):
    ws = partial
    info = create_split(ws, "all", reference="rater1", folds=0, all_images=True)
    assert info.left_out == 0 and info.left_out_reasons == []
    assert info.total.images == sum(a + b + c for a, b, c in CATALOGUE.values())
    assert not check_split(ws, "all").ok
    with pytest.raises(DatatoolError, match="no reference label"):
        split_items(ws, "all", "train", None)


def test_no_reference_label_at_all_is_one_line_and_nothing_is_made(partial):
    ws = partial
    with pytest.raises(DatatoolError, match=r"no consensus yet.*--all-images"):
        create_split(ws, "none", folds=0)  # no consensus rater exists
    with ws.session() as s:
        assert s.scalar(select(SplitMember.id)) is None


def test_a_later_split_keeps_every_patient_where_it_was(partial, tmp_path):
    """The unlabelled images get labelled, a new patient arrives: split s2 --extend s keeps
    every patient of s in its set (their new images with them) and deals only the new one."""
    ws = partial
    create_split(ws, "s", reference="rater1", folds=2, ratios="6:2:2", seed=1)
    before = _members(ws, "s")
    place = {patient: (subset, fold) for patient, subset, fold, _ in before.values()}
    with ws.session() as s:
        unlabelled = list(
            s.scalars(select(Image).where(Image.id.not_in(list(before))).order_by(Image.id))
        )
        protocol = load_protocol(ws.protocol_name)
        rater = get_rater(s, "rater1")
        for image in unlabelled:
            mask = np.zeros((16, 16), np.uint8)
            mask[2:5, 2:5] = 1
            store_annotation(s, ws.store, image, rater, mask, "itksnap", "late", protocol)
    save(us_dataset(np.full((16, 16), 99, np.uint8), patient_id="P7"), tmp_path / "n" / "0.dcm")
    ingest(ws, [tmp_path / "n"], workers=0)
    new_image = _label(ws, "rater1", [tmp_path / "n" / "0.dcm"], tmp_path).pop()
    with pytest.raises(UsageError, match="keeps its folds"):
        create_split(ws, "bad", reference="rater1", extend="s", folds=3)
    with pytest.raises(UsageError, match="keeps its ratios"):
        create_split(ws, "bad", reference="rater1", extend="s", ratios="1:1:1")
    info = create_split(ws, "s2", reference="rater1", extend="s")
    assert (info.extends, info.ratios, info.folds, info.seed, info.left_out) == (
        "s",
        "6:2:2",
        2,
        1,
        0,
    )
    after = _members(ws, "s2")
    assert set(after) == set(before) | {i.id for i in unlabelled} | {new_image}
    for image_id, (patient, subset, fold, _) in after.items():
        if image_id != new_image:
            assert (subset, fold) == place[patient], image_id
    assert check_split(ws, "s2").ok
    # without --extend the same catalogue may deal a patient elsewhere: the option matters
    moved = 0
    for seed in range(6):
        made = create_split(ws, f"p{seed}", reference="rater1", folds=2, seed=seed)
        plain = _members(ws, made.name)
        moved += any(
            (sub, fold) != place[patient]
            for patient, sub, fold, _ in plain.values()
            if patient in place
        )
    assert moved


def test_cli_shows_the_left_out_images_in_table_json_and_csv(partial, tmp_path):
    ws = partial
    runner = CliRunner()
    base = ["split", "create", "--reference", "rater1", "--folds", "0", "-w", str(ws.root)]
    res = runner.invoke(app, [*base[:2], "j", *base[2:], "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["left_out"] == 9 and data["extends"] is None
    assert {r["reason"]: r["images"] for r in data["left_out_reasons"]} == {
        "labelled by a rater, but no reference label from rater1": 1,
        "not labelled by any rater": 8,
    }
    res = runner.invoke(app, [*base[:2], "t", *base[2:]])
    assert res.exit_code == 0 and "left out: 9 image(s)" in res.stdout
    assert "not labelled by any rater" in res.stdout
    out = tmp_path / "split.csv"
    res = runner.invoke(app, [*base[:2], "c", *base[2:], "--csv", str(out)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "split-left-out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["reason"], r["images"], r["patients"], r["cine frames"]) for r in rows] == [
        ("labelled by a rater, but no reference label from rater1", "1", "1", "0"),
        ("not labelled by any rater", "8", "2", "3"),
    ]
    res = runner.invoke(app, [*base[:2], "a", *base[2:], "--all-images"])
    assert res.exit_code == 0 and "left out: no image" in res.stdout
    res = runner.invoke(
        app, ["split", "create", "x", "--extend", "j", "--folds", "3", "-w", str(ws.root)]
    )
    assert res.exit_code == 2 and "keeps its folds" in res.stderr


def test_the_demos_cine_frames_join_their_patients_set_once_labelled(ws, tmp_path):
    """The demo study with a cine loop: only the stills labelled at first, so the split
    leaves the loop's frames out (counted as cine frames); once every frame is labelled
    (from the demo's W x H x N volume), --extend puts them all in their patient's set."""
    import pydicom
    import SimpleITK as sitk

    from datatool.demo.generator import write_demo_dataset
    from datatool.ingest import deid
    from datatool.labels.matching import image_for_dicom

    demo = write_demo_dataset(
        tmp_path / "demo", patients=3, seed=7, images_per_side=(1, 1), cines=1, cine_frames=4
    )
    ingest(ws, [demo.dicom_dir], workers=0)
    add_rater(ws, "rater1")
    protocol = load_protocol(ws.protocol_name)
    labels = demo.labels_dir / "rater1"
    cine_frames: list[tuple[Image, np.ndarray]] = []
    with ws.session() as s:
        rater = get_rater(s, "rater1")
        for f in sorted(labels.rglob("*.nii.gz")):
            dicom = demo.dicom_dir / str(f.relative_to(labels)).replace(".nii.gz", ".dcm")
            volume = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.uint8)
            if dicom.name.endswith("_cine.dcm"):
                uid = deid.uid_for(ws.key, str(pydicom.dcmread(dicom).SOPInstanceUID))
                frames = s.scalars(
                    select(Image)
                    .join(SourceFile, Image.source_file_id == SourceFile.id)
                    .where(SourceFile.sop_uid == uid)
                    .order_by(Image.frame_index)
                ).all()
                assert len(frames) == 4
                cine_frames += [(im, volume[im.frame_index]) for im in frames]
                continue
            image = image_for_dicom(s, ws.key, dicom)
            mask = volume.reshape(volume.shape[-2:])
            store_annotation(s, ws.store, image, rater, mask, "itksnap", f.name, protocol)
    first = create_split(ws, "stills", reference="rater1", folds=0, ratios="1:1:1")
    assert first.left_out == 4
    assert [(r.reason, r.images, r.patients, r.cine_frames) for r in first.left_out_reasons] == [
        ("not labelled by any rater", 4, 1, 4)
    ]
    assert check_split(ws, "stills").ok
    place = {p: sub for p, sub, _, _ in _members(ws, "stills").values()}
    with ws.session() as s:
        rater = get_rater(s, "rater1")
        for image, mask in cine_frames:
            image = s.get_one(Image, image.id)
            store_annotation(s, ws.store, image, rater, mask, "itksnap", "cine", protocol)
    later = create_split(ws, "with-cine", reference="rater1", extend="stills")
    assert later.left_out == 0 and later.total.images == first.total.images + 4
    members = _members(ws, "with-cine")
    for image, _ in cine_frames:
        patient, subset, _, annotation = members[image.id]
        assert subset == place[patient] and annotation is not None
    assert all(subset == place[p] for p, subset, _, _ in members.values())
    assert check_split(ws, "with-cine").ok
