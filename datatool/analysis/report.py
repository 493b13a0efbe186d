"""``datatool report``: the whole study in one file, from the catalogue and the stored results.

:func:`study_report` gathers what the workspace holds into a :class:`StudyReport` (the cohort,
the raters' agreement, the split, the training run, the scores in the study's format beside
the published numbers, the ANOVA, the example overlays, inference time, the QA queue, the
provenance) and writes it as one self-contained HTML page (figures as data URIs, nothing
fetched), as Markdown with the PNGs beside it, or as a PDF printed by headless Chromium.

It computes nothing new that a command already computes: the agreement comes from the saved
sample's ``agreement.json``, the scores from the catalogue (and the per-image values of
``score.json``), the split and run from the catalogue. What is missing is listed with the
command that makes it; a workspace with no model yet gets a report of what it has.

Descriptives follow the study's convention: mean ± SD for normal data, otherwise median (P25,
P75), the Shapiro-Wilk test (``metrics.normality``, alpha 0.05) deciding and named beside
each. The report never shows a patient's identity: the catalogue holds none, and the report
shows no pseudonym either (patients appear only as counts).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from datatool import __version__
from datatool.analysis import metrics
from datatool.core.atomic import atomic_path, write_bytes_atomic, write_text_atomic
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
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import label_coverage

TEMPLATES = Path(__file__).resolve().with_name("templates")
REFERENCE_FILE = TEMPLATES / "reference_study.yaml"
QA_TOP = 10
SUBSETS = ("train", "val", "test")


class ReportFormat(StrEnum):
    html = "html"
    md = "md"
    pdf = "pdf"


# --------------------------------------------------------------------------- results


@dataclass
class Missing:
    """A part of the study the workspace does not hold yet, and the command that makes it."""

    section: str
    what: str
    command: str


@dataclass
class Described:
    """Values described the study's way: every descriptive, and which form the study's
    convention picks (``normal``: mean ± SD; otherwise median (P25, P75)) with the test that
    decided (``normal`` None: not tested, median (P25, P75) shown)."""

    n: int
    mean: float | None
    sd: float | None
    median: float | None
    p25: float | None
    p75: float | None
    min: float | None
    max: float | None
    normal: bool | None
    test: str  # the decision in words, e.g. "Shapiro-Wilk W = 0.962, p = 0.412: normal"
    w: float | None = None
    p: float | None = None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Described:
        values = list(values)
        d, t = metrics.describe(values), metrics.normality(values)
        if t["normal"] is None:
            why = "all values equal" if d["n"] >= 3 else f"n = {d['n']} < 3"
            text = f"{t['test']} not tested ({why})"
        else:
            verdict = "normal" if t["normal"] else "not normal"
            text = f"{t['test']} W = {t['w']:.3f}, p = {_p_text(t['p'])}: {verdict}"
        return cls(**d, normal=t["normal"], test=text, w=t["w"], p=t["p"])

    @classmethod
    def stored(cls, d: dict[str, Any] | None, why: str) -> Described:
        """A stored ``metrics.describe`` dict whose values are not at hand (not tested)."""
        d = d or metrics.describe([])
        keys = ("n", "mean", "sd", "median", "p25", "p75", "min", "max")
        values: dict[str, Any] = {k: d.get(k) for k in keys}
        values["n"] = int(values["n"] or 0)
        return cls(**values, normal=None, test=f"not tested ({why})")

    @property
    def convention(self) -> str:
        return "mean ± SD" if self.normal else "median (P25, P75)"

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "convention": self.convention}


def _p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class CohortTable:
    """The study's first table for a group of patients (the cohort, or one set of a split)."""

    patients: int
    female: int
    male: int
    sex_unknown: int
    age: Described  # years
    bmi: Described  # kg/m²
    asa: dict[str, int]  # ASA class -> patients
    images: int
    left_images: int
    right_images: int
    images_per_patient: Described
    images_per_side: Described  # per (patient, side) with images
    with_reference: int | None = None  # images with a reference label (a split's sets)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "female_pct": self.female_pct, "male_pct": self.male_pct}

    @property
    def female_pct(self) -> float | None:
        return 100.0 * self.female / self.patients if self.patients else None

    @property
    def male_pct(self) -> float | None:
        return 100.0 * self.male / self.patients if self.patients else None


@dataclass
class DraftCount:
    """A rater's latest labels and how many started from a model draft."""

    rater: str
    labelled: int
    from_draft: int
    draft_unchanged: int


