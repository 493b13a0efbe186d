"""The study's flow for the methods section, counted in the catalogue: files received ->
rejected or quarantined -> images -> labelled by each rater -> the agreement sample -> the
split's sets -> test images scored; and whether the workspace holds synthetic demo data.

Files rejected as unreadable leave no row in the catalogue (only a line in ingest's report),
so their number is the one the last ``ingest`` wrote to the audit log; files received are
the catalogued source files plus those.
"""

from __future__ import annotations

from sqlalchemy import func, select

from datatool.core.catalogue import (
    AgreementSample,
    Annotation,
    AuditEntry,
    Image,
    Rater,
    RaterKind,
    Score,
    Series,
    SourceFile,
    SplitMember,
)
from datatool.core.protocol import Protocol
from datatool.report.sections import Flow, FlowStep, KeyEntry, Synthetic

# The demo's DICOM files say Manufacturer "datatool-demo" (datatool.demo.dicomfile); ingest
# keeps the manufacturer of each series, so the catalogue knows which images are synthetic.
DEMO_MANUFACTURER = "datatool-demo"
SUBSETS = ("train", "val", "test")


def synthetic(s) -> Synthetic | None:
    """How many images come from the synthetic demo (None: none)."""
    total = int(s.scalar(select(func.count(Image.id))) or 0)
    demo = int(
        s.scalar(
            select(func.count(Image.id))
            .join(Series, Image.series_id == Series.id)
            .where(Series.manufacturer == DEMO_MANUFACTURER)
        )
        or 0
    )
    return Synthetic(demo, total, DEMO_MANUFACTURER) if demo else None


def _last_rejected(s) -> int:
    details = s.scalar(
        select(AuditEntry.details)
        .where(AuditEntry.action == "ingest")
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    try:
        return int((details or {}).get("rejected") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def flow(s, sample_id: int | None, split_id: int | None, run_id: int | None) -> Flow | None:
    """The flow's boxes, each number counted here (the score: the run's on its test set,
    else its newest, as the report's results show); None when no file was ever ingested."""
    status = dict(
        s.execute(select(SourceFile.status, func.count()).group_by(SourceFile.status)).all()
    )
    rejected = _last_rejected(s)
    catalogued = sum(int(n) for n in status.values())
    if not catalogued and not rejected:
        return None
    images = int(s.scalar(select(func.count(Image.id))) or 0)
    steps = [
        [FlowStep("received", "DICOM files received", catalogued + rejected)],
        [
            FlowStep("rejected", "rejected: unreadable", rejected, "the last ingest's count"),
            FlowStep("quarantined", "quarantined", int(status.get("quarantined", 0))),
            FlowStep("conflict", "set aside: conflicting version", int(status.get("conflict", 0))),
            FlowStep("ingested", "files ingested", int(status.get("ingested", 0))),
        ],
        [FlowStep("images", "images (frames) catalogued", images)],
    ]
    labelled = s.execute(
        select(Rater.name, func.count(func.distinct(Annotation.image_id)))
        .join(Annotation, Annotation.rater_id == Rater.id)
        .where(Rater.kind == RaterKind.human)
        .group_by(Rater.name)
        .order_by(Rater.name)
    ).all()
    steps.append(
        [FlowStep(f"labelled:{name}", f"labelled by {name}", int(n)) for name, n in labelled]
        or [FlowStep("labelled", "labelled by a rater", 0)]
    )
    sample = s.get(AgreementSample, sample_id) if sample_id is not None else None
    steps.append(
        [
            FlowStep(
                "agreement",
                "agreement sample",
                sample.n_images if sample is not None else None,
                f"sample {sample.id}" if sample is not None else "none yet",
            )
        ]
    )
    if split_id is not None:
        per_set = dict(
            s.execute(
                select(SplitMember.subset, func.count())
                .where(SplitMember.split_id == split_id)
                .group_by(SplitMember.subset)
            ).all()
        )
        steps.append(
            [FlowStep(f"set:{sub}", f"{sub} set", int(per_set.get(sub, 0))) for sub in SUBSETS]
        )
    else:
        steps.append([FlowStep("sets", "split sets", None, "no split yet")])
    score = (
        s.scalar(
            select(Score)
            .where(Score.run_id == run_id)
            .order_by((Score.subset == "test").desc(), Score.id.desc())
            .limit(1)
        )
        if run_id is not None
        else None
    )
    scored: int | None = None
    if score is not None:
        counted: object = (score.results or {}).get("images")
        scored = int(counted) if isinstance(counted, int | float) else None
    steps.append(
        [
            FlowStep(
                "scored",
                f"{score.subset} images scored" if score is not None else "test images scored",
                scored,
                f"run {score.run_id}" if score is not None else "no score yet",
            )
        ]
    )
    return Flow(steps)


def colour_key(protocol: Protocol) -> list[KeyEntry]:
    """Each structure's colour in the figures (the protocol's)."""
    return [KeyEntry(st.name, st.hex_color) for st in protocol.structures]
