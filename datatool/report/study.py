"""The study report's service: gather the workspace, render it, write it (HTML, Markdown with
its PNGs beside it, or PDF); every file atomically."""

from __future__ import annotations

import tempfile
from pathlib import Path

from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.errors import UsageError
from datatool.core.workspace import Workspace
from datatool.report.chromium import print_pdf
from datatool.report.gather import gather
from datatool.report.render import render_html, render_markdown
from datatool.report.sections import ReportFormat, StudyReport


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