@dataclass
class AgreementRow:
    structure: str
    icc: float | None
    ci_low: float | None
    ci_high: float | None
    dice: Described
    iou: Described
    both_absent: int
    one_absent: int
    bias: float | None
    loa_low: float | None
    loa_high: float | None


@dataclass
class AgreementSection:
    sample: int
    raters: list[str]
    size: int | None  # None: every image both raters labelled
    seed: int
    images: int
    measure: str
    unit: str
    rows: list[AgreementRow]
    overall_icc: float | None
    overall_ci_low: float | None
    overall_ci_high: float | None
    include_prelabelled: bool
    prelabelled_in_sample: int
    drafts: list[DraftCount]
    notes: list[str]
    source: str  # the agreement.json read (relative to the workspace)
    command: str


@dataclass
class SetRow:
    subset: str
    share: float | None  # of the split's images
    cohort: CohortTable


@dataclass
class SplitSection:
    name: str
    hash: str
    seed: int
    ratios: str
    folds: int
    reference: str | None
    created: str
    sets: list[SetRow]
    fold_images: dict[str, int]  # fold -> images
    command: str


@dataclass
class EpochPoint:
    epoch: int  # counted from 1, as people count
    train_loss: float
    val_loss: float | None
    val_miou: float | None


@dataclass
class RunSection:
    run: int
    split: str
    split_hash: str
    fold: int | None
    preset: str
    seed: int
    config: dict[str, Any]
    code_version: str
    device: str  # what it trained on, as recorded
    status: str
    epochs_done: int
    best_epoch: int | None  # counted from 1
    best_val_miou: float | None
    created: str
    history: list[EpochPoint]
    command: str


@dataclass
class ResultRow:
    """One structure in the study's format, beside the published numbers (``published``)."""

    structure: str
    images: int
    iou: Described
    dice: Described
    f1: Described
    pooled_iou: float | None
    pooled_dice: float | None
    published: dict[str, float] | None


@dataclass
class PairRow:
    a: str
    b: str
    t: float | None
    p_unc: float | None
    p_bonf: float | None


@dataclass
class AnovaSection:
    F: float
    df_between: int
    df_within: int
    p: float
    pairs: list[PairRow]


@dataclass
class VersusRow:
    structure: str
    model_iou: float | None
    raters_iou: float | None
    ratio: float | None


@dataclass
class ScoreSection:
    run: int
    set: str
    images: int
    frame: str
    checkpoint: str
    created: str
    rows: list[ResultRow]
    mean_iou_per_image: float | None  # over every (image, structure) row
    pooled_mean_iou: float | None  # mean over structures of the pooled IoU
    anova: AnovaSection | None
    inference_ms: Described
    device: str  # where it was scored
    trained_on: str  # the run's device, as recorded
    raters: list[str]
    rater_images: int
    versus_raters: list[VersusRow]
    per_image_values: bool  # score.json's per-image values were found (normality tested)
    source: str
    command: str


@dataclass
class QAItem:
    rank: int
    image: str
    label: str  # rater vN
    structure: str
    reason: str
    severity: float
    summary: str


@dataclass
class QASection:
    flags: int
    open: int
    by_status: dict[str, int]
    open_by_reason: dict[str, int]
    top: list[QAItem]
    command: str


@dataclass
class Reproduce:
    what: str
    command: str


@dataclass
class Provenance:
    datatool_version: str
    generated: str  # UTC
    workspace: str  # the folder's name only
    protocol: str
    counts: dict[str, int]
    split_hash: str | None
    run_config: dict[str, Any] | None
    code_version: str | None  # the run's
    commands: list[Reproduce]


@dataclass
class Figure:
    """A PNG of the report: where it came from, and its bytes (not in the JSON)."""

    key: str  # file name in the Markdown's folder
    section: str
    title: str
    source: str  # the workspace file it came from, or what drew it
    _png: bytes = field(default=b"", repr=False)


@dataclass
class StudyReport:
    """The study as the workspace holds it; None sections are listed in ``missing``."""

    out: str
    format: ReportFormat
    title: str
    cohort: CohortTable | None
    agreement: AgreementSection | None
    split: SplitSection | None
    run: RunSection | None
    score: ScoreSection | None
    qa: QASection | None
    reference: dict[str, Any]
    provenance: Provenance
    missing: list[Missing]
    figures: list[Figure]
    notes: list[str]
    written: list[str] = field(default_factory=list)  # files written (the report, its PNGs)

    def figures_of(self, section: str) -> list[Figure]:
        return [f for f in self.figures if f.section == section]


