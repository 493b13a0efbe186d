"""Every command explains itself, reports as JSON for scripts, and sits in a help panel."""

from __future__ import annotations

from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from datatool.cli import app
from datatool.cli.common import COMMAND_ORDER

# Commands that print no result to report (a server in the foreground, say) need no --json.
NO_RESULT: set[str] = {"serve"}


def leaf_commands() -> list[tuple[str, Any]]:
    found = []

    def walk(prefix: str, command: Any) -> None:
        if hasattr(command, "commands"):  # a group (Typer's own click)
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found.append((prefix, command))

    walk("", get_command(app))
    return found


LEAVES = leaf_commands()


def test_the_commands_are_all_there():
    names = {name for name, _ in LEAVES}
    for expected in ("init", "ingest", "agreement", "train", "score", "sync itksnap",
                     "labelstudio push", "split create", "rater add"):  # fmt: skip
        assert expected in names


@pytest.mark.parametrize("name,command", LEAVES, ids=[n for n, _ in LEAVES])
def test_every_command_has_help(name, command):
    assert command.help and len(command.help.split()) >= 4, name
    res = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert param.help, f"{name} {param.opts[0]} has no help text"
    # a docstring's paragraph reads as one paragraph: no line of the help ends mid-sentence
    first = command.help.split("\n\n")[0]
    assert "\n" not in first, f"{name}: help text breaks where the source wrapped"


@pytest.mark.parametrize("name,command", LEAVES, ids=[n for n, _ in LEAVES])
def test_every_reporting_command_takes_json(name, command):
    if name in NO_RESULT:
        return
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert "--json" in options, f"{name} has no --json"


def test_help_lists_commands_in_the_order_of_the_work():
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "160"})
    assert res.exit_code == 0
    positions = [res.output.find(f"│ {name} ") for name in COMMAND_ORDER]
    assert all(p > 0 for p in positions), dict(zip(COMMAND_ORDER, positions))
    assert positions == sorted(positions)
    panels = [
        "Workspace and data",
        "Labels",
        "Agreement and consensus",
        "Splits and model",
        "Pre-labelling and QA",
        "Study report",
    ]
    assert [res.output.find(p) for p in panels] == sorted(res.output.find(p) for p in panels)


def test_fixed_choices_are_listed_in_help():
    res = CliRunner().invoke(app, ["ingest", "--help"], env={"COLUMNS": "160"})
    assert "auto" in res.output and "middle" in res.output
    bad = CliRunner().invoke(app, ["ingest", "x", "--frames", "sideways"])
    assert bad.exit_code == 2


# The fixed-choice options the layout issue named (and their kin): each lists its values in
# --help, and a value outside them is a usage error before the command runs.
CHOICES = [
    ("consensus", [], "--method", "staple|majority|rater"),
    ("train", ["--split", "s"], "--preset", "paper|tiny|cpu"),
    ("train", ["--split", "s"], "--device", "auto|cpu|cuda"),
    ("train", ["--split", "s"], "--loss", "ce|ce+dice|dice|border+dice"),
    ("score", ["1"], "--set", "test|val"),
    ("score", ["1"], "--checkpoint", "best|last"),
    ("ingest", ["x"], "--frames", "auto|all|first|middle"),
    ("split create", ["s"], "--stratify", "sex|side"),
    ("split export", ["s", "--out", "x"], "--format", "nnunet|csv"),
    ("split export", ["s", "--out", "x"], "--file-ending", ".nii.gz|.png"),
    ("report", [], "--format", "html|md|pdf"),
    ("labelstudio push", ["--rater", "r"], "--serve", "local|upload"),
    ("next", ["--rater", "r"], "--serve", "local|upload"),
    ("agreement", [], "--measure", "area_mm2|area_px"),
]


@pytest.mark.parametrize(
    "command,needed,option,values", CHOICES, ids=[f"{c[0]} {c[2]}" for c in CHOICES]
)
def test_fixed_choice_options_are_enums(command, needed, option, values, tmp_path):
    res = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "250"})
    line = next(x for x in res.output.splitlines() if f" {option} " in x)
    assert f"<{values}>" in line, line
    bad = CliRunner().invoke(
        app,
        [*command.split(), *needed, option, "bogus", "-w", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    assert bad.exit_code == 2 and "bogus" in bad.stderr, bad.output
