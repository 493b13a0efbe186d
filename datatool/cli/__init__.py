"""The ``datatool`` command line: thin Typer commands over the library functions.

Each command parses its options, calls one service function that returns a dataclass, and
renders it (``render``): a table for people, ``--json`` for scripts, ``--csv`` for statistics
packages. Exit codes: 0 all well, 1 something was rejected or a check failed, 2 usage errors
(bad options, no workspace). The modules below register their commands on the shared apps
of ``common``, each in its help panel; ``common.COMMAND_ORDER`` orders ``--help``.
"""

from datatool.cli import (
    agreement,
    assist,
    dataset,
    dicomseg,
    itksnap,
    labels,
    labelstudio,
    listen,
    model,
    pull,
    qa,
    raters,
    report,
    splits,
)
from datatool.cli.common import (
    PANEL_ASSIST,
    PANEL_LABELS,
    PANEL_MODEL,
    app,
    export_app,
    labelstudio_app,
    rater_app,
    split_app,
    sync_app,
)

app.add_typer(rater_app, name="rater", rich_help_panel=PANEL_LABELS)
app.add_typer(export_app, name="export", rich_help_panel=PANEL_LABELS)
app.add_typer(labelstudio_app, name="labelstudio", rich_help_panel=PANEL_LABELS)
app.add_typer(sync_app, name="sync", rich_help_panel=PANEL_LABELS)
app.add_typer(split_app, name="split", rich_help_panel=PANEL_MODEL)
app.add_typer(qa.qa_app, name="qa", rich_help_panel=PANEL_ASSIST)

__all__ = [
    "agreement",
    "app",
    "assist",
    "dataset",
    "dicomseg",
    "itksnap",
    "labels",
    "labelstudio",
    "listen",
    "model",
    "pull",
    "qa",
    "raters",
    "report",
    "splits",
]