# --------------------------------------------------------------------------- gathering


def reference_study() -> dict[str, Any]:
    """The published numbers (packaged beside the templates)."""
    return yaml.safe_load(REFERENCE_FILE.read_text(encoding="utf-8"))


def _rel(ws: Workspace, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ws.root))
    except ValueError:
        return path.name


def _local(ws: Workspace, stored: str | Path) -> Path | None:
    """A file a command recorded, in this workspace: the same path below this workspace's
    ``reports/`` first (a copied or moved workspace), else the recorded path."""
    path = Path(stored)
    parts = path.parts
    if "reports" in parts:
        k = len(parts) - 1 - parts[::-1].index("reports")
        here = ws.root.joinpath(*parts[k:])
        if here.is_file():
            return here
    return path if path.is_file() else None


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


def _agreement_command(sample: AgreementSample, a: str, b: str) -> str:
    parts = ["datatool agreement"]
    if sample.size is not None:
        parts.append(f"--sample {sample.size}")
    parts += [f"--seed {sample.seed}", f"--raters {a},{b}"]
    if sample.include_prelabelled:
        parts.append("--include-prelabelled")
    return " ".join(parts)


def _find_agreement_json(ws: Workspace, sample_id: int) -> Path | None:
    default = ws.root / "reports" / f"agreement-{sample_id}" / "agreement.json"
    if default.is_file():
        return default
    for path in sorted((ws.root / "reports").glob("*/agreement.json")):
        try:
            if json.loads(path.read_text())["sample"]["id"] == sample_id:
                return path
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _agreement(
    ws: Workspace, sample_id: int | None, missing: list[Missing], figures: list[Figure]
) -> AgreementSection | None:
    with ws.session() as s:
        if sample_id is not None:
            sample = s.get(AgreementSample, sample_id)
            if sample is None:
                raise UsageError(f"--agreement {sample_id}: no such agreement sample")
            samples = [sample]
        else:
            samples = list(s.scalars(select(AgreementSample).order_by(AgreementSample.id.desc())))
        if not samples:
            missing.append(
                Missing(
                    "agreement",
                    "no agreement sample (the study drew 300 images: --sample 300)",
                    "datatool agreement",
                )
            )
            return None
        found = next(((smp, p) for smp in samples if (p := _find_agreement_json(ws, smp.id))), None)
        sample, path = found if found else (samples[0], None)
        names = {r.id: r.name for r in s.scalars(select(Rater))}
        a, b = names[sample.rater_a_id], names[sample.rater_b_id]
        command = _agreement_command(sample, a, b)
    if path is None:
        missing.append(Missing("agreement", f"agreement.json of sample {sample.id}", command))
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatatoolError(f"{path}: cannot read it ({exc}); run '{command}' again") from None
    why = "per-image values are not stored"
    rows = []
    for st in data["structures"]:
        icc, ba = st.get("icc") or {}, st.get("bland_altman") or {}
        rows.append(
            AgreementRow(
                structure=st["structure"],
                icc=icc.get("icc"),
                ci_low=icc.get("ci_low"),
                ci_high=icc.get("ci_high"),
                dice=Described.stored(st.get("dice"), why),
                iou=Described.stored(st.get("iou"), why),
                both_absent=st.get("both_absent", 0),
                one_absent=st.get("one_absent", 0),
                bias=ba.get("bias"),
                loa_low=ba.get("loa_low"),
                loa_high=ba.get("loa_high"),
            )
        )
    overall = data.get("overall_icc") or {}
    coverage = label_coverage(ws)
    drafts = [
        DraftCount(c.rater, c.images_labelled, c.from_draft, c.draft_unchanged)
        for c in coverage.raters
        if c.kind == RaterKind.human
    ]
    stored_figures = data.get("figures") or []
    for k, stored in enumerate(stored_figures):
        png = _local(ws, stored)
        if png is not None:
            # one plot per structure, in the order of the structures (agreement.py)
            what = rows[k].structure if len(stored_figures) == len(rows) else png.stem
            figures.append(
                Figure(
                    f"agreement_{k + 1}_{png.name}",
                    "agreement",
                    f"Bland-Altman plot of {what} ({data.get('unit', '')}): "
                    f"{' - '.join(data.get('raters') or [a, b])} against their mean",
                    _rel(ws, png),
                    png.read_bytes(),
                )
            )
    if rows and not any(f.section == "agreement" for f in figures):
        missing.append(Missing("agreement", "the Bland-Altman plots", command))
    return AgreementSection(
        sample=sample.id,
        raters=list(data.get("raters") or [a, b]),
        size=data["sample"].get("size"),
        seed=data["sample"].get("seed", sample.seed),
        images=data["sample"]["images"],
        measure=data.get("measure", ""),
        unit=data.get("unit", ""),
        rows=rows,
        overall_icc=overall.get("icc"),
        overall_ci_low=overall.get("ci_low"),
        overall_ci_high=overall.get("ci_high"),
        include_prelabelled=bool(data.get("include_prelabelled")),
        prelabelled_in_sample=int(data.get("prelabelled_in_sample") or 0),
        drafts=drafts,
        notes=list(data.get("notes") or []),
        source=_rel(ws, path),
        command=command,
    )


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


