"""What every command shares: the Typer apps, options, error handling, progress bars,
JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn

from datatool import __version__
from datatool.core.errors import DatatoolError

app = typer.Typer(
    name="datatool",
    help="Turn a folder of ultrasound DICOM exams into a versioned, double-blind-labelled "
         "segmentation dataset. Start with 'datatool init', then 'datatool ingest DIR'.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In a terminal rich fits its width; in logs and pipes (make, CI) it would squeeze wide tables
# into 80 columns, so there it uses COLUMNS or 160.
_PIPE_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 160)
out = Console(width=_PIPE_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH)

WorkspaceOpt = typer.Option(
    None, "--workspace", "-w", envvar="DATATOOL_WORKSPACE",
    help="Workspace folder (default: the current folder or the first parent holding .datatool/).")
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


def guarded(func: Callable) -> Callable:
    """Turn DatatoolError (and a few others the user can fix) into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DatatoolError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except FileNotFoundError as exc:
            err.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted: the catalogue holds only whole files; run the same command "
                      "again to finish the work")
            raise typer.Exit(130) from None

    return wrapper


def workspace(path: Optional[Path]):
    from datatool.core.workspace import open_workspace

    return open_workspace(path)


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields a ``progress(done, total)`` callback."""
    enabled = enabled and err.is_terminal  # no redraw noise in logs and pipes
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   console=err, transient=False, disable=not enabled)
    task = None
    with bar:
        def update(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(label, total=total)
            bar.update(task, completed=done, total=total)

        yield update


def print_json(data) -> None:
    out.print_json(json.dumps(data, default=str))


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_sync_report(report, title: str, unit: str, json_out: bool) -> None:
    """A sync's report: one stderr line per rejected item (always) and per note, then a table
    for people or JSON for scripts; exits with the report's exit code (1: something rejected).
    """
    for item, reason in report.rejected:
        err.print(f"[yellow]rejected:[/yellow] {item}: {reason}", highlight=False,
                  soft_wrap=True)
    if json_out:
        print_json(report.as_dict())
    else:
        for item, note in report.notes:
            err.print(f"note: {item}: {note}", highlight=False, soft_wrap=True)
        table = Table(title=title)
        table.add_column("outcome")
        table.add_column(unit, justify="right")
        for label, value in (("seen", report.seen), ("new versions", report.new_versions),
                             ("unchanged", report.unchanged),
                             ("rejected", len(report.rejected)), ("notes", len(report.notes))):
            table.add_row(label, str(value))
        out.print(table)
    raise typer.Exit(report.exit_code)


rater_app = typer.Typer(help="Register and list raters.", no_args_is_help=True)
sync_app = typer.Typer(help="Bring raters' labels in from ITK-SNAP or Label Studio.",
                       no_args_is_help=True)
export_app = typer.Typer(help="Write images (and a rater's own labels) out for a labelling tool.",
                         no_args_is_help=True)
labelstudio_app = typer.Typer(help="Work with a Label Studio server (one project per rater).",
                              no_args_is_help=True)
split_app = typer.Typer(help="Frozen, versioned patient-level train/validation/test splits.",
                        no_args_is_help=True)
app.add_typer(rater_app, name="rater")
app.add_typer(split_app, name="split")
app.add_typer(sync_app, name="sync")
app.add_typer(export_app, name="export")
app.add_typer(labelstudio_app, name="labelstudio")


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        out.print(f"datatool {__version__}")
        raise typer.Exit(0)
