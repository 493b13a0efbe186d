"""The catalogue gathered into a :class:`StudyReport`: the cohort, the split, the run, the
review queue, the counts and the commands that reproduce each number (the stored agreement and
score results come from :mod:`datatool.report.stored`). Nothing is written.

What is missing is listed with the command that makes it; a workspace with no model yet gets
a report of what it has.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from sqlalchemy import func, select

from datatool import __version__
from datatool.analysis.rater_quality import RaterQuality, rater_quality
from datatool.core.catalogue import (
    AgreementSample,
    Annotation,
    FlagStatus,
    Image,
    Patient,
    QAFlag,
    Rater,
    RaterKind,
    Run,
    RunStatus,
    Score,
    Series,
    SourceFile,
    Split,
    SplitMember,
    Study,
)
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.report import flow as flow_figure
from datatool.report import stored
from datatool.report.render import TEMPLATES
from datatool.report.sections import (
    CohortTable,
    Described,
    EpochPoint,
    Figure,
    Missing,
    Provenance,
    QAItem,
    QASection,
    ReportFormat,
    Reproduce,
    RunSection,
    SetRow,
    SplitSection,
    StudyReport,
)

REFERENCE_FILE = TEMPLATES / "reference_study.yaml"
QA_TOP = 10
SUBSETS = ("train", "val", "test")


def reference_study() -> dict[str, Any]:
    """The published numbers (packaged beside the templates)."""
    return yaml.safe_load(REFERENCE_FILE.read_text(encoding="utf-8"))


def _cohort_of(
    rows: Sequence[tuple[int, str | None, int | None, float | None, int | None, str | None]],
) -> CohortTable:
    """A cohort table from one row per image: (patient id, sex, age, BMI, ASA, side)."""
    patients: dict[int, tuple] = {}
    per_patient: Counter[int] = Counter()
    per_side: Counter[tuple[int, str]] = Counter()
    sides: Counter[str] = Counter()
    for pid, sex, age, bmi, asa_class, side in rows:
        patients[pid] = (sex, age, bmi, asa_class)
        per_patient[pid] += 1
        per_side[(pid, side or "?")] += 1
        sides[side or "?"] += 1
    sexes = Counter(p[0] for p in patients.values())
    asa = Counter(str(p[3]) for p in patients.values() if p[3] is not None)
    return CohortTable(
        patients=len(patients),
        female=sexes.get("F", 0),
        male=sexes.get("M", 0),
        sex_unknown=len(patients) - sexes.get("F", 0) - sexes.get("M", 0),
        age=Described.of(float(p[1]) for p in patients.values() if p[1] is not None),
        bmi=Described.of(p[2] for p in patients.values() if p[2] is not None),
        asa=dict(sorted(asa.items())),
        images=len(rows),
        left_images=sides.get("L", 0),
        right_images=sides.get("R", 0),
        images_per_patient=Described.of(float(v) for v in per_patient.values()),
        images_per_side=Described.of(float(v) for v in per_side.values()),
    )


def _image_rows(s, image_ids: Iterable[int] | None = None) -> dict[int, tuple]:
    """Image id -> (patient id, sex, age, BMI, ASA, side), for every image (or these)."""
    query = (
        select(
            Image.id,
            Patient.id,
            Patient.sex,
            Patient.age_years,
            Patient.bmi,
            Patient.asa_class,
            Series.side,
        )
        .join(Series, Image.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .join(Patient, Study.patient_id == Patient.id)
    )
    if image_ids is not None:
        query = query.where(Image.id.in_(list(image_ids)))
    return {row[0]: tuple(row[1:]) for row in s.execute(query)}


def _cohort(ws: Workspace, missing: list[Missing]) -> CohortTable | None:
    with ws.session() as s:
        rows = list(_image_rows(s).values())
    if not rows:
        missing.append(Missing("cohort", "no images catalogued", "datatool ingest DIR"))
        return None
    table = _cohort_of(rows)
    if table.bmi.n == 0 and not table.asa:
        missing.append(
            Missing("cohort", "no BMI or ASA class", "datatool ingest-clinical FILE.csv")
        )
    return table


def _pick_run(s, run_id: int | None) -> Run | None:
    if run_id is not None:
        run = s.get(Run, run_id)
        if run is None:
            raise UsageError(f"--run {run_id}: no such run (datatool runs lists them)")
        return run
    scored = s.scalar(select(Score.run_id).order_by(Score.id.desc()).limit(1))
    if scored is not None:
        return s.get(Run, scored)
    return s.scalar(
        select(Run).order_by((Run.status == RunStatus.done).desc(), Run.id.desc()).limit(1)
    )


def _run(ws: Workspace, run: Run, split_name: str) -> RunSection:
    fold = f" --fold {run.fold}" if run.fold is not None else ""
    return RunSection(
        run=run.id,
        split=split_name,
        split_hash=run.split_hash,
        fold=run.fold,
        preset=run.preset,
        seed=run.seed,
        config=dict(run.config or {}),
        code_version=run.code_version,
        device=run.device,
        status=str(run.status),
        epochs_done=run.epochs_done,
        best_epoch=None if run.best_epoch is None else run.best_epoch + 1,
        best_val_miou=run.best_val_miou,
        created=run.created_at.isoformat(timespec="seconds"),
        history=[EpochPoint(e.epoch + 1, e.train_loss, e.val_loss, e.val_miou) for e in run.epochs],
        command=(
            f"datatool train --split {split_name} --preset {run.preset} --seed {run.seed}"
            f" --epochs {(run.config or {}).get('epochs', run.epochs_done)}{fold}"
        ),
    )


def _split(ws: Workspace, s, split: Split) -> SplitSection:
    members = list(s.scalars(select(SplitMember).where(SplitMember.split_id == split.id)))
    rows = _image_rows(s)  # every image: no IN list of thousands of ids
    total = len(members)
    sets = []
    for sub in SUBSETS:
        chosen = [m for m in members if m.subset == sub]
        table = _cohort_of([rows[m.image_id] for m in chosen if m.image_id in rows])
        table.with_reference = sum(1 for m in chosen if m.annotation_id is not None)
        sets.append(SetRow(sub, len(chosen) / total if total else None, table))
    folds = Counter(str(m.fold) for m in members if m.fold is not None)
    return SplitSection(
        name=split.name,
        hash=split.content_hash,
        seed=split.seed,
        ratios=split.ratios,
        folds=split.folds,
        reference=split.reference,
        created=split.created_at.isoformat(timespec="seconds"),
        sets=sets,
        fold_images=dict(sorted(folds.items())),
        command=f"datatool split show {split.name}",
    )


def _qa(ws: Workspace, run_id: int | None) -> QASection | None:
    from datatool.analysis.qa import list_queue

    with ws.session() as s:
        counts = s.execute(
            select(QAFlag.status, QAFlag.reason, func.count()).group_by(
                QAFlag.status, QAFlag.reason
            )
        ).all()
    if not counts:
        return None
    by_status: Counter[str] = Counter()
    open_by_reason: Counter[str] = Counter()
    for status, reason, n in counts:
        by_status[status] += n
        if status == FlagStatus.open:
            open_by_reason[reason] += n
    queue = list_queue(ws, status=FlagStatus.open, limit=QA_TOP)
    return QASection(
        flags=sum(by_status.values()),
        open=by_status.get(FlagStatus.open, 0),
        by_status=dict(sorted(by_status.items())),
        open_by_reason=dict(sorted(open_by_reason.items(), key=lambda kv: -kv[1])),
        top=[
            QAItem(
                i.rank,
                i.image,
                f"{i.rater} v{i.version}",
                i.structure,
                str(i.reason),
                i.severity,
                i.summary,
            )
            for i in queue.items
        ],
        command="datatool qa" + (f" --run {run_id}" if run_id is not None else ""),
    )


def _counts(s) -> dict[str, int]:
    def count(column, *where) -> int:
        query = select(func.count(column))
        for w in where:
            query = query.where(w)
        return int(s.scalar(query) or 0)

    kinds = dict(
        s.execute(
            select(Rater.kind, func.count(Annotation.id))
            .join(Annotation, Annotation.rater_id == Rater.id)
            .group_by(Rater.kind)
        ).all()
    )
    return {
        "patients imaged": int(s.scalar(select(func.count(func.distinct(Study.patient_id)))) or 0),
        "studies": count(Study.id),
        "series": count(Series.id),
        "images": count(Image.id),
        "source files ingested": count(SourceFile.id, SourceFile.status == "ingested"),
        "human raters": count(Rater.id, Rater.kind == RaterKind.human),
        "human label versions": int(kinds.get(RaterKind.human, 0)),
        "consensus label versions": int(kinds.get(RaterKind.consensus, 0)),
        "model label versions": int(kinds.get(RaterKind.model, 0)),
        "agreement samples": count(AgreementSample.id),
        "splits": count(Split.id),
        "training runs": count(Run.id),
        "scores": count(Score.id),
    }


def _gold(ws: Workspace) -> RaterQuality | None:
    """Each rater on their gold-standard tasks (``datatool raters``); None when no rater was
    handed any (gold tasks are optional: the report then has no such section)."""
    gold = rater_quality(ws)
    return gold if gold.raters else None


def gather(
    ws: Workspace,
    run: int | None = None,
    agreement: int | None = None,
    split: str | None = None,
) -> StudyReport:
    """Everything the workspace holds for the report (nothing is written)."""
    reference = reference_study()
    missing: list[Missing] = []
    figures: list[Figure] = []
    notes: list[str] = []
    protocol = load_protocol(ws.protocol_name)
    cohort = _cohort(ws, missing)
    agreement_section = stored.agreement_section(ws, agreement, missing, figures, notes)
    run_section = score_section = None
    with ws.session() as s:
        run_row = _pick_run(s, run)
        if split is not None:
            split_row = s.scalar(select(Split).where(Split.name == split))
            if split_row is None:
                raise UsageError(f"--split {split}: no such split (datatool split create)")
        elif run_row is not None:
            split_row = s.get(Split, run_row.split_id)
        else:
            split_row = s.scalar(select(Split).order_by(Split.id.desc()).limit(1))
        split_section = _split(ws, s, split_row) if split_row is not None else None
        if split_section is None:
            missing.append(
                Missing("split", "no split", "datatool split create NAME --ratios 6:2:2 --folds 5")
            )
        if run_row is not None:
            run_split = s.get(Split, run_row.split_id)
            assert run_split is not None
            run_section = _run(ws, run_row, run_split.name)
            if split_row is not None and split_row.id != run_row.split_id:
                notes.append(
                    f"split {split_row.name} is shown, but run {run_row.id} trained on "
                    f"split {run_split.name}"
                )
            if run_row.split_hash != run_split.content_hash:
                notes.append(f"run {run_row.id}'s split hash differs from its split's")
            score_section = stored.score_section(ws, s, run_row, reference, missing, figures, notes)
        else:
            name = split_row.name if split_row is not None else "NAME"
            missing.append(Missing("training", "no training run", f"datatool train --split {name}"))
            missing.append(Missing("results", "no scores", "datatool score RUN"))
        run_id = run_row.id if run_row is not None else None
        counts = _counts(s)
        flow = flow_figure.flow(
            s,
            agreement_section.sample if agreement_section else None,
            split_row.id if split_row is not None else None,
            run_id if score_section is not None else None,
        )
        synthetic = flow_figure.synthetic(s)
    quality = stored.quality_section(
        ws, split_section.reference if split_section else None, missing, notes
    )
    gold = _gold(ws)
    qa = _qa(ws, run_id)
    if run_section is not None:
        stored.loss_figure(ws, run_section, figures)
    if qa is None:
        missing.append(
            Missing(
                "qa",
                "no review queue",
                "datatool qa" + (f" --run {run_section.run}" if run_section else ""),
            )
        )
    commands = [Reproduce("cohort", "datatool cohort")]
    if agreement_section:
        commands.append(Reproduce("agreement", agreement_section.command))
    if quality:
        commands.append(Reproduce("each rater's quality", quality.command))
    if gold:
        commands.append(Reproduce("gold-standard tasks", "datatool raters"))
    if split_section:
        commands.append(Reproduce("split", split_section.command))
        commands.append(Reproduce("split check", f"datatool split check {split_section.name}"))
    if run_section:
        commands.append(Reproduce("training", run_section.command))
    if score_section:
        commands.append(Reproduce("results, ANOVA, inference, overlays", score_section.command))
    if qa:
        commands.append(Reproduce("review queue", qa.command))
    report_cmd = ["datatool report"]
    if run_section:
        report_cmd.append(f"--run {run_section.run}")
    if agreement_section:
        report_cmd.append(f"--agreement {agreement_section.sample}")
    if split_section:
        report_cmd.append(f"--split {split_section.name}")
    commands.append(Reproduce("this report", " ".join(report_cmd)))
    return StudyReport(
        out="",
        format=ReportFormat.html,
        title=f"Study report: {protocol.name}",
        cohort=cohort,
        agreement=agreement_section,
        split=split_section,
        run=run_section,
        score=score_section,
        qa=qa,
        reference=reference,
        provenance=Provenance(
            datatool_version=__version__,
            generated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            workspace=ws.root.name,
            protocol=protocol.name,
            counts=counts,
            split_hash=split_section.hash if split_section else None,
            run_config=run_section.config if run_section else None,
            code_version=run_section.code_version if run_section else None,
            commands=commands,
        ),
        missing=missing,
        figures=figures,
        notes=notes,
        quality=quality,
        gold=gold,
        flow=flow,
        colour_key=flow_figure.colour_key(protocol),
        synthetic=synthetic,
    )
