"""How results reach people and scripts: the one place that draws tables, writes ``--json``
and ``--csv``, and prints the one-line-per-item problem reports.

A command calls one service function, which returns a dataclass, and hands it to
:func:`show` with a *view*: a function that turns the result into blocks (lines of text and
:class:`Table` objects). ``--json`` prints the dataclass itself (:func:`to_jsonable`), so the
JSON holds every field, not only what the tables show; ``--csv FILE`` writes the tables'
rows with raw numbers (a ``mean ± SD`` cell becomes two columns), for R, SPSS or Excel.

Everything a user or a file supplied (rater names, file names, reasons quoting them) is
printed as plain text: Rich markup in it is escaped and control characters are made visible,
so ``[red]x`` stays ``[red]x`` and a file name holding a newline stays on one line.
"""

from __future__ import annotations

import enum
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from datatool.core.atomic import write_text_atomic
from datatool.core.csvcells import csv_writer
from datatool.core.errors import DatatoolError
from datatool.core.jsonable import to_jsonable
from datatool.core.outputs import check_output, record_output

# In a terminal rich fits its width; in logs and pipes (make, CI) it would squeeze wide tables
# into 80 columns, so there it uses COLUMNS or 160.
_PIPE_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 160)
out = Console(width=_PIPE_WIDTH, emoji=False, highlight=False)
err = Console(
    stderr=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH, emoji=False, highlight=False
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe(value: object) -> str:
    """User-supplied text, made printable on one line: control characters as escapes."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def plain(value: object) -> str:
    """User-supplied text for a Rich console: escaped markup, visible control characters."""
    return escape(safe(value))


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class MeanSD:
    mean: float
    sd: float

    @classmethod
    def of(cls, d: Mapping[str, Any] | None) -> MeanSD | None:
        """From a ``metrics.describe`` dict; None when it describes no values."""
        if not d or not d.get("n"):
            return None
        return cls(d["mean"], d["sd"])


@dataclass(frozen=True)
class MedianIQR:
    median: float
    p25: float
    p75: float

    @classmethod
    def of(cls, d: Mapping[str, Any] | None) -> MedianIQR | None:
        if not d or not d.get("n"):
            return None
        return cls(d["median"], d["p25"], d["p75"])


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class CountPct:
    n: int
    pct: float | None


@dataclass(frozen=True)
class PValue:
    p: float


@dataclass(frozen=True)
class Percent:
    """A share in per cent: ``60.0 %`` in a table, 60.0 in the CSV."""

    pct: float


def _num(value: float, digits: int) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def cell_text(value: Any, digits: int = 3) -> str:
    """How a cell reads in a table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, MeanSD):
        return f"{_num(value.mean, digits)} ± {_num(value.sd, digits)}"
    if isinstance(value, MedianIQR):
        return (
            f"{_num(value.median, digits)} ({_num(value.p25, digits)}, {_num(value.p75, digits)})"
        )
    if isinstance(value, Interval):
        return f"[{_num(value.low, digits)}, {_num(value.high, digits)}]"
    if isinstance(value, CountPct):
        return f"{value.n}" if value.pct is None else f"{value.n} ({value.pct:.1f} %)"
    if isinstance(value, PValue):
        return "< 0.001" if value.p < 0.001 else f"{value.p:.3f}"
    if isinstance(value, Percent):
        return f"{value.pct:.1f} %"
    if isinstance(value, float):
        return _num(value, digits)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return safe(value)


_PARTS: dict[type, tuple[str, ...]] = {
    MeanSD: ("mean", "sd"),
    MedianIQR: ("median", "p25", "p75"),
    Interval: ("low", "high"),
    CountPct: ("n", "pct"),
}


def _csv_headers(header: str, sample: Any) -> list[str]:
    parts = _PARTS.get(type(sample))
    return [f"{header} ({p})" for p in parts] if parts else [header]


