"""One rule for an unknown run, in every command that takes a run id: a usage error (exit 2,
like an unknown rater), one line that names the run and where the runs are listed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from datatool.cli import app
from tests.cli.test_commands import LEAVES

LS = ["--url", "http://127.0.0.1:9", "--token", "not-used"]  # refused before any request

# every command with a run id (an argument, --run, --resume, or a model:RUN rater)
UNKNOWN_RUN = {
    "score": ["999"],
    "train": ["--resume", "999"],
    "qa": ["--run", "999"],  # qa itself (its subcommands take no run)
    "next": ["--run", "999", "--rater", "rater1"],
    "prelabel": ["999", "--rater", "rater1", *LS],
    "serve": ["999"],
    "report": ["--run", "999"],
    "labelstudio push": [
        *("--rater", "rater1", "--review", "--run", "999", "--serve", "upload", *LS)
    ],
    "export itksnap": ["--rater", "rater1", "--prefill", "model:999", "--out", "{tmp}/x"],
}


def test_the_table_names_only_real_commands():
    assert set(UNKNOWN_RUN) <= {name for name, _ in LEAVES} | {"qa"}


@pytest.mark.parametrize("command", sorted(UNKNOWN_RUN))
def test_an_unknown_run_is_a_usage_error_everywhere(trained, tmp_path, command):
    ws, _ = trained
    args = [a.replace("{tmp}", str(tmp_path)) for a in UNKNOWN_RUN[command]]
    argv = [*command.split(), *args, "--workspace", str(ws.root)]
    res = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 2, f"{argv}: exit {res.exit_code}\n{res.output}"
    line = res.stderr.strip()
    assert "999" in line and "datatool runs" in line and "\n" not in line, line
    assert not (tmp_path / "x").exists()
