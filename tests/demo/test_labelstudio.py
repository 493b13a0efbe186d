"""make labelstudio-demo's plan: a server per rater (port, data folder, login, token), the
lines to paste, and the memory a server's process group holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from datatool.demo.labelstudio import demo_token, exports, main, plan_servers, tree_rss_bytes


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