def _score_json(ws: Workspace, results: dict, run_id: int, subset: str) -> Path | None:
    """score.json beside the score's figures, else in the default folder; only when it is
    the same score (run, set and images agree)."""
    candidates = [Path(p).parent / "score.json" for p in results.get("figures") or []]
    candidates.append(ws.root / "reports" / f"run-{run_id}-{subset}" / "score.json")
    for candidate in candidates:
        path = _local(ws, candidate)
        if path is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (data.get("run"), data.get("set"), data.get("images")) == (
            run_id,
            subset,
            results.get("images"),
        ):
            return path
    return None


def _published(reference: dict, structure: str) -> dict[str, float] | None:
    return (reference.get("structures") or {}).get(structure)


def _score(
    ws: Workspace,
    s,
    run: Run,
    reference: dict,
    missing: list[Missing],
    figures: list[Figure],
    notes: list[str],
) -> ScoreSection | None:
    row = s.scalar(
        select(Score)
        .where(Score.run_id == run.id)
        .order_by((Score.subset == "test").desc(), Score.id.desc())
        .limit(1)
    )
    command = f"datatool score {run.id}"
    if row is None:
        missing.append(Missing("results", f"scores of run {run.id}", command))
        return None
    results = dict(row.results)
    subset = str(results.get("set", row.subset))
    if subset != "test":
        command += f" --set {subset}"
        notes.append(f"run {run.id} is scored on its {subset} set only, not on a test set")
    path = _score_json(ws, results, run.id, subset)
    per_image: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if path is not None:
        for r in json.loads(path.read_text(encoding="utf-8")).get("per_image") or []:
            for m in ("iou", "dice", "f1"):
                per_image[r["structure"]][m].append(r.get(m))
    else:
        missing.append(
            Missing("results", "score.json (per-image values: normality, IoU plot)", command)
        )
    why = "per-image values not found"
    rows = []
    for st in results.get("structures") or []:
        name = st["structure"]

        def described(measure: str, st=st, name=name) -> Described:
            if path is not None:
                return Described.of(per_image[name][measure])
            return Described.stored(st.get(measure), why)

        rows.append(
            ResultRow(
                structure=name,
                images=st.get("images", 0),
                iou=described("iou"),
                dice=described("dice"),
                f1=described("f1"),
                pooled_iou=st.get("pooled_iou"),
                pooled_dice=st.get("pooled_dice"),
                published=_published(reference, name),
            )
        )
    pooled = [r.pooled_iou for r in rows if r.pooled_iou is not None]
    anova = results.get("anova_iou")
    versus = [
        VersusRow(v["structure"], v.get("model_iou"), v.get("raters_iou"), v.get("ratio"))
        for v in results.get("versus_raters") or []
    ]
    _score_figures(ws, run, results, path, rows, figures, missing, command)
    return ScoreSection(
        run=run.id,
        set=subset,
        images=int(results.get("images", 0)),
        frame=str(results.get("frame", "")),
        checkpoint=str(results.get("checkpoint", "")),
        created=row.created_at.isoformat(timespec="seconds"),
        rows=rows,
        mean_iou_per_image=results.get("mean_iou_per_image"),
        pooled_mean_iou=sum(pooled) / len(pooled) if pooled else None,
        anova=AnovaSection(
            F=anova["F"],
            df_between=anova["df_between"],
            df_within=anova["df_within"],
            p=anova["p"],
            pairs=[PairRow(**p) for p in anova.get("pairwise_bonferroni") or []],
        )
        if anova
        else None,
        inference_ms=Described.stored(results.get("inference_ms"), "per-image times not stored"),
        device=str(results.get("device", "")),
        trained_on=run.device,
        raters=list(results.get("raters") or []),
        rater_images=int(results.get("rater_images") or 0),
        versus_raters=versus,
        per_image_values=path is not None,
        source=_rel(ws, path) if path else "the catalogue (scores table)",
        command=command,
    )


