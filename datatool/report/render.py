"""The study report as text: the Jinja2 templates beside this module (``templates/``), with
the filters they use (numbers, the study's descriptive forms, Markdown escaping, data URIs)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from datatool.report.sections import Described, Figure, StudyReport, p_phrase, p_text

TEMPLATES = Path(__file__).resolve().with_name("templates")


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


_PARTS = re.compile(r" (?=[(\[])")


def _unbroken(text: Any) -> Any:
    """A table cell's text for HTML, each figure in a span that never breaks: "0.830 ±
    0.046" stays on one line, "0.830 (0.790, 0.861)" breaks at most before its bracket."""
    from markupsafe import Markup, escape

    parts = _PARTS.split(str(text))
    if len(parts) == 1 and " " not in parts[0]:
        return text
    return Markup(" ").join(Markup('<span class="nb">{}</span>').format(escape(p)) for p in parts)


def _data_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(fig._png).decode("ascii")


def _raw(value: Any) -> str:
    """A cell's raw value for sorting (and for scripts reading the page)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _bytecode_cache():
    """The compiled templates kept between runs (0.2 s a report; Jinja checks them against
    the templates' source) in Jinja's per-user folder of the temporary directory (mode 700,
    written atomically); None, compiling each time, where that folder cannot be had safely."""
    import jinja2

    try:
        return jinja2.FileSystemBytecodeCache()
    except (OSError, RuntimeError):
        return None


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        bytecode_cache=_bytecode_cache(),
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
        pval=p_text,
        pphrase=p_phrase,
        unbroken=_unbroken,
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
