"""The results the commands saved, read back for the report: the agreement sample's
``agreement.json`` and its Bland-Altman plots, a score's ``score.json`` (per-image values) and
its figures, found below this workspace's ``reports/`` also when the workspace was moved. The
report computes nothing a command computes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sqlalchemy import select

from datatool.core.atomic import make_private_dirs
from datatool.core.catalogue import AgreementSample, Rater, RaterKind, Run, Score
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.workspace import Workspace
from datatool.labels.annotations import label_coverage
from datatool.report.sections import (
    AgreementRow,
    AgreementSection,
    AnovaSection,
    ClickRow,
    ClicksSection,
    Described,
    DraftCount,
    Figure,
    Missing,
    PairRow,
    QualityRow,
    QualitySection,
    ResultRow,
    RunSection,
    ScoreSection,
    SurfaceRow,
    VersusRow,
)


def _rel(ws: Workspace, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ws.root))
    except ValueError:
        return path.name


FIGURE_SUFFIXES = (".png",)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _inside_reports(ws: Workspace, path: Path) -> bool:
    """Whether ``path``, links and ``..`` resolved, lies inside this workspace's reports/."""
    try:
        path.resolve().relative_to((ws.root / "reports").resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _local(ws: Workspace, stored: str | Path) -> Path | None:
    """A file a command recorded, inside this workspace's ``reports/`` folder (links and
    ``..`` resolved): the same path below this workspace's ``reports/`` first (a copied or
    moved workspace), else the recorded path. Anything else is None: a recorded path is
    data, and the report reads nothing outside its workspace's reports."""
    path = Path(stored)
    parts = path.parts
    candidates = []
    if "reports" in parts:
        k = len(parts) - 1 - parts[::-1].index("reports")
        candidates.append(ws.root.joinpath(*parts[k:]))
    candidates.append(path)
    for here in candidates:
        try:
            if here.is_file() and _inside_reports(ws, here):
                return here.resolve()
        except (OSError, ValueError):
            continue
    return None


def _short(text: object, limit: int = 120) -> str:
    """A recorded value for a message: one line, at most ``limit`` characters."""
    text = repr(str(text))[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _figure_file(ws: Workspace, stored: object, source: str, notes: list[str]) -> Path | None:
    """A figure a command recorded in ``source``: a PNG inside this workspace's reports/
    folder, else None, with a one-line note when a file was named that is not one (a figure
    path is data: a tampered file must not get another file embedded in the report)."""
    if not isinstance(stored, str) or not stored or "\x00" in stored:
        notes.append(f"{source}: a figure entry that is not a path was ignored")
        return None
    png = _local(ws, stored)
    refused = None
    if png is None:
        try:
            exists = Path(stored).exists()
        except (OSError, ValueError):
            exists = False
        if exists:
            refused = "not inside the workspace's reports folder"
    elif png.suffix.lower() not in FIGURE_SUFFIXES:
        refused = "not a figure (.png)"
    else:
        try:
            with png.open("rb") as f:
                if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                    refused = "not a PNG file"
        except OSError as exc:
            refused = f"cannot read it ({exc.strerror})"
    if refused:
        notes.append(f"{source}: figure {_short(stored)} refused: {refused}")
        return None
    return png


def _agreement_command(sample: AgreementSample, a: str, b: str) -> str:
    parts = ["datatool agreement"]
    if sample.size is not None:
        parts.append(f"--sample {sample.size}")
    parts += [f"--seed {sample.seed}", f"--raters {a},{b}"]
    if sample.include_prelabelled:
        parts.append("--include-prelabelled")
    if sample.per_cine:
        parts.append("--per-cine")
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


def agreement_section(
    ws: Workspace,
    sample_id: int | None,
    missing: list[Missing],
    figures: list[Figure],
    notes: list[str],
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
    try:
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
                    **{
                        m: Described.stored(st.get(m), why) if st.get(m) else None
                        for m in ("hd95", "assd", "nsd")
                    },
                )
            )
        overall = data.get("overall_icc") or {}
        coverage = label_coverage(ws, per_structure=False)  # the drafts' counts only
        drafts = [
            DraftCount(c.rater, c.images_labelled, c.from_draft, c.draft_unchanged)
            for c in coverage.raters
            if c.kind == RaterKind.human
        ]
        stored_figures = data.get("figures") or []
        for k, stored in enumerate(stored_figures):
            png = _figure_file(ws, stored, _rel(ws, path), notes)
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
            surface_unit=data.get("surface_unit") if any(r.hd95 for r in rows) else None,
            nsd_tolerance=data.get("nsd_tolerance"),
        )
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise DatatoolError(
            f"{path}: not as 'datatool agreement' writes it ({type(exc).__name__} "
            f"{_short(exc, 60)}); run '{command}' again"
        ) from None


