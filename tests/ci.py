"""One rule for "is this CI?" and for what a missing optional test dependency does.

Outside CI a test whose optional part (torch, gdcm, nnunetv2, pydicom-data, the Label Studio
server, PostgreSQL's server programs, Chromium) is missing skips, so that a developer's
machine without it still runs the rest. Under CI it fails instead: a broken install must not
turn a suite green by skipping what it could not run.

CI is read from the environment variable ``CI`` (set by GitHub Actions, GitLab, Travis, ...)
and by this one rule only: ``true``, ``1`` or ``yes`` in any case, spaces around ignored, is
CI; anything else (unset, empty, ``false``, ``0``, ``no``) is not. Every fixture asks
:func:`in_ci`; none reads ``CI`` itself (a test greps the tests for it).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import NoReturn

import pytest

CI_VALUES = ("true", "1", "yes")


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``CI`` is true, 1 or yes (case-insensitive); ``CI=false`` is not CI."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in CI_VALUES


def unavailable(reason: str) -> NoReturn:
    """Skip the test (or the module, at import time) because ``reason``; under CI, fail."""
    if in_ci():
        pytest.fail(
            f"CI={os.environ.get('CI')} and {reason}: CI must run this test, so a missing "
            "dependency fails it instead of skipping it",
            pytrace=False,
        )
    pytest.skip(reason, allow_module_level=True)


def require(module: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip`` that fails under CI: the module, imported; else skip (or fail
    under CI) with ``reason`` (default: the module is not installed, and the import error)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{reason or f'{module} is not installed'} ({type(exc).__name__}: {exc})")
