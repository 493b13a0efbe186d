"""Splits: patient-level, deterministic, frozen; show, check, export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.analysis.consensus import make_consensus
from datatool.cli import app
from datatool.core.catalogue import Annotation, Image, Split, SplitMember
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.store import encode_png
from datatool.learning.split_export import export_split
from datatool.learning.splits import check_split, create_split, deal, show_split
from tests.labels_util import ingest_demo_with_labels


@pytest.fixture()
def ready(ws, demo_dir):
    ingest_demo_with_labels(ws, demo_dir)
    make_consensus(ws, "staple")
    return ws


def members(ws, name):
    with ws.session() as s:
        return sorted(
            (m.image_id, m.patient_id, m.subset, m.fold)
            for m in s.scalars(
                select(SplitMember).join(SplitMember.split).where(SplitMember.split.has(name=name))
            )
        )


def test_deal_is_close_to_the_ratios_in_images():
    units = [(f"p{i}", n) for i, n in enumerate([16, 15, 14, 16, 15, 16, 14, 15, 16, 16] * 20)]
    bins = deal(units, [0.6, 0.2, 0.2], seed=1)
    total = sum(n for _, n in units)
    share = [sum(n for u, n in units if bins[u] == k) / total for k in range(3)]
    assert share == pytest.approx([0.6, 0.2, 0.2], abs=0.01)
    assert deal(units, [0.6, 0.2, 0.2], seed=1) == bins
    assert deal(units, [0.6, 0.2, 0.2], seed=2) != bins


def test_split_is_deterministic_patient_level_and_frozen(ready, tmp_path):
    ws = ready
    info = create_split(ws, "s1", seed=5, folds=2)  # 2 patients outside the test set
    again = create_split(ws, "s1-copy", seed=5, folds=2)
    assert info.hash == again.hash and members(ws, "s1") == members(ws, "s1-copy")
    rows = members(ws, "s1")
    by_patient = {}
    for _, patient, subset, fold in rows:
        by_patient.setdefault(patient, set()).add((subset, fold))
    assert all(len(v) == 1 for v in by_patient.values())  # one set and fold per patient
    assert {sub for _, _, sub, _ in rows} == {"train", "val", "test"}
    assert all(fold is None for _, _, sub, fold in rows if sub == "test")
    assert all(info.subsets[k].patients == 1 for k in ("train", "val", "test"))  # 3 patients
    check = check_split(ws, "s1")
    assert check.ok and check.hash_ok and not check.problems
    with pytest.raises(DatatoolError, match="never change"):
        create_split(ws, "s1")


def test_split_same_on_another_machine(ready, cli_env):
    """Another process (a machine with other hash seeds) computes the same split hash."""
    ws = ready
    info = create_split(ws, "here", seed=9, folds=2)
    code = (
        "from datatool.core.workspace import open_workspace; from datatool.learning.splits import "
        f"create_split; print(create_split(open_workspace({str(ws.root)!r}), 'there', "
        "seed=9, folds=2).hash)"
    )
    env = dict(cli_env, PYTHONHASHSEED="123")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    assert out.splitlines()[-1] == info.hash


def test_an_unknown_reference_rater_is_a_usage_error(ready):
    """An unknown rater is exit 2 in every command, --reference of split create too."""
    with pytest.raises(UsageError, match="'NOBODY' is not registered"):
        create_split(ready, "r", reference="NOBODY")
    res = CliRunner().invoke(
        app, ["split", "create", "r", "--reference", "NOBODY", "--workspace", str(ready.root)]
    )
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert len(res.stderr.strip().splitlines()) == 1 and "NOBODY" in res.stderr
    with ready.session() as s:  # nothing was made
        assert s.scalars(select(Split.name)).all() == []


def test_check_finds_leakage_and_missing_reference_labels(ready):
    ws = ready
    create_split(ws, "s", folds=2)
    with ws.session() as s:  # someone edits the frozen split behind datatool's back
        rows = list(s.scalars(select(SplitMember).where(SplitMember.split.has(name="s"))))
        patient = rows[0].patient_id
        other = next(m for m in rows if m.patient_id == patient and m.id != rows[0].id)
        other.subset = "test" if rows[0].subset != "test" else "train"
        rows[1].annotation_id = None
    result = check_split(ws, "s")
    assert not result.ok and not result.hash_ok
    text = " ".join(result.problems)
    assert "is in" in text and "no reference label" in text and "altered" in text
    res = CliRunner().invoke(app, ["split", "check", "s", "--workspace", str(ws.root)])
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert len(lines) == len(result.problems) and all(x.startswith("problem: s: ") for x in lines)
    assert "hash intact" not in res.stdout
    with pytest.raises(DatatoolError, match="no reference label"):
        export_split(ws, "s", "csv", ws.root / "out")
    create_split(ws, "t", folds=2)
    with ws.session() as s:  # only moved to another set: every label is there
        member = s.scalars(select(SplitMember).where(SplitMember.split.has(name="t"))).first()
        member.subset = "test" if member.subset != "test" else "train"
    assert not check_split(ws, "t").hash_ok
    with pytest.raises(DatatoolError, match="altered"):
        export_split(ws, "t", "csv", ws.root / "out")


def test_images_added_later_are_not_silently_added(ready, us_file):
    from datatool.ingest.pipeline import ingest

    ws = ready
    create_split(ws, "s", folds=2)
    before = members(ws, "s")
    ingest(ws, [us_file("OBXXXX1A.dcm")], workers=0)
    assert members(ws, "s") == before
    result = check_split(ws, "s")
    assert result.ok and "not in this split" in result.notes[0]


def test_stratify_and_options(ready):
    ws = ready
    info = create_split(ws, "by-sex", stratify="sex", folds=0, ratios="2:1:1")
    assert info.fold_sizes == {} and info.stratify == "sex"
    with pytest.raises(UsageError):
        create_split(ws, "bad", ratios="6:2")
    with pytest.raises(UsageError):
        create_split(ws, "bad", stratify="age")
    with pytest.raises(DatatoolError, match="no split"):
        show_split(ws, "missing")


def test_export_nnunet_and_csv(ready, tmp_path):
    ws = ready
    create_split(ws, "s", folds=2)
    nn = export_split(ws, "s", "nnunet", tmp_path / "nn", file_ending=".png")
    root = tmp_path / "nn" / f"Dataset{nn.dataset_id:03d}_s"
    assert nn.dataset_dir == str(root)
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["labels"]["femoral artery"] == 5 and dataset["file_ending"] == ".png"
    folds = json.loads((root / "splits_final.json").read_text())
    assert len(folds) == 2
    train_cases = {p.name[:-9] for p in (root / "imagesTr").iterdir()}
    assert len(train_cases) == dataset["numTraining"] == nn.images - nn.test
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == train_cases
        assert not set(fold["train"]) & set(fold["val"])
        assert not {c.split("_img")[0] for c in fold["train"]} & {
            c.split("_img")[0] for c in fold["val"]
        }  # patients never on both sides
    from PIL import Image as PILImage

    label = np.asarray(PILImage.open(next((root / "labelsTr").iterdir())))
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5}
    export_split(ws, "s", "csv", tmp_path / "csv")
    lines = (tmp_path / "csv" / "manifest.csv").read_text().splitlines()
    assert lines[0].startswith("case,image_id,patient") and len(lines) == 13


def test_cli_split_create_show_check_export(ready, tmp_path):
    ws = ["--workspace", str(ready.root)]
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["split", "create", "c", "--folds", "2", "--stratify", "sex", "--csv",
         str(tmp_path / "c.csv"), *ws],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "split c: hash" in res.stdout and "stratified by sex" in res.stdout
    assert "33.3 %" in res.stdout  # three patients, one a set
    rows = list(csv.reader((tmp_path / "c.csv").read_text().splitlines()))
    assert rows[0] == [
        "set", "patients", "images", "share", "female", "male", "left", "right", "with reference",
    ]  # fmt: skip
    assert [r[0] for r in rows[1:]] == ["train", "val", "test", "fold 0", "fold 1"]
    assert sum(float(r[3]) for r in rows[1:4]) == pytest.approx(100.0)  # raw per cent
    assert rows[4][3] == ""  # a fold has no share
    shown = json.loads(runner.invoke(app, ["split", "show", "c", "--json", *ws]).stdout)
    assert shown["name"] == "c" and shown["stratify"] == "sex" and len(shown["hash"]) == 64
    assert set(shown["subsets"]["train"]) == {
        "patients", "images", "female", "male", "left_images", "right_images",
        "with_reference", "share",
    }  # fmt: skip
    assert "share" not in shown["fold_sizes"]["0"] and "share" not in shown["total"]
    res = runner.invoke(app, ["split", "check", "c", *ws])
    assert res.exit_code == 0 and "no leakage" in res.stdout and "hash intact" in res.stdout
    checked = json.loads(runner.invoke(app, ["split", "check", "c", "--json", *ws]).stdout)
    assert checked["ok"] is True and checked["hash_ok"] is True and checked["problems"] == []
    res = runner.invoke(
        app, ["split", "export", "c", "--format", "csv", "--out", str(tmp_path / "x"), *ws]
    )
    assert res.exit_code == 0 and "as csv to" in res.stdout
    assert (tmp_path / "x" / "manifest.csv").exists()
    for args in (
        ["split", "create", "d", "--stratify", "age"],
        ["split", "export", "c", "--format", "zip", "--out", str(tmp_path / "y")],
    ):
        res = runner.invoke(app, [*args, *ws])
        assert res.exit_code == 2, res.output  # not one of the choices
    assert "nnunet" in runner.invoke(app, ["split", "export", "--help"]).output


def test_check_follows_images_to_their_patient_not_the_stored_one(ready):
    """Moving an image into another patient's series by hand leaves the stored patient id
    as it was: check recomputes membership from image -> series -> study -> patient."""
    ws = ready
    create_split(ws, "s", folds=0)
    assert check_split(ws, "s").ok
    with ws.session() as s:
        rows = list(s.scalars(select(SplitMember).where(SplitMember.split.has(name="s"))))
        a = next(m for m in rows if m.subset == "train")
        b = next(m for m in rows if m.subset == "test")
        image = s.get(Image, a.image_id)
        image.series_id = s.get(Image, b.image_id).series_id  # now patient b's image
    result = check_split(ws, "s")
    assert not result.ok
    text = " ".join(result.problems)
    assert f"img{a.image_id:06d} now belongs to patient" in text
    assert "is in test and train" in text


def test_check_verifies_every_frozen_reference_mask_in_the_store(ready):
    ws = ready
    create_split(ws, "s", folds=0)
    with ws.session() as s:
        member = s.scalars(select(SplitMember).where(SplitMember.annotation_id.is_not(None)))
        digests = [s.get(Annotation, m.annotation_id).mask_hash for m in member]
    gone = ws.store.path_for(digests[0])
    gone.unlink()
    changed = ws.store.path_for(digests[-1])
    other = encode_png(np.full((4, 4), 3, np.uint8))
    changed.write_bytes(other)
    result = check_split(ws, "s")
    assert not result.ok
    text = " ".join(result.problems)
    assert f"reference mask {digests[0][:12]} is missing" in text
    assert f"reference mask {digests[-1][:12]} no longer hashes" in text


def test_check_hashes_only_the_masks_touched_since_they_last_hashed_intact(ready):
    """At 30,000 images re-hashing every frozen mask at every check costs seconds (issue
    26): the second check hashes none, a mask rewritten since is hashed (and found), and
    ``--deep`` hashes every one."""
    ws = ready
    create_split(ws, "s", folds=0)
    first = check_split(ws, "s")
    assert first.ok and first.masks_hashed == first.images > 0
    assert check_split(ws, "s").masks_hashed == 0
    with ws.session() as s:
        member = s.scalars(select(SplitMember).where(SplitMember.annotation_id.is_not(None)))
        digest = s.get(Annotation, next(iter(member)).annotation_id).mask_hash
    ws.store.path_for(digest).write_bytes(encode_png(np.full((4, 4), 3, np.uint8)))
    touched = check_split(ws, "s")
    assert touched.masks_hashed == 1 and not touched.ok
    assert f"reference mask {digest[:12]} no longer hashes" in " ".join(touched.problems)
    res = CliRunner().invoke(
        app, ["split", "check", "s", "--deep", "--json", "--workspace", str(ws.root)]
    )
    assert res.exit_code == 1
    assert json.loads(res.stdout)["masks_hashed"] == first.images


def test_folds_beyond_the_patients_outside_the_test_set_are_refused(ready):
    with pytest.raises(UsageError, match="only 2 patient"):
        create_split(ready, "five", folds=5)  # 3 patients, 1 of them in the test set
    with pytest.raises(UsageError, match="--ratios"):
        create_split(ready, "nan", ratios="nan:1:1")
    with pytest.raises(DatatoolError, match="no split"):
        show_split(ready, "five")


def test_a_fold_of_a_split_without_folds_says_there_are_none(ready):
    from datatool.learning.data import split_items

    create_split(ready, "nofolds", folds=0, ratios="1:1:1", seed=1)
    create_split(ready, "two", folds=2, seed=1)
    with pytest.raises(UsageError, match=r"'nofolds' has no folds \(it was made with --folds 0\)"):
        split_items(ready, "nofolds", "train", 1)
    with pytest.raises(UsageError, match=r"'two' has 2 folds \(0\.\.1\)"):
        split_items(ready, "two", "train", 2)


def test_an_image_that_needs_adjudication_is_left_out_of_a_new_split(ws, demo_dir):
    """rater2 swapped the two muscles on one image: consensus leaves it without a label
    (adjudication), so a new split deals the other images, each with its reference label,
    checks clean and says it does not hold one catalogue image; training can use it."""
    from datatool.core.protocol import load_protocol
    from datatool.labels.annotations import get_rater, store_annotation

    ingest_demo_with_labels(ws, demo_dir)
    protocol = load_protocol(ws.protocol_name)
    am = protocol.by_label("adductor magnus").value
    st = protocol.by_label("semitendinosus").value
    with ws.session() as s:
        ann = s.scalars(
            select(Annotation).where(Annotation.rater.has(name="rater1")).order_by(Annotation.id)
        ).first()
        mask = ws.store.get_array(ann.mask_hash)
        swapped = mask.copy()
        swapped[mask == am], swapped[mask == st] = st, am
        store_annotation(
            s, ws.store, ann.image, get_rater(s, "rater2"), swapped, "itksnap", None, protocol
        )
        dropped = ann.image_id
        images = s.scalars(select(Image.id)).all()
    assert [a.image_id for a in make_consensus(ws, "staple").adjudication] == [dropped]
    summary = create_split(ws, "s", folds=0)
    assert summary.total.images == summary.total.with_reference == len(images) - 1
    assert summary.not_in_split == 1
    assert dropped not in [m[0] for m in members(ws, "s")]
    checked = check_split(ws, "s")
    assert checked.ok and checked.problems == []
    assert any("1 image(s) in the catalogue are not in this split" in n for n in checked.notes)
    shown = CliRunner().invoke(app, ["split", "show", "s", "--workspace", str(ws.root)])
    assert "1 catalogue images are not in it" in shown.stdout


def test_a_split_with_no_reference_label_at_all_says_what_to_do(ws, demo_dir):
    from datatool.labels.annotations import add_rater

    ingest_demo_with_labels(ws, demo_dir)
    add_rater(ws, "AN9")  # registered, no label yet
    with pytest.raises(DatatoolError, match="no image has a reference label from AN9"):
        create_split(ws, "s", folds=0, reference="AN9")
    with ws.session() as s:  # nothing was made
        assert s.scalars(select(Split.name)).all() == []


# ---------------------------------------------------------------- by hand (issue 28)


def _refused(text: str) -> str:
    from datatool.learning.splits import parse_ratios

    with pytest.raises(UsageError) as caught:
        parse_ratios(text)
    return str(caught.value)


def test_ratios_by_hand_and_their_refusals_word_for_word():
    from datatool.learning.splits import parse_ratios

    assert parse_ratios("6:2:2") == pytest.approx((0.6, 0.2, 0.2), rel=1e-15)
    assert parse_ratios("1:1:1") == pytest.approx((1 / 3, 1 / 3, 1 / 3), rel=1e-15)
    assert parse_ratios("3:0:1") == (0.75, 0.0, 0.25)
    assert parse_ratios("1:0:0") == (1.0, 0.0, 0.0)
    for text in ("6:2", "6:2:2:1", "0:1:1", "-1:1:1", "1:-1:2", "a:b:c", "inf:1:1",
                 "nan:1:1", "0:0:0", "1e308:1e308:1e308", ""):  # fmt: skip
        assert _refused(text) == (
            f"--ratios takes three finite shares train:val:test such as 6:2:2, not {text!r}"
        ), text
    long = "1:" * 30 + "1"
    assert _refused(long).endswith(f"not {long[:40]!r}")
    assert _refused("5e-324:1:1") == (
        "--ratios '5e-324:1:1': shares too far apart to divide; use e.g. 6:2:2"
    )


def test_deal_by_hand():
    """Largest unit first, each to the bin furthest under its target (relative), ties to the
    lower bin: 4, 3, 2, 1 images over 6:2:2 of 10 go to bins 0, 1, 2, 0."""
    import hashlib

    units = [("d", 1), ("b", 3), ("a", 4), ("c", 2)]
    assert deal(units, [0.6, 0.2, 0.2], seed=1) == {"a": 0, "b": 1, "c": 2, "d": 0}
    # bin 2 holds 5 images already: targets 9, 3, 3 of 15
    assert deal(units, [0.6, 0.2, 0.2], 1, filled=[0, 0, 5]) == {"a": 0, "b": 1, "c": 0, "d": 0}
    assert deal(units, [1.0, 0.0, 0.0], 1) == {"a": 0, "b": 0, "c": 0, "d": 0}
    # units of one size: the keyed hash of "seed:name" orders them
    names = ["x", "y", "z"]
    for seed in (1, 2, 3):
        first = min(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
        got = deal([(n, 2) for n in names], [0.5, 0.5], seed)
        assert got[first] == 0 and sorted(got.values()) == [0, 0, 1], seed


def test_the_content_hash_is_sha256_of_compact_sorted_json():
    import hashlib

    from datatool.learning.splits import _hashed, content_hash

    member = _hashed("h1", "P-1", "test", None, None)
    assert member == ("h1", "P-1", "test", -1, "")
    assert _hashed("h2", "P-2", "train", 3, "m2") == ("h2", "P-2", "train", 3, "m2")
    body = (
        '{"members":[["h1","P-1","test",-1,""],["h2","P-2","train",0,"m"]],'
        '"params":{"folds":0,"ratios":"6:2:2"}}'
    )
    members = [("h2", "P-2", "train", 0, "m"), member]
    got = content_hash({"ratios": "6:2:2", "folds": 0}, members)
    assert got == hashlib.sha256(body.encode()).hexdigest()


def test_whole_patients_dealt_by_hand():
    """Patients A (4 images, F), B (3, M), C (2, F), D (1, M) over 6:2:2."""
    from datatool.learning.options import Stratify
    from datatool.learning.splits import _assign

    population = []
    for pid, (name, n, sex) in enumerate([("A", 4, "F"), ("B", 3, "M"), ("C", 2, "F"),
                                          ("D", 1, "M")], start=1):  # fmt: skip
        population += [(100 * pid + k, pid, name, sex, "left") for k in range(n)]
    w = [0.6, 0.2, 0.2]
    assert _assign(population, w, 0, 1, None) == ({"A": 0, "B": 1, "C": 2, "D": 0}, {})
    # two folds of the patients outside the test set (A 4, B 3, D 1 of 8): A, then B, D
    assert _assign(population, w, 2, 1, None)[1] == {"A": 0, "B": 1, "D": 1}
    with pytest.raises(UsageError) as caught:
        _assign(population, w, 4, 1, None)
    assert str(caught.value) == (
        "--folds 4: only 3 patient(s) outside the test set; at most 3 folds (or --folds 0)"
    )
    # by sex: F (A 4, C 2) and M (B 3, D 1) dealt apart, each over 6:2:2
    assert _assign(population, w, 0, 1, Stratify.sex)[0] == {"A": 0, "C": 1, "B": 0, "D": 1}
    # A kept in the test set from an earlier split: B, C, D dealt round its 4 images
    subset_of, _ = _assign(population, w, 0, 1, None, kept={1: (2, None)})
    assert subset_of == {"A": 2, "B": 0, "C": 1, "D": 0}


def _member(image_id, subset="train", fold=None, annotation_id=None):
    """A split member as the catalogue holds it (not added to any session)."""
    return SplitMember(image_id=image_id, subset=subset, fold=fold, annotation_id=annotation_id)


def test_set_counts_by_hand():
    """Five members of four patients: A (F; a left image with a label, a right one without),
    B (M, no side, labelled), C (no sex, left, labelled), D (F, right): 4 patients, 2 of
    them female and 1 male, 2 left and 2 right images, 3 with a reference label."""
    from datatool.learning.splits import _counts

    rows = [
        (_member(1, annotation_id=5), "P-A", "F", "L", "h1"),
        (_member(2), "P-A", "F", "R", "h2"),
        (_member(3, annotation_id=7), "P-B", "M", None, "h3"),
        (_member(4, annotation_id=8), "P-C", None, "L", "h4"),
        (_member(5), "P-D", "F", "R", "h5"),
    ]
    counts = _counts(rows, 0.25)
    assert counts.as_dict() == {
        "patients": 4, "images": 5, "female": 2, "male": 1, "left_images": 2,
        "right_images": 2, "with_reference": 3, "share": 0.25,
    }  # fmt: skip
    assert "share" not in _counts(rows).as_dict() and _counts(rows).share is None
    assert _counts([]).as_dict() == {
        "patients": 0, "images": 0, "female": 0, "male": 0, "left_images": 0,
        "right_images": 0, "with_reference": 0,
    }  # fmt: skip
    men = _counts([(_member(9), "P-E", "M", "R", "h9")], 0.0).as_dict()
    assert (men["female"], men["male"], men["left_images"], men["right_images"]) == (0, 1, 0, 1)
    assert men["share"] == 0.0


def test_leakage_word_for_word_by_hand():
    """E is in test and train; A in train and val and folds 0 and 1; B's test image sits in
    fold 2; C's two images share a set and fold; D is a test patient with no fold."""
    from datatool.learning.splits import _leakage

    rows = [
        (_member(1, "test"), "P-E"),
        (_member(2, "train", 0), "P-E"),
        (_member(3, "train", 0), "P-A"),
        (_member(4, "val", 1), "P-A"),
        (_member(5, "test", 2), "P-B"),
        (_member(6, "train", 0), "P-C"),
        (_member(7, "train", 0), "P-C"),
        (_member(8, "test"), "P-D"),
    ]
    assert _leakage(rows) == [
        "img000005: a test image in fold 2",
        "patient P-A is in train and val",
        "patient P-E is in test and train",
        "patient P-A is in folds [0, 1]",
    ]
    assert _leakage(rows[5:]) == []


