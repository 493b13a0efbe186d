"""Migrations carry data: a catalogue made at each earlier revision (Alembic, the project's
own configuration), filled with plain SQL that fits that revision, then opened as a workspace
(which upgrades it to head) keeps every row, reads through the models, and ends with the
schema the models describe. The revisions are walked from the migration scripts, so new ones
are covered as they come; data is written at the revisions this test knows."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select

from datatool.core.catalogue import (
    AgreementSample,
    Annotation,
    Base,
    DraftHandout,
    GoldTask,
    Image,
    LabelStudioProject,
    LabelStudioTask,
    Patient,
    QAFlag,
    Rater,
    Received,
    Run,
    RunEpoch,
    Score,
    Setting,
    Split,
    SplitMember,
    StructureStats,
    Study,
)
from datatool.core.workspace import (
    SCHEMA_HEAD,
    alembic_config,
    init_workspace,
    key_fingerprint,
    open_workspace,
)

SCRIPT = ScriptDirectory.from_config(alembic_config("sqlite://"))
ORDER = [r.revision for r in reversed(list(SCRIPT.walk_revisions()))]
HEAD = SCRIPT.get_current_head()
T = "2025-01-02 03:04:05.000000"
KEY_HEX = "ab" * 32

# Rows each known revision's tables can hold, in plain SQL of that revision's columns.
SEEDS = {
    "0001": [
        "INSERT INTO audit_log VALUES (1, '" + T + "', 'tester', 'ingest', 'ingest', "
        "'{\"files\": 1}')",
        "INSERT INTO patients VALUES (1, 'P-AAAAAAAAAA', 'F', 47, 22.5, 2, '" + T + "')",
        "INSERT INTO studies VALUES (1, 1, '2.25.1', '2024-12-01', 47)",
        "INSERT INTO series VALUES (1, 1, '2.25.2', 'US', 'L', 'Acme', 'Sono 1')",
        "INSERT INTO source_files VALUES (1, '" + "a" * 64 + "', 1234, '" + "b" * 64 + "', "
        "'2.25.3', '1.2.840.10008.5.1.4.1.1.6.1', '1.2.840.10008.1.2.1', 'MONOCHROME2', 8, 1, "
        "'ingested', NULL, NULL, '" + T + "')",
        "INSERT INTO images VALUES (1, 1, 1, 0, '" + "c" * 64 + "', 40, 50, 0.1, 0.1, "
        '\'[{"x0": 0, "y0": 0, "x1": 49, "y1": 39}]\', \'blanked_outside_regions\')',
    ],
    "0002": [
        "INSERT INTO raters VALUES (1, 'AN1', 'human', '" + T + "')",
        "INSERT INTO annotations VALUES (1, 1, 1, 1, 'itksnap', 'a.nii.gz', '" + "d" * 64 + "', "
        "'anterior_sciatic', '" + T + "')",
        "INSERT INTO structure_stats VALUES "
        "(1, 1, 'sciatic nerve', 3, 56, 0.56, 1, 10, 25, 17, 31)",
        "INSERT INTO labelstudio_projects VALUES (1, 7, 1, 'datatool AN1', '" + T + "')",
        "INSERT INTO labelstudio_tasks VALUES (1, 1, 70, 1)",
    ],
    "0003": [
        "INSERT INTO splits VALUES (1, 's', '" + "e" * 64 + "', 3, '6:2:2', 5, 'sex', 'AN1', "
        "'" + T + "')",
        "INSERT INTO split_members VALUES (1, 1, 1, 1, 'train', 0, 1)",
        "INSERT INTO agreement_samples VALUES (1, 1, 1, NULL, 0, 1, '" + T + "')",
        "INSERT INTO agreement_items VALUES (1, 1, 1, 1, 1)",
    ],
    "0004": [
        "INSERT INTO runs VALUES (1, 1, '" + "e" * 64 + "', NULL, NULL, 'tiny', "
        "'{\"preset\": \"tiny\", \"epochs\": 2}', 0, '0.1.0', 'cpu:x86_64', 'done', 2, 1, 0.5, "
        "'" + "f" * 64 + "', '" + "f" * 64 + "', '" + T + "', '" + T + "')",
        "INSERT INTO run_epochs VALUES (1, 1, 0, 0.9, 0.8, 0.4, 0.41, 12.5)",
        "INSERT INTO run_epochs VALUES (2, 1, 1, 0.7, 0.6, 0.5, 0.52, 12.0)",
        "INSERT INTO scores VALUES (1, 1, 'test', '{\"images\": 4}', '" + T + "')",
    ],
    "0005": [  # a second version of AN1's label, made from run 1's draft
        "INSERT INTO annotations (id, image_id, rater_id, version, source, source_ref, "
        "mask_hash, protocol, created_at, draft_version, draft_run_id, draft_hash, "
        "draft_unchanged) VALUES (2, 1, 1, 2, 'labelstudio', 'task 70', '" + "9" * 64 + "', "
        "'anterior_sciatic', '" + T + "', 'datatool-run-1', 1, '" + "8" * 64 + "', 0)",
        "UPDATE agreement_samples SET include_prelabelled = 1 WHERE id = 1",
    ],
    "0006": [  # the fingerprint of the key this test writes
        "INSERT INTO settings VALUES ('key_fingerprint', '"
        + key_fingerprint(bytes.fromhex(KEY_HEX))
        + "', '"
        + T
        + "')",
    ],
    "0007": [  # an open QA flag on AN1's second version
        "INSERT INTO qa_flags (id, image_id, annotation_id, structure, reason, severity, "
        "evidence, run_id, status, created_at, updated_at) VALUES (1, 1, 2, 'sciatic nerve', "
        "'model_disagreement', 0.7, '{\"dice\": 0.3}', 1, 'open', '" + T + "', '" + T + "')",
    ],
    "0008": [  # image 1 handed to a second rater as gold against AN1's version 2
        "INSERT INTO raters VALUES (2, 'AN3', 'human', '" + T + "')",
        "INSERT INTO gold_tasks VALUES (1, 2, 1, 2, 'labelstudio', 17, '" + T + "')",
        "UPDATE agreement_samples SET include_gold = 1 WHERE id = 1",
    ],
    "0009": [  # run 1's draft of image 1, handed to AN1 in an ITK-SNAP export
        "INSERT INTO draft_handouts VALUES (1, 1, 1, 1, 'datatool-run-1-split-eeeeeeeeeeee', '"
        + "8" * 64
        + "', 'itksnap', '"
        + "7" * 64
        + "', '"
        + T
        + "')",
    ],
    "0010": [  # the sample of 0003 drew at most one frame per cine
        "UPDATE agreement_samples SET per_cine = 1 WHERE id = 1",
    ],
    "0011": [  # AN3 works on a Label Studio server of their own, which numbers from 1 too
        "UPDATE raters SET labelstudio_url = 'http://127.0.0.1:8081' WHERE name = 'AN3'",
        "INSERT INTO labelstudio_projects VALUES (2, 7, 2, 'datatool AN3', '" + T + "')",
    ],
    "0012": [  # AN1's second version linked to its draft by overlap
        "UPDATE annotations SET draft_link = 'overlap', "
        "draft_iou = '{\"sciatic nerve\": 0.93}' WHERE id = 2",
    ],
    "0013": [  # a scanner's object received by 'datatool listen' and ingested
        "INSERT INTO received VALUES (1, '00000001-abc-5553', 'US1', '" + T + "', 'ingested', "
        "NULL, '" + T + "')",
    ],
    "0014": [  # AN1's second version redrawn from 3 clicks by run 1's interactive backend
        "UPDATE annotations SET draft_clicks = 3 WHERE id = 2",
    ],
}


def _check_0001(s) -> None:
    patient = s.scalars(select(Patient)).one()
    assert (patient.pseudonym, patient.sex, patient.age_years, patient.bmi) == (
        "P-AAAAAAAAAA", "F", 47, 22.5)  # fmt: skip
    study = s.scalars(select(Study)).one()
    assert str(study.study_date) == "2024-12-01" and study.patient_id == 1
    image = s.scalars(select(Image)).one()
    assert (image.rows, image.cols, image.mm_per_px_x) == (40, 50, 0.1)
    assert image.regions == [{"x0": 0, "y0": 0, "x1": 49, "y1": 39}]
    assert image.series.side == "L" and image.source_file.status == "ingested"


def _check_0002(s) -> None:
    ann = s.get_one(Annotation, 1)
    assert (ann.rater.name, ann.version, ann.mask_hash) == ("AN1", 1, "d" * 64)
    stats = s.scalars(select(StructureStats)).one()
    assert (stats.structure, stats.area_px, stats.area_mm2) == ("sciatic nerve", 56, 0.56)
    assert s.scalars(select(LabelStudioTask)).one().task_id == 70


def _check_0003(s) -> None:
    split = s.scalars(select(Split)).one()
    assert (split.name, split.ratios, split.folds, split.stratify) == ("s", "6:2:2", 5, "sex")
    member = s.scalars(select(SplitMember)).one()
    assert (member.subset, member.fold, member.annotation_id) == ("train", 0, 1)
    sample = s.scalars(select(AgreementSample)).one()
    assert sample.size is None and [i.annotation_b_id for i in sample.items] == [1]


def _check_0004(s) -> None:
    run = s.scalars(select(Run)).one()
    assert run.config == {"preset": "tiny", "epochs": 2} and run.status == "done"
    assert [e.train_loss for e in s.scalars(select(RunEpoch).order_by(RunEpoch.epoch))] == [
        0.9, 0.7]  # fmt: skip
    assert s.scalars(select(Score)).one().results == {"images": 4}


def _check_0005(s) -> None:
    ann = s.get_one(Annotation, 2)
    assert (ann.version, ann.source, ann.mask_hash) == (2, "labelstudio", "9" * 64)
    assert (ann.draft_version, ann.draft_run_id, ann.draft_hash, ann.draft_unchanged) == (
        "datatool-run-1", 1, "8" * 64, False)  # fmt: skip
    assert s.get_one(Annotation, 1).draft_run_id is None
    assert s.scalars(select(AgreementSample)).one().include_prelabelled is True


def _check_0006(s) -> None:
    assert s.get_one(Setting, "key_fingerprint").value == key_fingerprint(bytes.fromhex(KEY_HEX))


def _check_0007(s) -> None:
    flag = s.get_one(QAFlag, 1)
    assert (flag.annotation_id, flag.reason, flag.status, flag.evidence) == (
        2, "model_disagreement", "open", {"dice": 0.3})  # fmt: skip


def _check_0008(s) -> None:
    gold = s.scalars(select(GoldTask)).one()
    assert (gold.rater.name, gold.image_id, gold.tool, gold.seed) == ("AN3", 1, "labelstudio", 17)
    assert (gold.reference.rater.name, gold.reference.version) == ("AN1", 2)
    assert s.scalars(select(AgreementSample)).one().include_gold is True


def _check_0009(s) -> None:
    handout = s.scalars(select(DraftHandout)).one()
    assert (handout.image_id, handout.rater_id, handout.run_id, handout.via) == (1, 1, 1, "itksnap")
    assert (handout.mask_hash, handout.file_sha256) == ("8" * 64, "7" * 64)


def _check_0010(s) -> None:
    assert s.scalars(select(AgreementSample)).one().per_cine is True


def _check_0011(s) -> None:
    urls = {r.name: r.labelstudio_url for r in s.scalars(select(Rater))}
    assert urls == {"AN1": None, "AN3": "http://127.0.0.1:8081"}
    projects = s.scalars(select(LabelStudioProject).order_by(LabelStudioProject.id))
    assert [(p.project_id, p.rater.name) for p in projects] == [(7, "AN1"), (7, "AN3")]


def _check_0012(s) -> None:
    ann = s.get_one(Annotation, 2)
    assert (ann.draft_link, ann.draft_iou) == ("overlap", {"sciatic nerve": 0.93})


def _check_0013(s) -> None:
    row = s.get_one(Received, 1)
    assert (row.receipt, row.calling_ae, row.outcome) == ("00000001-abc-5553", "US1", "ingested")


def _check_0014(s) -> None:
    assert (s.get_one(Annotation, 2).draft_clicks, s.get_one(Annotation, 1).draft_clicks) == (
        3, None)  # fmt: skip


CHECKS = {
    "0001": _check_0001,
    "0002": _check_0002,
    "0003": _check_0003,
    "0004": _check_0004,
    "0005": _check_0005,
    "0006": _check_0006,
    "0007": _check_0007,
    "0008": _check_0008,
    "0009": _check_0009,
    "0010": _check_0010,
    "0011": _check_0011,
    "0012": _check_0012,
    "0013": _check_0013,
    "0014": _check_0014,
}


def test_the_schema_head_named_in_the_code_is_alembics_head(tmp_path):
    """A catalogue at SCHEMA_HEAD is opened without Alembic (a quarter of a second of every
    command's start): the constant must name the newest migration, or a catalogue one
    migration behind would be taken as current. Opening one at the head, in a fresh
    process, leaves alembic unloaded; one at an earlier revision is still upgraded."""
    assert SCHEMA_HEAD == HEAD
    ws = tmp_path / "ws"
    init_workspace(ws)
    code = (
        "import sys\n"
        "from datatool.core.workspace import open_workspace\n"
        f"open_workspace({str(ws)!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and "upgrading" not in done.stderr


def test_the_revisions_form_one_line_from_0001():
    assert ORDER[0] == "0001" and len(SCRIPT.get_heads()) == 1 and ORDER[-1] == HEAD
    assert set(SEEDS) <= set(ORDER)


# the head too: rows written in its own plain SQL read through the models
@pytest.mark.parametrize("revision", ORDER if len(ORDER) > 1 else ["(none)"])
def test_a_catalogue_with_data_at_an_earlier_revision_upgrades_to_head(revision, tmp_path, capsys):
    if revision == "(none)":
        pytest.skip("only one revision: nothing to upgrade from")
    root = tmp_path / "ws"
    meta = root / ".datatool"
    (meta / "store").mkdir(parents=True)
    (meta / "secret.key").write_text(KEY_HEX + "\n")
    (meta / "secret.key").chmod(0o600)
    (meta / "workspace.json").write_text(json.dumps({"protocol": "anterior_sciatic"}))
    db = meta / "catalogue.sqlite"
    seeded = [r for r in ORDER[: ORDER.index(revision) + 1] if r in SEEDS]
    # each revision's rows are written while the catalogue is at that revision (its plain
    # SQL), then the catalogue is brought to ``revision``, as a catalogue used over time is
    for r in ORDER[: ORDER.index(revision) + 1]:
        command.upgrade(alembic_config(f"sqlite:///{db}"), r)
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA foreign_keys=ON")
            for statement in SEEDS.get(r, []):
                conn.execute(statement)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (revision,)
    capsys.readouterr()

    ws = open_workspace(root)  # upgrades, and says so
    err = capsys.readouterr().err
    upgraded = f"upgrading the catalogue schema {revision} -> {HEAD}" in err
    assert upgraded == (revision != HEAD)
    # a catalogue from before 0006 gets the key's fingerprint now; a later one has it
    assert ("recorded the fingerprint" in err) == ("0006" not in seeded)
    with ws.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert MigrationContext.configure(conn).get_current_revision() == HEAD
    with ws.session() as s:
        for r in seeded:
            CHECKS[r](s)
        # and the catalogue takes new rows beside the old ones
        s.add(Rater(name="AN2", kind="human"))
    if "0002" in seeded:
        from datatool.labels.annotations import list_raters

        seeded_raters = ["AN1", "AN2", "AN3"] if "0008" in seeded else ["AN1", "AN2"]
        assert [r.name for r in list_raters(ws)] == seeded_raters
    if "0004" in seeded:
        from datatool.learning.training import list_runs

        (row,) = list_runs(ws)
        assert (row.split, row.epochs, row.planned_epochs, row.best_val_miou) == ("s", 2, 2, 0.5)
    ws.close()
