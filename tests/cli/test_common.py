"""What every command shares (datatool/cli/common.py): errors become one line and an exit
code (1 rejected input, a failed check or a damaged workspace; 2 usage errors), never a
traceback; user text is printed as plain text."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from datatool.cli import app
from datatool.cli.common import MAX_INT, os_error_text
from datatool.core.workspace import init_workspace, open_workspace
from datatool.ingest.pipeline import ingest
from tests.ingest.test_pipeline import without_dac_override

runner = CliRunner()


def _run(root, *args: str):
    return runner.invoke(app, [*args, "--workspace", str(root)])


def _one_error_line(res) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture()
def demo_root(tmp_path, demo_dir):
    root = init_workspace(tmp_path / "w").root
    ws = open_workspace(root)
    ingest(ws, [demo_dir / "dicom"], workers=0)
    ws.close()
    return root


def test_an_os_error_is_a_sentence_never_a_bare_errno():
    assert os_error_text(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")) == (
        "/x/y: No such file or directory: check the path"
    )
    text = os_error_text(PermissionError(errno.EACCES, "Permission denied", "/ro/out"))
    assert text.startswith("/ro/out: Permission denied: ") and "permissions" in text
    assert os_error_text(OSError(errno.ENOSPC, "No space left on device")).endswith("run again")
    assert os_error_text(FileNotFoundError("x.csv: no such file")) == "x.csv: no such file"


def test_a_missing_store_object_is_a_damaged_workspace_exit_1(demo_root, tmp_path):
    store = demo_root / ".datatool" / "store"
    first = sorted(p for p in store.rglob("*.png"))[0]
    first.unlink()
    assert _run(demo_root, "rater", "add", "AN1").exit_code == 0
    res = _run(demo_root, "export", "itksnap", "--rater", "AN1", "--out", str(tmp_path / "x"))
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "workspace is damaged" in line and "is missing" in line and "backup" in line
    # a missing input path the user typed stays a usage error
    assert _run(demo_root, "ingest", str(tmp_path / "nothing")).exit_code == 2


def test_exports_onto_a_file_or_into_a_read_only_folder_are_one_line(demo_root, tmp_path, cli_env):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert _run(demo_root, "rater", "add", "AN1").exit_code == 0
    res = _run(demo_root, "export", "itksnap", "--rater", "AN1", "--out", str(blocker / "sub"))
    assert res.exit_code == 1 and str(blocker) in _one_error_line(res)
    res = _run(demo_root, "status", "--csv", str(blocker / "status.csv"))
    assert res.exit_code == 1 and "error: --csv" in res.stderr and "Traceback" not in res.output
    init = runner.invoke(app, ["init", str(blocker)])
    assert init.exit_code == 2 and "is a file, not a folder" in _one_error_line(init)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    cmd = [sys.executable, "-m", "datatool", "export", "itksnap", "--rater", "AN1"]
    cmd += ["--out", str(readonly / "out"), "--workspace", str(demo_root)]
    res = subprocess.run(without_dac_override(cmd), capture_output=True, text=True, env=cli_env)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Permission denied" in lines[0] and "permissions" in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["images", "--limit", str(2**70)],
        ["agreement", "--sample", str(MAX_INT + 1)],
        ["agreement", "--seed", "-1"],
        ["split", "create", "s", "--seed", str(2**70)],
        ["split", "create", "s", "--ratios", "nan:1:1"],
        ["split", "create", "s", "--ratios", "inf:1:1"],
        ["split", "create", "s", "--ratios", "6:2:-inf"],
        ["split", "create", "s", "--folds", "50"],  # 6 patients, 2 or so outside test
        ["rater", "add", "consensus:staple"],
        ["rater", "add", "Model:1"],
        ["labelstudio", "push", "--rater", "x", "--project-id", str(2**40)],
    ],
)
def test_nonsense_options_are_usage_errors(demo_root, args):
    res = _run(demo_root, *args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output and not isinstance(res.exception, OverflowError)
    with open_workspace(demo_root).session() as s:
        from sqlalchemy import text

        assert s.execute(text("select count(*) from splits")).scalar() == 0


def test_a_key_file_that_is_a_folder_or_not_hex_is_one_line(demo_root, tmp_path, monkeypatch):
    folder = tmp_path / "keydir"
    folder.mkdir()
    monkeypatch.setenv("DATATOOL_KEY_FILE", str(folder))
    res = _run(demo_root, "status")
    assert res.exit_code == 1 and "is a folder" in _one_error_line(res)
    notkey = tmp_path / "not.key"
    notkey.write_text("zz not hex zz")
    os.chmod(notkey, 0o600)
    monkeypatch.setenv("DATATOOL_KEY_FILE", str(notkey))
    res = _run(demo_root, "status")
    assert res.exit_code == 1 and "hexadecimal" in _one_error_line(res)
    assert "zz" not in res.stderr


# --------------------------------------------------------------------------- user text


def test_user_text_is_printed_as_text_markup_emoji_and_control_characters(demo_root, tmp_path):
    for name in ("[red]x", ":skull:", "[bold]b"):
        assert _run(demo_root, "rater", "add", name).exit_code == 0
    listed = _run(demo_root, "rater", "list")
    assert "[red]x" in listed.stdout and ":skull:" in listed.stdout and "💀" not in listed.stdout
    assert "[bold]b" in listed.stdout
    added = _run(demo_root, "rater", "add", "[red]x")
    assert added.stdout.strip() == "Already registered: rater [red]x"
    unknown = _run(demo_root, "labels", "--rater", ":skull:[red]y")
    assert ":skull:[red]y" in unknown.stderr and "💀" not in unknown.stderr
    # a file name holding a newline, markup and an emoji code stays on its one line
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\nname [red]z :skull:.dcm").write_bytes(b"junk" * 50)
    res = _run(demo_root, "ingest", str(folder), "-j", "0")
    assert res.exit_code == 1
    lines = [line for line in res.stderr.splitlines() if "bad" in line]
    assert len(lines) == 1, res.stderr
    assert "bad\\nname [red]z :skull:.dcm" in lines[0] and "💀" not in lines[0]
    as_json = _run(demo_root, "ingest", str(folder), "-j", "0", "--json")
    assert json.loads(as_json.stdout)["rejected"][0]["file"].endswith(
        "bad\nname [red]z :skull:.dcm"
    )


def test_a_rater_name_with_a_control_character_is_refused(demo_root):
    res = _run(demo_root, "rater", "add", "a\x1b[31mb")
    assert res.exit_code == 2 and "\x1b" not in res.stderr


def test_a_workspace_path_with_a_newline_stays_on_its_line(tmp_path):
    res = runner.invoke(app, ["init", str(tmp_path / "a\nb [red]c :skull:")])
    assert res.exit_code == 0
    created = [line for line in res.stdout.splitlines() if line.startswith("Created")]
    assert len(created) == 1 and "a\\nb [red]c :skull:" in created[0]
