"""``qa report``: the open queue as CSV and a page of overlay thumbnails."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from datatool.analysis.qa.queue import QueueItem, list_queue
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    FlagReason,
    FlagStatus,
    Image,
    Rater,
    RaterKind,
    audit,
)
from datatool.core.csvcells import csv_writer
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import latest_annotations_query
from datatool.labels.drafts import drafts_of
from datatool.labels.matching import image_name

REPORT_TOP = 20


@dataclass
class QAReport:
    out_dir: str
    csv: str
    page: str
    items: int  # open items in the CSV
    thumbnails: list[str]  # PNG per item shown on the page (the worst first)


CSV_COLUMNS = [
    "rank",
    "flag",
    "image",
    "rater",
    "version",
    "structure",
    "reason",
    "severity",
    "summary",
    "evidence",
]


def _panels(s, ws: Workspace, item: QueueItem) -> list[tuple[str, Any]]:
    """(title, label map or None) for the flagged label, the model's draft and another rater;
    for a temporal flag, the flagged label and the same rater's labels of the loop's frames
    before and after it."""
    ann = s.get(Annotation, item.annotation_id)
    ev = item.evidence
    panels: list[tuple[str, Any]] = [
        (f"{item.rater} v{item.version} (flagged)", ws.store.get_array(ann.mask_hash))
    ]
    if item.reason == FlagReason.temporal:
        for key, what in (("previous", "frame before"), ("next", "frame after")):
            nb = s.get(Annotation, ev[f"{key}_annotation"]) if ev.get(f"{key}_annotation") else None
            panels.append(
                (
                    f"{what}: {ev.get(key) or image_name(nb.image_id)}"
                    if nb is not None
                    else f"no {what}",
                    ws.store.get_array(nb.mask_hash) if nb is not None else None,
                )
            )
        return panels
    model_id = ev.get("model_annotation")
    if model_id is None and ev.get("source", "").startswith("model:"):
        model_id = ev.get("source_annotation")
    if model_id is None and item.run is not None:
        draft = drafts_of(s, item.run, [item.image_id]).get(item.image_id)
        model_id = draft.id if draft else None
    model = s.get(Annotation, model_id) if model_id else None
    panels.append(
        (
            f"model:{item.run} draft" if model is not None else "model: no draft",
            ws.store.get_array(model.mask_hash) if model is not None else None,
        )
    )
    other_id = ev.get("other_annotation")
    if other_id is None and ev.get("source", "") and not ev["source"].startswith("model:"):
        other_id = ev.get("source_annotation")
    if other_id is None:
        sub = latest_annotations_query().subquery()
        other_id = s.scalar(
            select(sub.c.id)
            .join(Rater, Rater.id == sub.c.rater_id)
            .where(
                sub.c.image_id == item.image_id,
                Rater.kind == RaterKind.human,
                sub.c.rater_id != ann.rater_id,
            )
            .order_by(Rater.name)
            .limit(1)
        )
    other = s.get(Annotation, other_id) if other_id else None
    panels.append(
        (
            f"{other.rater.name} v{other.version}" if other is not None else "no other rater",
            ws.store.get_array(other.mask_hash) if other is not None else None,
        )
    )
    return panels


def write_report(
    ws: Workspace,
    out_dir: Path | None = None,
    top: int = REPORT_TOP,
    reasons: Sequence[str] | None = None,
    raters: Sequence[str] | None = None,
) -> QAReport:
    """The open queue as CSV (``queue.csv``) and a page (``index.html``) of overlay
    thumbnails (the flagged label, the model's draft, another rater's label) for the ``top``
    worst items."""
    from datatool.analysis.plots import qa_panels_png

    if top < 0:
        raise UsageError("--top must be 0 or more")
    queue = list_queue(ws, FlagStatus.open, reasons, raters)
    protocol = load_protocol(ws.protocol_name)
    out = Path(out_dir) if out_dir else ws.root / "reports" / "qa"
    (out / "thumbnails").mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv_writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for it in queue.items:
        writer.writerow(
            [
                it.rank,
                it.flag,
                it.image,
                it.rater,
                it.version,
                it.structure,
                it.reason.value,
                it.severity,
                it.summary,
                json.dumps(it.evidence, sort_keys=True),
            ]
        )
    write_text_atomic(out / "queue.csv", buf.getvalue())
    thumbs: list[str] = []
    rows_html = []
    with ws.session() as s:
        for it in queue.items[:top]:
            image = ws.store.get_array(s.get_one(Image, it.image_id).store_hash)
            try:
                value: int | None = protocol.by_label(it.structure).value
            except KeyError:  # a flag of the whole label or image: no structure drawn thick
                value = None
            path = out / "thumbnails" / f"flag-{it.flag}.png"
            qa_panels_png(
                path,
                image,
                _panels(s, ws, it),
                protocol,
                value,
                f"#{it.rank} flag {it.flag}: {it.image} {it.structure}, {it.reason.value}",
            )
            thumbs.append(str(path))
            cells = [
                str(it.rank),
                str(it.flag),
                "<br>".join(
                    [
                        html.escape(it.image),
                        f"{html.escape(it.rater)} v{it.version}",
                        html.escape(it.structure),
                        f"<b>{html.escape(it.reason.value)}</b> ({it.severity:.2f})",
                        html.escape(it.summary),
                    ]
                ),
                f'<img src="thumbnails/{path.name}" width="900">',
            ]
            rows_html.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    page = out / "index.html"
    write_text_atomic(
        page,
        "<!doctype html><meta charset='utf-8'><title>datatool qa</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px}</style>"
        f"<h1>Review queue: the {len(rows_html)} worst of {queue.total} open items</h1>"
        "<p>Ranked by severity: how far the evidence lies past its threshold (1: a clear-cut "
        "case). Panels: the flagged label, the model's draft, another rater's label (for a "
        "temporal flag: the same rater's labels of the frames before and after, on this "
        "frame); the flagged structure is drawn thick. The whole queue is in "
        "<a href='queue.csv'>queue.csv</a>.</p>"
        "<table><tr><th>rank</th><th>flag</th><th>item</th><th>label | model | other rater"
        "</th></tr>" + "".join(rows_html) + "</table>\n",
    )
    with ws.session() as s:
        audit(s, "qa report", "report", items=queue.total, thumbnails=len(thumbs))
    return QAReport(
        out_dir=str(out),
        csv=str(out / "queue.csv"),
        page=str(page),
        items=queue.total,
        thumbnails=thumbs,
    )
