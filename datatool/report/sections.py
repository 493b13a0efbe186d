"""The study report's parts: one dataclass per section, and :class:`StudyReport` holding them.

Descriptives follow the study's convention: mean ± SD for normal data, otherwise median (P25,
P75), the Shapiro-Wilk test (``metrics.normality``, alpha 0.05) deciding and named beside
each. The report never shows a patient's identity: the catalogue holds none, and the report
shows no pseudonym either (patients appear only as counts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from datatool.analysis import metrics
from datatool.analysis.rater_quality import RaterQuality


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
            text = f"{t['test']} W = {t['w']:.3f}, {p_phrase(t['p'])}: {verdict}"
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


def p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float | None) -> str:
    """A p-value in a sentence: "p < 0.001" or "p = 0.412" (never "p = < 0.001")."""
    if p is None:
        return "p -"
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


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
    # the surface distances (None: the sample's agreement.json predates them)
    hd95: Described | None = None
    assd: Described | None = None
    nsd: Described | None = None


@dataclass
class QualityRow:
    """One rater's STAPLE sensitivity and specificity for one structure, over the images."""

    structure: str
    rater: str
    images: int
    sensitivity: Described
    specificity: Described


@dataclass
class QualitySection:
    """Each rater's quality as the consensus estimated it (its consensus.json)."""

    method: str
    raters: list[str]
    images: int
    rows: list[QualityRow]
    source: str
    command: str
    adjudication: list[int] = field(default_factory=list)  # images left without consensus


@dataclass
class SurfaceRow:
    """One structure's boundaries on the whole image, the model against the reference."""

    structure: str
    hd95: Described
    assd: Described
    nsd: Described
    one_empty: int
    both_empty: int


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
    surface_unit: str | None = None  # None: no surface distances in this agreement.json
    nsd_tolerance: float | None = None


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
class ClickRow:
    """A structure under the simulated clicker (``score --clicks``'s clicks.json)."""

    structure: str
    images: int
    raters_iou: float | None
    noc: float | None
    never_reached: float | None
    iou_after: dict[int, float]


@dataclass
class ClicksSection:
    """An interactive run's ``score --clicks``: clicks to reach the target, per structure."""

    max_clicks: int
    threshold: float
    ms_per_click: float
    rows: list[ClickRow]
    source: str
    flips: bool = False  # each redraw with test-time flips (clicks.json before them: without)


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
    surface: list[SurfaceRow] = field(default_factory=list)  # empty: scored before them
    surface_unit: str | None = None
    nsd_tolerance: float | None = None
    clicks: ClicksSection | None = None  # an interactive run scored with --clicks


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
class FlowStep:
    """One box of the methods' flow figure: how many of what (drawn from the catalogue)."""

    key: str  # stable name for scripts and tests
    label: str
    n: int | None  # None: the step has not happened yet
    detail: str = ""


@dataclass
class Flow:
    """The study's flow from files received to test images scored, step by step: each
    step a list of boxes side by side (e.g. each rater, each set)."""

    steps: list[list[FlowStep]]


@dataclass
class KeyEntry:
    """One structure's colour in the figures (the protocol's)."""

    structure: str
    colour: str  # #rrggbb


@dataclass
class Synthetic:
    """The workspace holds images of datatool's synthetic demo (their DICOM Manufacturer is
    the demo's marker); ``images``: how many of ``of``."""

    images: int
    of: int
    marker: str


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
    quality: QualitySection | None = None  # each rater's quality (consensus.json)
    gold: RaterQuality | None = None  # each rater on their gold-standard tasks
    flow: Flow | None = None  # files received -> ... -> test images scored
    colour_key: list[KeyEntry] = field(default_factory=list)  # the overlays' colours
    synthetic: Synthetic | None = None  # demo data: said on the first line

    def figures_of(self, section: str) -> list[Figure]:
        return [f for f in self.figures if f.section == section]