def _csv_values(value: Any, n: int) -> list[Any]:
    if value is None:
        return [""] * n
    parts = _PARTS.get(type(value))
    if parts:
        return [getattr(value, p) for p in parts]
    if isinstance(value, PValue):
        return [value.p]
    if isinstance(value, Percent):
        return [value.pct]
    if isinstance(value, enum.Enum):
        return [value.value]
    return [value]


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A table of raw values; :func:`cell_text` formats them for people, the CSV keeps them."""

    title: str | None
    columns: Sequence[str]
    rows: list[list[Any]] = field(default_factory=list)
    digits: int = 3
    name: str | None = None  # for the CSV file of a command with several tables
    shown: int | None = None  # on the terminal at most this many rows (the CSV: all)

    def add(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def rich(self) -> RichTable:
        table = RichTable(title=plain(self.title) if self.title else None)
        for k, col in enumerate(self.columns):
            table.add_column(plain(col), justify="left" if k == 0 else "right")
        for row in self.rows[: self.shown]:
            table.add_row(*(plain(cell_text(v, self.digits)) for v in row))
        return table

    @property
    def hidden(self) -> int:
        """Rows not printed on the terminal (``shown``)."""
        return 0 if self.shown is None else max(len(self.rows) - self.shown, 0)

    def csv_text(self) -> str:
        samples = [
            next((r[k] for r in self.rows if r[k] is not None), None)
            for k in range(len(self.columns))
        ]
        headers = [h for col, s in zip(self.columns, samples) for h in _csv_headers(col, s)]
        widths = [len(_csv_headers(col, s)) for col, s in zip(self.columns, samples)]
        buf = io.StringIO()
        writer = csv_writer(buf, lineterminator="\n")
        writer.writerow(headers)
        for row in self.rows:
            writer.writerow([v for value, n in zip(row, widths) for v in _csv_values(value, n)])
        return buf.getvalue()


Block = str | Table
R = TypeVar("R")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "table"


def write_csv(path: Path, tables: Sequence[Table]) -> list[Path]:
    """The first table to ``path``; any others beside it as ``STEM-NAME.csv``. A file there
    that datatool did not write as a CSV is refused unless --force (datatool.core.outputs)."""
    if not tables:
        raise DatatoolError(f"--csv {path}: this command printed no table to write")
    path = Path(path)
    written = []
    for k, table in enumerate(tables):
        target = (
            path
            if k == 0
            else path.with_name(
                f"{path.stem}-{_slug(table.name or table.title or str(k))}{path.suffix or '.csv'}"
            )
        )
        check_output(target, "csv", "--csv")
        try:
            write_text_atomic(target, table.csv_text())
        except OSError as exc:
            raise DatatoolError(
                f"--csv {target}: cannot write ({exc.strerror or exc}); choose a writable folder"
            ) from None
        record_output(target, "csv")
        written.append(target)
    return written


# --------------------------------------------------------------------------- JSON


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- output


def show(
    result: R,
    view: Callable[[R], Iterable[Block]],
    json_out: bool = False,
    csv_path: Path | None = None,
) -> None:
    """Print a result: its view's blocks (text lines and tables), or its JSON; with
    ``csv_path`` also write the view's tables as CSV."""
    blocks = list(view(result))
    if csv_path is not None:
        written = write_csv(csv_path, [b for b in blocks if isinstance(b, Table)])
        err.print(f"csv: {', '.join(plain(p) for p in written)}")
    if json_out:
        print_json(result)
        return
    for block in blocks:
        if isinstance(block, Table):
            out.print(block.rich())
            if block.hidden:
                out.print(
                    f"... and {block.hidden} more rows: --csv FILE or --json lists them all",
                    markup=False,
                    highlight=False,
                )
        else:  # a line: user text in it (paths, names) stays on it, as text
            out.print(safe(block), markup=False, highlight=False, emoji=False)


def problems(
    items: Iterable[tuple[object, object]], label: str = "rejected", style: str = "yellow"
) -> None:
    """One stderr line per problem: ``label: item: reason`` (always printed, also with
    ``--json``, so a script's log shows them)."""
    for item, reason in items:
        err.print(f"[{style}]{label}:[/{style}] {plain(item)}: {plain(reason)}", soft_wrap=True)


def notes(items: Iterable[tuple[object, object]] | Iterable[str], label: str = "note") -> None:
    for item in items:
        if isinstance(item, tuple):
            err.print(f"{label}: {plain(item[0])}: {plain(item[1])}", soft_wrap=True)
        else:
            err.print(f"{label}: {plain(item)}", soft_wrap=True)


def error_line(message: object) -> None:
    err.print(f"[red]error:[/red] {plain(message)}", soft_wrap=True)


def progress_line(message: str) -> None:
    """A progress message for logs and pipes (stderr), where no bar is drawn."""
    err.print(plain(message), soft_wrap=True)


__all__ = [
    "Block",
    "CountPct",
    "Interval",
    "MeanSD",
    "MedianIQR",
    "PValue",
    "Percent",
    "Table",
    "cell_text",
    "err",
    "error_line",
    "notes",
    "out",
    "plain",
    "print_json",
    "problems",
    "progress_line",
    "safe",
    "show",
    "to_jsonable",
    "write_csv",
]