def test_moved_images_and_the_first_five_word_for_word_by_hand():
    from datatool.learning.splits import _first_five, _moved

    assert _first_five(["a", "b", "c", "d", "e"], "x") == ["a", "b", "c", "d", "e"]
    assert _first_five(list("abcdef"), "things") == [*"abcde", "... and 1 more things"]
    assert _first_five(list("abcdefg"), "x") == [*"abcde", "... and 2 more x"]
    assert _first_five([], "x") == []
    rows = [(_member(2), "P-A"), (_member(3), "P-A"), (_member(4), "P-B")]
    owner = {2: "P-B", 3: "P-A"}  # image 4 is no longer in the catalogue's patients
    assert _moved(rows, owner) == [
        "img000002 now belongs to patient P-B, not P-A as frozen (its series was moved)",
        "img000004 now belongs to patient None, not P-B as frozen (its series was moved)",
    ]
    many = [(_member(k), "P-A") for k in range(1, 8)]
    moved = _moved(many, dict.fromkeys(range(1, 8), "P-Z"))
    assert len(moved) == 6 and moved[4].startswith("img000005 now belongs to patient P-Z")
    assert moved[5] == "... and 2 more images moved to another patient"


def test_split_parameters_inherited_word_for_word_by_hand():
    """A new split's parameters: the defaults (6:2:2, 5 folds, seed 0, no strata), those
    given, or an extended split's; a split that extends another may change only the seed."""
    from datatool.learning.splits import _inherit, _Params, _params

    assert _inherit(None, None, None, None, None) == _Params("6:2:2", 5, 0, None)
    assert _inherit(None, "3:1:1", 0, 7, "side") == _Params("3:1:1", 0, 7, "side")
    base = Split(name="old", ratios="3:1:1", folds=4, seed=9, stratify="sex", reference="R1")
    assert _params(base) == {
        "ratios": "3:1:1", "folds": 4, "seed": 9, "stratify": "sex", "reference": "R1"
    }  # fmt: skip
    assert _inherit(base, None, None, None, None) == _Params("3:1:1", 4, 9, "sex")
    # the same shares written otherwise, the same folds and strata: accepted, the base's kept
    assert _inherit(base, "6:2:2", 4, 2, "sex") == _Params("3:1:1", 4, 2, "sex")
    refusals = [
        (("1:1:1", None, None), "--ratios 1:1:1: split 'old' was dealt 3:1:1, and a split that "
         "extends it keeps its ratios (leave --ratios out)"),
        ((None, 3, None), "--folds 3: split 'old' has 4 folds, and a split that extends it "
         "keeps its folds (leave --folds out)"),
        ((None, None, "side"), "--stratify side: split 'old' is stratified by sex, and a split "
         "that extends it keeps that"),
        ((None, None, "age"), "--stratify must be one of sex, side, not 'age'"),
    ]  # fmt: skip
    for (ratios, folds, stratify), message in refusals:
        with pytest.raises(UsageError) as caught:
            _inherit(base, ratios, folds, None, stratify)
        assert str(caught.value) == message
    plain = Split(name="flat", ratios="6:2:2", folds=0, seed=0, stratify=None)
    assert _inherit(plain, None, 0, 0, None) == _Params("6:2:2", 0, 0, None)
    with pytest.raises(UsageError) as caught:
        _inherit(plain, None, None, None, "sex")
    assert str(caught.value) == (
        "--stratify sex: split 'flat' is stratified by nothing, and a split that extends it "
        "keeps that"
    )


