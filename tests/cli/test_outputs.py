"""Where a command is told to write (--out, --csv, demo-data's folder), it replaces nothing
but its own earlier output of the same kind (datatool.core.outputs): anything else there is
one line, exit 2, untouched, unless --force."""

from __future__ import annotations

import enum
import hashlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datatool.cli import app
from datatool.cli.common import OUTPUT_PARAMS
from datatool.core.errors import UsageError
from datatool.core.outputs import LEDGER, check_output, record_output
from datatool.core.workspace import init_workspace
from tests.cli.test_commands import LEAVES

runner = CliRunner()
FOREIGN = b"patient_id,age\nA1,40\n"  # say, the study's clinical CSV


def _output_cases() -> list[tuple[str, Any, Any]]:
    cases = []
    for name, command in LEAVES:
        for param in command.params:
            if param.name in OUTPUT_PARAMS:
                cases.append((name, command, param))
    return cases


CASES = _output_cases()


def _filler(param: Any) -> str:
    """A value of the parameter's type (what it is never matters: the refusal comes first)."""
    annotation = param.type_descriptor.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str(next(iter(annotation)).value)
    if annotation in (int, float):
        return "1"
    return "x"


def _is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def _command_line(name: str, command: Any, target: Any, path: Path) -> list[str]:
    args = name.split()
    for param in command.params:
        if param is target:
            args += [str(path)] if _is_argument(param) else [param.opts[0], str(path)]
        elif param.required:
            value = _filler(param)
            args += [value] if _is_argument(param) else [param.opts[0], value]
    if name == "split export":
        args += ["--format", "csv"]  # nnunet's --out is nnU-Net's shared raw folder
    return args


def _is_folder(param: Any) -> bool:
    return param.type_descriptor.parameter_info.file_okay is False


def test_every_output_option_is_covered():
    """The commands that write where they are told: if one is added, it is tested here."""
    names = {f"{n} {p.name}" for n, _, p in CASES}
    for expected in (
        "report out",
        "agreement out_dir",
        "score out_dir",
        "qa report out_dir",
        "split export out_dir",
        "export itksnap out_dir",
        "demo-data out_dir",
        "status csv_out",
        "split create csv_out",
    ):
        assert expected in names
    assert all("--force" in {o for p in c.params for o in p.opts} for _, c, _ in CASES)


@pytest.mark.parametrize(
    ("name", "command", "param"), CASES, ids=[f"{n}:{p.name}" for n, _, p in CASES]
)
def test_a_foreign_file_or_folder_is_refused_unless_forced(tmp_path, name, command, param):
    ws = tmp_path / "nowhere"  # no workspace: the refusal comes before anything is opened
    if _is_folder(param):
        target = tmp_path / "theirs"
        target.mkdir()
        (target / "queue.csv").write_bytes(FOREIGN)
        kept = target / "queue.csv"
    else:
        target = kept = tmp_path / "clinical.csv"
        target.write_bytes(FOREIGN)
    args = _command_line(name, command, param, target)
    if any("--workspace" in p.opts for p in command.params):
        args += ["--workspace", str(ws)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (args, res.output)
    assert "did not write" in res.output and "--force" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert kept.read_bytes() == FOREIGN
    forced = runner.invoke(app, [*args, "--force"])
    assert "did not write" not in forced.output, forced.output


def test_a_report_replaces_its_own_file_but_not_an_edited_one_nor_a_csv(tmp_path):
    root = init_workspace(tmp_path / "ws").root
    w = ["--workspace", str(root)]
    report = tmp_path / "out" / "study.md"
    for _ in range(2):  # the second run replaces the first's report: exit 0
        res = runner.invoke(app, ["report", "--format", "md", "--out", str(report), *w])
        assert res.exit_code == 0, res.output
    assert LEDGER in {p.name for p in report.parent.iterdir()}
    report.write_text(report.read_text() + "\nmy own notes\n")  # the user's work now
    res = runner.invoke(app, ["report", "--format", "md", "--out", str(report), *w])
    assert res.exit_code == 2 and "did not write" in res.output
    assert report.read_text().endswith("my own notes\n")
    table = tmp_path / "out" / "status.csv"
    for _ in range(2):
        assert runner.invoke(app, ["status", "--csv", str(table), *w]).exit_code == 0
    res = runner.invoke(app, ["report", "--out", str(table), *w])  # a CSV is no report
    assert res.exit_code == 2 and "did not write" in res.output
    assert runner.invoke(app, ["report", "--out", str(table), "--force", *w]).exit_code == 0


def test_the_ledger_records_kind_and_content(tmp_path):
    path = tmp_path / "a.html"
    check_output(path, "report", "--out")  # nothing there: free
    path.write_text("<html>1</html>")
    record_output(path, "report")
    check_output(path, "report", "--out")  # its own, unchanged
    with pytest.raises(UsageError, match="did not write as agreement output"):
        check_output(path, "agreement", "--out")
    path.write_text("<html>2</html>")
    with pytest.raises(UsageError, match="a file is there"):
        check_output(path, "report", "--out")
    check_output(path, "report", "--out", force=True)
    folder = tmp_path / "agr"
    folder.mkdir()
    check_output(folder, "agreement", "--out")  # empty: free
    (folder / "x.png").write_bytes(b"png")
    with pytest.raises(UsageError, match="a folder with files in it"):
        check_output(folder, "agreement", "--out")
    record_output(folder, "agreement")
    check_output(folder, "agreement", "--out")
    ledger = (tmp_path / LEDGER).read_text()
    assert hashlib.sha256(b"<html>1</html>").hexdigest() in ledger