def quality_section(
    ws: Workspace, reference: str | None, missing: list[Missing], notes: list[str]
) -> QualitySection | None:
    """Each rater's quality from the consensus.json that ``consensus`` saved: the one of
    the split's reference (``consensus:METHOD``), else STAPLE's, else majority's."""
    methods = ["staple", "majority"]
    if reference and reference.startswith("consensus:"):
        method = reference.split(":", 1)[1]
        methods = [method] + [m for m in methods if m != method]
    for method in methods:
        path = _local(ws, ws.root / "reports" / f"consensus-{method}" / "consensus.json")
        if path is None:
            continue
        command = f"datatool consensus --method {method}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            why = "per-image values are not stored"
            rows = [
                QualityRow(
                    structure=str(q["structure"]),
                    rater=str(q["rater"]),
                    images=int(q["images"]),
                    sensitivity=Described.stored(q["sensitivity"], why),
                    specificity=Described.stored(q["specificity"], why),
                )
                for q in data["quality"]
            ]
            return QualitySection(
                method=str(data["method"]),
                raters=[str(r) for r in data["raters"]],
                images=int(data["images"]),
                rows=rows,
                source=_rel(ws, path),
                command=command,
                adjudication=[int(a["image_id"]) for a in data.get("adjudication") or []],
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            notes.append(f"{_rel(ws, path)}: cannot read it; run '{command}' again")
            return None
    missing.append(
        Missing(
            "quality",
            "each rater's quality (STAPLE sensitivity and specificity)",
            "datatool consensus --method staple",
        )
    )
    return None


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


def score_section(
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
    why_surface = "per-image surface distances are not stored"
    anova = results.get("anova_iou")
    versus = [
        VersusRow(v["structure"], v.get("model_iou"), v.get("raters_iou"), v.get("ratio"))
        for v in results.get("versus_raters") or []
    ]
    _score_figures(ws, run, results, path, rows, figures, missing, command, notes)
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
        surface=[
            SurfaceRow(
                structure=w["structure"],
                hd95=Described.stored(w["surface"].get("hd95"), why_surface),
                assd=Described.stored(w["surface"].get("assd"), why_surface),
                nsd=Described.stored(w["surface"].get("nsd"), why_surface),
                one_empty=int(w["surface"].get("one_empty") or 0),
                both_empty=int(w["surface"].get("both_empty") or 0),
            )
            for w in results.get("whole_image") or []
            if isinstance(w, dict) and isinstance(w.get("surface"), dict)
        ],
        surface_unit=results.get("surface_unit"),
        nsd_tolerance=results.get("nsd_tolerance"),
        clicks=clicks_section(ws, run, subset, path),
    )


def clicks_section(
    ws: Workspace, run: Run, subset: str, score_json: Path | None
) -> ClicksSection | None:
    """``score --clicks``'s clicks.json of the run and set (beside score.json, else in the
    default folder); None when the run was not scored so, or the file is not its."""
    candidates = [] if score_json is None else [score_json.with_name("clicks.json")]
    candidates.append(ws.root / "reports" / f"run-{run.id}-{subset}" / "clicks.json")
    for candidate in candidates:
        path = _local(ws, candidate)
        if path is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if (data.get("run"), data.get("set")) != (run.id, subset):
                continue
            rows = [
                ClickRow(
                    structure=str(st["structure"]),
                    images=int(st["images"]),
                    raters_iou=st.get("raters_iou"),
                    noc=st.get("noc"),
                    never_reached=st.get("never_reached"),
                    iou_after={int(k): float(v) for k, v in (st.get("iou_after") or {}).items()},
                )
                for st in data["structures"]
            ]
            return ClicksSection(
                max_clicks=int(data["max_clicks"]),
                threshold=float(data["threshold"]),
                ms_per_click=float(data["ms_per_click"]),
                rows=rows,
                source=_rel(ws, path),
                flips=bool(data.get("flips", False)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _score_figures(ws, run, results, path, rows, figures, missing, command, notes) -> None:
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
        png = _figure_file(ws, stored[name], "the score", notes) if name in stored else None
        if png is None:
            missing.append(Missing(section, f"the figure {name}", command))
            continue
        figures.append(Figure(name, section, title, _rel(ws, png), png.read_bytes()))


def loss_figure(ws: Workspace, run: RunSection, figures: list[Figure]) -> None:
    """The run's loss curve, drawn from the catalogue into the workspace's cache
    (``.datatool/cache/figures``), where the next report finds it when nothing changed."""
    from datatool.analysis.plots import loss_curve_png

    epochs = [(e.epoch - 1, e.train_loss, e.val_loss) for e in run.history]
    if not epochs:
        return
    folder = ws.meta_dir / "cache" / "figures"
    make_private_dirs(folder)
    path = loss_curve_png(folder / f"loss-run-{run.run}.png", epochs, f"run {run.run}")
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