def _score_figures(ws, run, results, path, rows, figures, missing, command) -> None:
    stored = {Path(p).name: p for p in results.get("figures") or []}
    if path is not None:
        stored.setdefault("iou_per_structure.png", str(path.with_name("iou_per_structure.png")))
        stored.setdefault("overlays.png", str(path.with_name("overlays.png")))
    for name, title, section in (
        ("iou_per_structure.png", "IoU per structure (per image: violin and box)", "anova"),
        (
            "overlays.png",
            "Examples at the top 10 %, Q3, Q2, Q1 and bottom 10 % of nerve IoU",
            "overlays",
        ),
    ):
        png = _local(ws, stored[name]) if name in stored else None
        if png is None:
            missing.append(Missing(section, f"the figure {name}", command))
            continue
        figures.append(Figure(name, section, title, _rel(ws, png), png.read_bytes()))


def _loss_figure(run: RunSection, figures: list[Figure]) -> None:
    from datatool.analysis.plots import loss_curve_png

    epochs = [(e.epoch - 1, e.train_loss, e.val_loss) for e in run.history]
    if not epochs:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = loss_curve_png(Path(tmp) / "loss.png", epochs, f"run {run.run}")
        data = path.read_bytes()
    figures.append(
        Figure(
            "loss.png",
            "training",
            "Training and validation loss per epoch",
            "drawn from the catalogue (run_epochs)",
            data,
        )
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
    agreement_section = _agreement(ws, agreement, missing, figures)
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
            score_section = _score(ws, s, run_row, reference, missing, figures, notes)
        else:
            name = split_row.name if split_row is not None else "NAME"
            missing.append(Missing("training", "no training run", f"datatool train --split {name}"))
            missing.append(Missing("results", "no scores", "datatool score RUN"))
        run_id = run_row.id if run_row is not None else None
        counts = _counts(s)
    qa = _qa(ws, run_id)
    if run_section is not None:
        _loss_figure(run_section, figures)
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
    )


# --------------------------------------------------------------------------- rendering


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _mean_sd(obj: Any, digits: int = 3) -> str:
    if obj is None or _get(obj, "mean") is None:
        return "-"
    return f"{_num(_get(obj, 'mean'), digits)} ± {_num(_get(obj, 'sd'), digits)}"


def _median_iqr(obj: Any, digits: int = 3) -> str:
    if obj is None or _get(obj, "median") is None:
        return "-"
    return (
        f"{_num(_get(obj, 'median'), digits)} ({_num(_get(obj, 'p25'), digits)}, "
        f"{_num(_get(obj, 'p75'), digits)})"
    )


def _study_form(d: Described, digits: int = 3) -> str:
    """The form the study's convention picks for these values."""
    return _mean_sd(d, digits) if d.normal else _median_iqr(d, digits)


def _count_pct(n: int | None, pct: float | None) -> str:
    if n is None:
        return "-"
    return f"{n}" if pct is None else f"{n} ({pct:.1f} %)"


def _range(d: Described, digits: int = 1) -> str:
    if d.min is None:
        return "-"
    return f"{_num(d.min, digits)}-{_num(d.max, digits)}"


def _roman(cls: str) -> str:
    return "I" * int(cls) if cls.isdigit() and 1 <= int(cls) <= 3 else cls


def _md(text: Any) -> str:
    """Text for a Markdown table cell or line: no pipes, newlines or markup characters."""
    out = " ".join(str(text).split())
    for ch in "\\`*_{}[]<>|#":
        out = out.replace(ch, "\\" + ch)
    return out


def _md_code(text: Any) -> str:
    """Text as a Markdown code span that holds in a table cell (pipes escaped, a fence longer
    than any backtick run inside)."""
    out = " ".join(str(text).split()).replace("|", "\\|")
    run = max((len(m) for m in re.findall(r"`+", out)), default=0)
    fence = "`" * (run + 1)
    return f"{fence} {out} {fence}" if run else f"`{out}`"