def _population(*patients):
    """(image id, patient id, pseudonym, sex, side) rows: patients as (name, images, sex,
    side), numbered from 1 in the order given."""
    rows = []
    for pid, (name, n, sex, side) in enumerate(patients, start=1):
        rows += [(100 * pid + k, pid, name, sex, side) for k in range(n)]
    return rows


def test_patients_kept_from_an_earlier_split_dealt_round_by_hand():
    """Every figure worked out here, relative shortfall (target - filled) / target, ties to
    the lower set or fold."""
    from datatool.learning.splits import _assign

    w = [0.6, 0.2, 0.2]
    # K1, K2 (1 image each) kept in train: 2 of 10 images, targets 6, 2, 2. X (5): shortfalls
    # 4/6, 1, 1 -> val; Y (2): 4/6, -3/2, 1 -> test; Z (1): 4/6, -3/2, 0 -> train
    pop = _population(("K1", 1, "F", "L"), ("K2", 1, "F", "L"), ("X", 5, "F", "L"),
                      ("Y", 2, "F", "L"), ("Z", 1, "F", "L"))  # fmt: skip
    kept = {1: (0, None), 2: (0, None)}
    assert _assign(pop, w, 0, 1, None, kept) == ({"K1": 0, "K2": 0, "X": 1, "Y": 2, "Z": 0}, {})
    # K1, K2 kept in val: 2 of 8 images, targets 4.8, 1.6, 1.6. X (3): 1, -1/4, 1 -> train;
    # Y (2): 1.8/4.8, -1/4, 1 -> test; Z (1): 1.8/4.8, -1/4, -1/4 -> train
    pop = _population(("K1", 1, "F", "L"), ("K2", 1, "F", "L"), ("X", 3, "F", "L"),
                      ("Y", 2, "F", "L"), ("Z", 1, "F", "L"))  # fmt: skip
    kept = {1: (1, None), 2: (1, None)}
    assert _assign(pop, w, 0, 1, None, kept) == ({"K1": 1, "K2": 1, "X": 0, "Y": 2, "Z": 0}, {})
    # K1 (1 image), K2 (2) kept in train, fold 1: 3 of 9 images, targets 5.4, 1.8, 1.8.
    # X (3): 2.4/5.4, 1, 1 -> val; Y (2): 2.4/5.4, -2/3, 1 -> test; Z (1): 2.4/5.4, -2/3,
    # -1/9 -> train. Folds of K1, K2 (3 images in fold 1), X and Z: targets 3.5, 3.5;
    # X (3): 1, 0.5/3.5 -> fold 0; Z (1): 0.5/3.5 each -> fold 0
    pop = _population(("K1", 1, "F", "L"), ("K2", 2, "F", "L"), ("X", 3, "F", "L"),
                      ("Y", 2, "F", "L"), ("Z", 1, "F", "L"))  # fmt: skip
    kept = {1: (0, 1), 2: (0, 1)}
    assert _assign(pop, w, 2, 1, None, kept) == (
        {"K1": 0, "K2": 0, "X": 1, "Y": 2, "Z": 0},
        {"K1": 1, "K2": 1, "X": 0, "Z": 0},
    )


