"""The ``datatool`` command line: thin Typer commands over the library functions.

Each command parses its options, calls one service function, and prints a table for people
or JSON for scripts (``--json``). Exit codes: 0 all well, 1 something was rejected,
2 usage errors (bad options, no workspace). One module per concern registers its commands on
the shared apps in ``common``.
"""

from . import dataset, labels  # noqa: F401  (they register their commands)
from .common import app

__all__ = ["app"]
