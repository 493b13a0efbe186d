"""What a command loads before it runs: the CLI's modules and the catalogue reads of status
and images leave pydicom unloaded (about half a second and 30 MB at every start)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["datatool.cli", "datatool.ingest.inventory", "datatool.ingest.deid"],
)
def test_pydicom_loads_only_when_used(module):
    code = f"import sys, {module}; print('pydicom' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_uid_replacement_still_works():
    from datatool.ingest.deid import uid_for

    first = uid_for(b"k" * 32, "1.2.3.4")
    assert first == uid_for(b"k" * 32, "1.2.3.4")
    assert first != uid_for(b"j" * 32, "1.2.3.4")
    assert first.startswith("1.2.826.0.1.3680043.8.498.")  # pydicom's root, as before


def test_status_counts_the_spool_without_loading_pydicom(tmp_path):
    """``status`` counts what waits in the listener's spool (an acknowledged object, and a
    temporary file being written that is not counted) without the spool's ingest module,
    which brings pydicom."""
    from datatool.core.workspace import init_workspace
    from datatool.ingest.spoolfolders import SpoolFolders

    ws = init_workspace(tmp_path / "ws").root
    code = (
        "import sys\n"
        "from datatool.core.workspace import open_workspace\n"
        "from datatool.ingest.inventory import status\n"
        f"print(status(open_workspace({str(ws)!r})).spooled, 'pydicom' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]
    from datatool.core.workspace import open_workspace

    incoming = SpoolFolders(open_workspace(ws)).incoming
    incoming.mkdir(parents=True)
    (incoming / "a.dcm").write_bytes(b"x")
    (incoming / ".a.dcm.tmp").write_bytes(b"x")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["1", "False"], done.stderr
