"""tests/ci.py: one rule for reading CI from the environment, and a missing optional test
dependency that skips on a developer's machine but fails under CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import ci

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    "value", ["true", "TRUE", "True", "1", "yes", "YES", "Yes", " true ", "true\n"]
)
def test_these_values_are_ci(value):
    assert ci.in_ci({"CI": value}) is True


@pytest.mark.parametrize(
    "value", ["", "false", "FALSE", "0", "no", "off", "y", "ci", "truthy", "2", "  "]
)
def test_these_values_are_not_ci(value):
    assert ci.in_ci({"CI": value}) is False


def test_no_ci_variable_is_not_ci(monkeypatch):
    assert ci.in_ci({}) is False
    monkeypatch.delenv("CI", raising=False)
    assert ci.in_ci() is False
    monkeypatch.setenv("CI", "Yes")
    assert ci.in_ci() is True  # read from os.environ when no mapping is given
    monkeypatch.setenv("CI", "false")
    assert ci.in_ci() is False


def test_require_returns_the_module():
    import json

    assert ci.require("json") is json


@pytest.mark.parametrize("value", [None, "false", "0", ""])
def test_a_missing_module_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_datatool is not installed"):
        ci.require("no_such_module_datatool")
    with pytest.raises(pytest.skip.Exception, match="gone for a walk"):
        ci.require("no_such_module_datatool", "gone for a walk")


@pytest.mark.parametrize("value", ["true", "1", "YES"])
def test_a_missing_module_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no_such_module_datatool is not installed"):
        ci.require("no_such_module_datatool")
    with pytest.raises(pytest.fail.Exception, match="CI must run this test"):
        ci.unavailable("Chromium is not installed")


def test_unavailable_skips_a_whole_module_outside_ci(monkeypatch):
    """At import time (``torch = require("torch")`` at the top of a module) the skip is
    allowed at module level, as ``pytest.importorskip``'s was."""
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception) as exc:
        ci.unavailable("gdcm is not installed")
    assert exc.value.allow_module_level


# the places that used to decide for themselves
CI_READ = re.compile(r"""environ(\.get)?[\[(]\s*["']CI["']|getenv\(\s*["']CI["']""")


def test_no_test_reads_ci_or_skips_an_import_by_itself():
    """Every fixture asks tests/ci.py; none reads CI itself or calls importorskip (which
    would skip silently under CI)."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ("ci.py", "test_ci.py"):
            continue
        text = path.read_text()
        if CI_READ.search(text):
            offenders.append(f"{path.relative_to(TESTS)}: reads CI")
        if "importorskip(" in text:
            offenders.append(f"{path.relative_to(TESTS)}: importorskip")
    assert offenders == []


def test_the_rule_would_see_the_old_ways():
    """The guard above can fail: it sees the forms the fixtures used before."""
    assert CI_READ.search('os.environ.get("CI", "").lower()')
    assert CI_READ.search("if os.environ.get('CI'):")
    assert CI_READ.search('os.environ["CI"]')
    assert CI_READ.search('os.getenv("CI")')
    assert not CI_READ.search('os.environ.get("CIRCLE")')
