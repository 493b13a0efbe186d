"""What every command shares: the Typer apps and help panels, the common options, error
handling, progress bars. Output (tables, --json, --csv, problem lines) lives in ``render``."""

from __future__ import annotations

import errno
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from datatool import __version__
from datatool.cli.render import err, error_line, out
from datatool.core.errors import DatatoolError

if TYPE_CHECKING:
    from datatool.core.workspace import Workspace

# Help panels, in the order of the work; commands appear in them in the order they are
# registered (datatool/cli/__init__.py imports the command modules in that order).
PANEL_DATA = "Workspace and data"
PANEL_LABELS = "Labels"
PANEL_AGREEMENT = "Agreement and consensus"
PANEL_MODEL = "Splits and model"
PANEL_ASSIST = "Pre-labelling and QA"
PANEL_REPORT = "Study report"


# The order of `datatool --help`: the work's order, not the alphabet. A command not listed
# here comes last in its panel.
COMMAND_ORDER = [
    "init",
    "demo-data",
    "ingest",
    "pull",
    "ingest-clinical",
    "listen",
    "status",
    "images",
    "cohort",
    "rater",
    "export",
    "labelstudio",
    "sync",
    "labels",
    "agreement",
    "consensus",
    "raters",
    "split",
    "train",
    "score",
    "runs",
    "prelabel",
    "serve",
    "qa",
    "next",
    "report",
]


class PipelineGroup(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: k for k, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


def _typer(help_text: str, **kwargs: Any) -> typer.Typer:
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
        **kwargs,
    )


app = _typer(
    "Turn a folder of ultrasound DICOM exams into a versioned, double-blind-labelled "
    "segmentation dataset, and train the model that pre-labels and checks the next batch. "
    "The panels below follow the work: start with 'datatool init', then 'datatool ingest DIR'.",
    name="datatool",
    cls=PipelineGroup,
    add_completion=True,
    pretty_exceptions_enable=False,
)
rater_app = _typer("Register and list raters.")
sync_app = _typer("Bring raters' labels in from ITK-SNAP or Label Studio.")
export_app = _typer("Write images (and a rater's own labels) out for a labelling tool.")
labelstudio_app = _typer("Work with a Label Studio server (one project per rater).")
split_app = _typer("Frozen, versioned patient-level train/validation/test splits.")

WorkspaceOpt = typer.Option(
    None,
    "--workspace",
    "-w",
    envvar="DATATOOL_WORKSPACE",
    help="Workspace folder (default: the current folder or the first parent holding .datatool/).",
)
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")
# The largest integer every catalogue column holds (PostgreSQL INTEGER): the bound of seeds,
# sizes and ids given on the command line.
MAX_INT = 2**31 - 1
CsvOpt = typer.Option(
    None,
    "--csv",
    dir_okay=False,
    help="Also write the table(s) to this CSV file (raw numbers, for R, SPSS or Excel); a "
    "second table goes beside it as FILE-NAME.csv.",
)

# Labels identical to another rater's (sync itksnap, sync labelstudio)
AllowCopyOpt = typer.Option(
    None,
    "--allow-copy",
    metavar="REASON",
    help="Store labels identical to another rater's current label anyway (refused by "
    "default: a copy breaks the double-blind); the reason is recorded in the audit log.",
)
# Gold-standard tasks (labelstudio push, export itksnap)
GoldOpt = typer.Option(
    None,
    "--gold",
    min=1,
    max=MAX_INT,
    help="Mix this many gold-standard images into the rater's queue: images that already have "
    "a reference label (--gold-reference) and are new to the rater, chosen by --gold-seed, "
    "looking like every other task. N counts the rater's gold images in all (a re-run adds "
    "none). Without --images the ordinary images are those the reference has not labelled. "
    "Scores: 'datatool raters'.",
)
GoldReferenceOpt = typer.Option(
    "consensus:staple",
    "--gold-reference",
    help="Whose labels are the answers of gold tasks: a consensus (consensus:staple, "
    "consensus:majority) or a rater's name.",
)
GoldSeedOpt = typer.Option(
    0, "--gold-seed", min=0, max=MAX_INT, help="Seed choosing (and ordering) the gold images."
)


ForceOpt = typer.Option(
    False,
    "--force",
    help="Replace what stands at --out or --csv even if datatool did not write it there as "
    "this command's output (by default only its own earlier output is replaced).",
)
# The parameters that name where a command writes: a command that has one gets --force.
# A path datatool wrote is recorded beside it (datatool.core.outputs); anything else there is
# refused unless --force.
OUTPUT_PARAMS = {"out": "--out", "out_dir": "--out", "csv_out": "--csv"}