def test_images_sides_seeds_and_folds_dealt_by_hand():
    import hashlib

    from datatool.learning.options import Stratify
    from datatool.learning.splits import _assign

    # by images: A 7, B 2, C 1 over 3:1:0, targets 7.5, 2.5, 0. A -> train; B: 0.5/7.5, 1 ->
    # val; C: 0.5/7.5, 0.5/2.5 -> val
    pop = _population(("A", 7, "F", "L"), ("B", 2, "F", "L"), ("C", 1, "F", "L"))
    assert _assign(pop, [0.75, 0.25, 0.0], 0, 1, None) == ({"A": 0, "B": 1, "C": 1}, {})
    # by side: A (2 right images) alone in its stratum -> train; B and C (1 left each) over
    # 6:2:2 of 2, the first in the keyed-hash order -> train, the other -> val
    pop = _population(("A", 2, "F", "R"), ("B", 1, "F", "L"), ("C", 1, "M", "L"))
    first = min("BC", key=lambda n: hashlib.sha256(f"1:{n}".encode()).hexdigest())
    other = "C" if first == "B" else "B"
    got = _assign(pop, [0.6, 0.2, 0.2], 0, 1, Stratify.side)
    assert got == ({"A": 0, first: 0, other: 1}, {})
    # one image each over 3:1:0 (targets 2.25, 0.75, 0): in the keyed-hash order of
    # "seed:name" the first -> train, the second -> val, the third -> train
    pop = _population(("A", 1, "F", "L"), ("B", 1, "M", "L"), ("C", 1, "M", "L"))
    for seed in (1, 2, 7):
        order = sorted("ABC", key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
        got = _assign(pop, [0.75, 0.25, 0.0], 0, seed, None)
        assert got == ({order[0]: 0, order[1]: 1, order[2]: 0}, {}), seed
    # as many folds as patients outside the test set: A 4, B 3, D 1 -> folds 0, 1, 2
    pop = _population(("A", 4, "F", "L"), ("B", 3, "M", "L"), ("C", 2, "F", "L"),
                      ("D", 1, "M", "L"))  # fmt: skip
    assert _assign(pop, [0.6, 0.2, 0.2], 3, 1, None)[1] == {"A": 0, "B": 1, "D": 2}
    # A kept in the test set (no fold): B 3, C 2, D 1 dealt round its 4 images to train,
    # val, train; their folds (targets 3, 3): B -> 0, C -> 1, D: 0, 1/3 -> 1
    got = _assign(pop, [0.6, 0.2, 0.2], 2, 1, None, kept={1: (2, None)})
    assert got == ({"A": 2, "B": 0, "C": 1, "D": 0}, {"B": 0, "C": 1, "D": 1})


def test_deal_at_its_edges_by_hand():
    """No units: nothing dealt (a stratum whose patients all went to the test set has no
    folds to deal). Bins filled past the new units: train holds 20 of 23 images (targets
    13.8, 4.6, 4.6), so a (2) -> val (shortfalls -6.2/13.8, 1, 1: ties to the lower bin) and
    b (1) -> test (2.6/4.6 against 1)."""
    assert deal([], [0.6, 0.2, 0.2], 1) == {}
    assert deal([], [0.5, 0.5], 1, filled=[3, 0]) == {}
    assert deal([("a", 2), ("b", 1)], [0.6, 0.2, 0.2], 1, filled=[20, 0, 0]) == {"a": 1, "b": 2}
    long = "5e-324:1." + "0" * 40 + ":1"  # passes the first check, underflows the second
    assert _refused(long) == (
        f"--ratios {long[:40]!r}: shares too far apart to divide; use e.g. 6:2:2"
    )


def test_folds_in_the_keyed_hash_order_by_hand():
    """Four patients of one image each, all in train (ratios 1:0:0), over two folds: in the
    keyed-hash order of "seed:name" they go to folds 0, 1, 0 (a tie at 1 image each: the
    lower fold), 1."""
    import hashlib

    from datatool.learning.splits import _assign

    pop = _population(*[(name, 1, "F", "L") for name in "ABCD"])
    for seed in (1, 2, 4):
        order = sorted("ABCD", key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
        subset_of, fold_of = _assign(pop, [1.0, 0.0, 0.0], 2, seed, None)
        assert subset_of == dict.fromkeys("ABCD", 0)
        assert fold_of == {order[0]: 0, order[1]: 1, order[2]: 0, order[3]: 1}, seed