def _data_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(fig._png).decode("ascii")


def _raw(value: Any) -> str:
    """A cell's raw value for sorting (and for scripts reading the page)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=_num,
        mean_sd=_mean_sd,
        median_iqr=_median_iqr,
        study=_study_form,
        count_pct=_count_pct,
        prange=_range,
        pval=_p_text,
        roman=_roman,
        md=_md,
        mdcode=_md_code,
        data_uri=_data_uri,
        raw=_raw,
        tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str),
    )
    return env


def render_html(report: StudyReport) -> str:
    return _environment().get_template("report.html.j2").render(r=report)


def render_markdown(report: StudyReport, files_dir: str) -> str:
    return _environment().get_template("report.md.j2").render(r=report, files=files_dir)


# --------------------------------------------------------------------------- Chromium

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Offline and quiet: without the networking flags it keeps trying to reach hosts.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """Chromium's program (``DATATOOL_CHROMIUM``, else the first of the usual names)."""
    given = os.environ.get("DATATOOL_CHROMIUM")
    if given:
        return shutil.which(given)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def chromium_command(chromium: str, profile: Path, *args: str) -> list[str]:
    return [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]


def print_pdf(html_file: Path, pdf_file: Path, timeout: float = 120) -> None:
    """The HTML page printed to PDF by headless Chromium (written atomically)."""
    chromium = find_chromium()
    if chromium is None:
        raise DatatoolError(
            "--format pdf needs Chromium: install it (apt-get install chromium), or write "
            "--format html and print it from a browser"
        )
    with (
        tempfile.TemporaryDirectory(prefix="datatool-chromium-") as tmp,
        atomic_path(pdf_file) as target,
    ):
        cmd = chromium_command(
            chromium,
            Path(tmp) / "profile",
            "--no-pdf-header-footer",
            f"--print-to-pdf={target}",
            html_file.resolve().as_uri(),
        )
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DatatoolError(f"Chromium did not print the PDF within {timeout:.0f} s") from None
        if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise DatatoolError(f"Chromium could not print the PDF ({last[:200]})")


# --------------------------------------------------------------------------- the service


def _default_out(ws: Workspace, fmt: ReportFormat) -> Path:
    return ws.root / "reports" / f"study.{fmt.value}"


def study_report(
    ws: Workspace,
    run: int | None = None,
    agreement: int | None = None,
    split: str | None = None,
    out: Path | None = None,
    fmt: ReportFormat | str = ReportFormat.html,
) -> StudyReport:
    """The study report of the workspace, written to ``out`` (default
    ``reports/study.FORMAT`` in the workspace): one self-contained HTML file, Markdown with
    its PNGs in ``STEM_files/`` beside it, or a PDF printed from the HTML by Chromium."""
    try:
        fmt = ReportFormat(fmt)
    except ValueError:
        choices = ", ".join(f.value for f in ReportFormat)
        raise UsageError(f"--format must be one of {choices}") from None
    target = Path(out) if out is not None else _default_out(ws, fmt)
    if target.is_dir():
        raise UsageError(f"--out {target}: a folder; give a file name (e.g. study.{fmt.value})")
    report = gather(ws, run, agreement, split)
    report.format = fmt
    report.out = str(target)
    if fmt == ReportFormat.html:
        write_text_atomic(target, render_html(report))
        report.written = [str(target)]
    elif fmt == ReportFormat.md:
        files = target.parent / f"{target.stem}_files"
        written = []
        for fig in report.figures:
            write_bytes_atomic(files / fig.key, fig._png)
            written.append(str(files / fig.key))
        write_text_atomic(target, render_markdown(report, files.name))
        report.written = [str(target), *written]
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="datatool-report-") as tmp:
            page = Path(tmp) / f"{target.stem}.html"
            page.write_text(render_html(report), encoding="utf-8")
            print_pdf(page, target)
        report.written = [str(target)]
    return report


__all__ = [
    "CHROMIUM_FLAGS",
    "Described",
    "Missing",
    "ReportFormat",
    "StudyReport",
    "chromium_command",
    "find_chromium",
    "gather",
    "print_pdf",
    "reference_study",
    "render_html",
    "render_markdown",
    "study_report",
]