def _output_targets(func: Callable[..., Any], kwargs: dict) -> list[tuple[Path, str, str]]:
    """(path, kind, option) of each place the command was told to write. The kind is the
    command's name (--csv: 'csv'). ``split export --format nnunet`` is left out: its --out is
    nnU-Net's raw folder, shared with other datasets; its own dataset folder inside is
    refused unless --replace."""
    kind = func.__name__.replace("_", " ")
    found = []
    for name, option in OUTPUT_PARAMS.items():
        value = kwargs.get(name)
        if value is None:
            continue
        if kind == "split export" and str(kwargs.get("fmt", "")) == "nnunet":
            continue
        found.append((Path(value), "csv" if name == "csv_out" else kind, option))
    return found


def _with_force(func: Callable[..., Any], wrapper: Callable[..., Any]) -> bool:
    """Give ``wrapper`` a --force option when ``func`` writes where it is told; True if so."""
    sig = inspect.signature(func, eval_str=True)
    if not OUTPUT_PARAMS.keys() & sig.parameters.keys() or "force" in sig.parameters:
        return False
    force = inspect.Parameter(
        "force", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=ForceOpt, annotation=bool
    )
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*sig.parameters.values(), force]
    )
    wrapper.__annotations__ = {**func.__annotations__, "force": bool}
    return True


def _record_outputs(targets: list[tuple[Path, str, str]]) -> None:
    from datatool.core.outputs import record_output

    for path, kind, _ in targets:
        if kind != "csv" and path.exists():  # a CSV is recorded as it is written (render)
            record_output(path, kind)


F = TypeVar("F", bound=Callable[..., Any])


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: the lines of each paragraph joined, so the terminal wraps
    them (instead of breaking where the source wrapped); paragraphs stay apart."""
    if not doc:
        return doc
    import inspect

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc))
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def guarded(func: F) -> F:
    """Turn DatatoolError (and a few others the user can fix) into one line and an exit code;
    reflow the command's docstring for ``--help``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from datatool.core.outputs import check_output, forcing

        # --force: ours (injected), or the command's own --force, which then covers this too
        force = bool(kwargs.pop("force", False) if injected else kwargs.get("force", False))
        try:
            with forcing(force):
                targets = _output_targets(func, kwargs)
                for path, kind, option in targets:
                    check_output(path, kind, option)
                try:
                    result = func(*args, **kwargs)
                except typer.Exit as done:  # finish(): 1 still wrote what it could
                    if done.exit_code in (0, 1):
                        _record_outputs(targets)
                    raise
            _record_outputs(targets)
            return result
        except DatatoolError as exc:
            error_line(exc)
            raise typer.Exit(exc.exit_code) from None
        except FileNotFoundError as exc:  # a path the user typed (2)
            error_line(os_error_text(exc))
            raise typer.Exit(2) from None
        except OSError as exc:  # a folder that cannot be written, a full disk (1)
            error_line(os_error_text(exc))
            raise typer.Exit(1) from None
        except OverflowError:  # an integer beyond what the catalogue or a library holds
            error_line(f"a number given is too large: integers go up to {MAX_INT} (2**31 - 1)")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print(
                "interrupted: the catalogue holds only whole files; run the same command "
                "again to finish the work"
            )
            raise typer.Exit(130) from None

    injected = _with_force(func, wrapper)
    wrapper.__doc__ = reflow(func.__doc__)
    return wrapper  # type: ignore[return-value]


_OS_ADVICE = {
    errno.EACCES: "check its permissions, or choose another place",
    errno.EPERM: "check its permissions, or choose another place",
    errno.EROFS: "it is on a read-only file system: choose another place",
    errno.ENOSPC: "the disk is full: make room and run again",
    errno.EDQUOT: "the disk quota is used up: make room and run again",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EEXIST: "something by that name is in the way: choose another path",
    errno.EISDIR: "it is a folder, not a file: choose another path",
    errno.ENOENT: "check the path",
}


def os_error_text(exc: OSError) -> str:
    """One sentence for an OSError: the path, what went wrong, what to do (never the bare
    errno that ``exc.args[0]`` holds)."""
    if exc.filename is None and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]  # raised with a message of its own
    what = exc.strerror or type(exc).__name__
    where = f"{exc.filename}" if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    advice = _OS_ADVICE.get(exc.errno or 0, "check the path and try again")
    return f"{where}: {what}: {advice}"


def finish(code: int) -> NoReturn:
    """End the command with this exit code (0 all well, 1 something rejected or failed)."""
    raise typer.Exit(code)


def workspace(path: Path | None) -> Workspace:
    from datatool.core.workspace import open_workspace

    return open_workspace(path)


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields a ``progress(done, total)`` callback."""
    enabled = enabled and err.is_terminal  # no redraw noise in logs and pipes
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not enabled,
    )
    task = None
    with bar:

        def update(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(label, total=total)
            bar.update(task, completed=done, total=total)

        yield update


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        out.print(f"datatool {__version__}")
        raise typer.Exit(0)
