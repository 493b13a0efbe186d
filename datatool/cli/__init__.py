"""The ``datatool`` command line: thin Typer commands over the library functions.

Each command parses its options, calls one service function, and prints a table for people
or JSON for scripts (``--json``). Exit codes: 0 all well, 1 something was rejected,
2 usage errors (bad options, no workspace). Every module of this package registers its
commands on the shared apps in ``common`` when imported; all of them are imported here.
"""

import importlib
import pkgutil

from datatool.cli.common import app

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "common":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["app"]
