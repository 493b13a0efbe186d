"""make labelstudio-demo's plan: a server per rater (port, data folder, login, token), the
lines to paste, and the memory a server's process group holds."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from datatool.core.workspace import init_workspace
from datatool.demo.labelstudio import demo_token, exports, main, plan_servers, tree_rss_bytes
from tests.ci import unavailable
from tests.labelstudio_server import _free_port, ls_venv


def test_each_rater_gets_a_server_of_their_own(tmp_path):
    a, b = plan_servers(["rater1", "rater2"], 8080, tmp_path, "pw", "secret")
    assert (a.url, b.url) == ("http://127.0.0.1:8080", "http://127.0.0.1:8081")
    assert (a.data_dir, b.data_dir) == (
        tmp_path / "labelstudio-data-rater1", tmp_path / "labelstudio-data-rater2")  # fmt: skip
    assert (a.log.name, b.user) == ("labelstudio-rater1.log", "rater2@datatool.local")
    assert a.token != b.token and len(a.token) == 40 and int(a.token, 16) >= 0
    assert demo_token("secret", "rater1") == a.token  # the same on every run (same data folder)
    assert exports(b, Path("/files")) == [
        f"export LABEL_STUDIO_API_KEY_RATER2={b.token}",
        "export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/files",
    ]


def test_the_memory_of_a_process_group_counts_its_children():
    code = "import subprocess, time; p = subprocess.Popen(['sleep', '30']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        for _ in range(50):  # until the child is there
            children = subprocess.run(["pgrep", "-g", str(parent.pid)], capture_output=True,
                                      text=True).stdout.split()  # fmt: skip
            if len(children) == 2:
                break
            subprocess.run(["sleep", "0.1"])
        alone = int(Path(f"/proc/{parent.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        assert tree_rss_bytes(parent.pid) > alone * 1024
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the sleep too
        parent.wait()


def test_without_a_demo_workspace_it_says_what_to_run(tmp_path, capsys):
    assert main(["--lsvenv", str(tmp_path), "--demo", str(tmp_path)]) == 2
    assert "run 'make demo' first" in capsys.readouterr().err


def _running_with(text: str) -> list[int]:
    """Processes whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ctrl_c_in_a_terminal_stops_the_servers_and_exits_0(tmp_path):
    """The demo in a real terminal (a pty), interrupted by Ctrl-C while its real Label Studio
    servers start: it says so, every server it started is gone, and the exit status is 0."""
    exe = ls_venv() / "bin" / "label-studio"
    if not exe.exists():
        unavailable(f"the Label Studio server is not installed ({exe} is missing)")
    init_workspace(tmp_path / "workspace")
    port = _free_port()
    cmd = [sys.executable, "-m", "datatool.demo.labelstudio", "--lsvenv", str(ls_venv()),
           "--demo", str(tmp_path), "--raters", "a", "b", "--port", str(port)]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo, with the pty as its terminal
        os.execv(sys.executable, cmd)
    out = b""
    deadline = time.monotonic() + 120
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"starting 2 Label Studio servers" in out:
            time.sleep(3)  # both servers are starting
            assert len(_running_with(str(tmp_path / "labelstudio-data-"))) >= 2
            os.write(fd, b"\x03")  # the terminal's Ctrl-C
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert sent, out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")
    assert b"stopping the Label Studio servers" in out and b"Traceback" not in out
    assert _running_with(str(tmp_path / "labelstudio-data-")) == []
