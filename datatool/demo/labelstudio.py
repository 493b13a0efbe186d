"""``make labelstudio-demo``: one Label Studio server per demo rater, each holding only that
rater's project (truly blind: Label Studio Community lets any login list every project of its
server), run 1's drafts pushed, datatool's ML backend connected to each project.

Run as ``python -m datatool.demo.labelstudio`` (the Makefile does). Each server has its own
data folder (``demo/labelstudio-data-RATER``), port (``--port`` + the rater's position), login
(``RATER@datatool.local``) and token, and its log (``demo/labelstudio-RATER.log``); the backend's
request log goes to ``demo/backend.log``. The servers and the backend run in sessions of their
own, so the terminal's Ctrl-C reaches only this process: it stops them (SIGTERM to each
process group), waits, and exits 0. Where the terminal is ours, this process also takes the
terminal's foreground, so that ``make`` does not see the Ctrl-C either (and says nothing).

The tokens are fixed per rater for this local demo (127.0.0.1 only): never on a shared server.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from datatool.labels.labelstudio.connection import rater_token_env

OFFLINE_ENV = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    # loopback ML backends and webhooks: this demo's backend is on 127.0.0.1
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
}
START_TIMEOUT_S = 300


@dataclass(frozen=True)
class RaterServer:
    """One demo rater's own Label Studio server."""

    rater: str
    port: int
    data_dir: Path
    log: Path
    user: str
    password: str
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def demo_token(secret: str, rater: str) -> str:
    """The rater's fixed demo token: 40 hex digits from the demo's secret and the name."""
    return hashlib.sha1(f"{secret}:{rater}".encode()).hexdigest()


def plan_servers(
    raters: list[str], first_port: int, demo: Path, password: str, secret: str
) -> list[RaterServer]:
    """A server per rater: ports ``first_port``, ``first_port + 1``, ... in the raters' order."""
    return [
        RaterServer(
            rater=r,
            port=first_port + k,
            data_dir=demo / f"labelstudio-data-{r}",
            log=demo / f"labelstudio-{r}.log",
            user=f"{r}@datatool.local",
            password=password,
            token=demo_token(secret, r),
        )
        for k, r in enumerate(raters)
    ]


def exports(server: RaterServer, files_root: Path) -> list[str]:
    """The lines a person pastes into a shell to run datatool for this rater."""
    return [
        f"export {rater_token_env(server.rater)}={server.token}",
        f"export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={files_root}",
    ]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and every process in its process group (Linux /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(entry.name) != pid and int(fields[2]) != pid:  # fields[2]: the pgrp
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def server_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process's group (a session of its own), then SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


@contextmanager
def foreground() -> Iterator[None]:
    """Take the terminal's foreground for this process's own group, so the terminal's Ctrl-C
    reaches this process only (not ``make``); given back on leaving. Nothing without a
    terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield
        return
    try:
        before = os.tcgetpgrp(fd)
        ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may then set
        try:
            os.setpgid(0, 0)
            os.tcsetpgrp(fd, os.getpgrp())
        except OSError:
            before = -1
        try:
            yield
        finally:
            if before >= 0:
                with suppress(OSError):
                    os.tcsetpgrp(fd, before)
            signal.signal(signal.SIGTTOU, ttou)
    finally:
        os.close(fd)


class Stopping(Exception):
    """Ctrl-C (SIGINT) or SIGTERM arrived."""


def _on_signal(signum, frame) -> None:
    raise Stopping


def _start_server(exe: Path, s: RaterServer, files_root: Path) -> subprocess.Popen:
    s.data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env |= OFFLINE_ENV | {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root)}
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(s.port),
           "--data-dir", str(s.data_dir), "--username", s.user, f"--password={s.password}",
           "--user-token", s.token, "--enable-legacy-api-token"]  # fmt: skip
    with open(s.log, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _wait_healthy(url: str, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: {what} stopped (exit code {proc.returncode}): see {log}")
        if server_healthy(url):
            return
        time.sleep(1)
    raise SystemExit(f"error: {what} did not answer within {START_TIMEOUT_S} s: see {log}")


def _datatool(args: list[str], workspace: Path, env: dict[str, str]) -> None:
    print(f"$ datatool {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "datatool", *args], cwd=workspace, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: 'datatool {' '.join(args)}' failed (exit {done.returncode})")


def run_demo(args: argparse.Namespace) -> int:
    demo = Path(args.demo).resolve()
    workspace = demo / "workspace"
    files_root = demo / "labelstudio-files"
    files_root.mkdir(parents=True, exist_ok=True)
    exe = Path(args.lsvenv).resolve() / "bin" / "label-studio"
    servers = plan_servers(args.raters, args.port, demo, args.password, args.secret)
    started: list[subprocess.Popen] = []
    try:
        print(f"starting {len(servers)} Label Studio servers, one per rater (about a minute)...")
        for s in servers:  # each one kept as it starts: a Ctrl-C now stops those started
            started.append(_start_server(exe, s, files_root))
        procs = list(started)
        for s, proc in zip(servers, procs):
            _wait_healthy(s.url, proc, f"rater {s.rater}'s Label Studio server", s.log)
        rss = [tree_rss_bytes(p.pid) for p in procs]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
        env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(files_root)
        env |= {rater_token_env(s.rater): s.token for s in servers}
        for s in servers:  # each rater's project on their own server, which the catalogue keeps
            _datatool(["labelstudio", "push", "--rater", s.rater, "--url", s.url, "--move-server"],
                      workspace, env)  # fmt: skip
            _datatool(["prelabel", "1", "--rater", s.rater], workspace, env)
        backend_log = demo / "backend.log"
        backend_url = f"http://127.0.0.1:{args.backend_port}"
        with open(backend_log, "ab") as log:
            backend = subprocess.Popen(
                [sys.executable, "-m", "datatool", "serve", "1", "--port", str(args.backend_port)],
                cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        started.append(backend)
        _wait_healthy(backend_url, backend, "the ML backend", backend_log)
        for s in servers:
            _datatool(["labelstudio", "connect", "--rater", s.rater, "--backend-url", backend_url],
                      workspace, env)  # fmt: skip
        print()
        for s, used in zip(servers, rss):
            print(f"rater {s.rater}: {s.url}  (log in as {s.user} / {s.password}; "
                  f"server memory {used / 2**20:.0f} MiB RSS; log {s.log})")  # fmt: skip
            for line in exports(s, files_root):
                print(f"  {line}")
        print(f"datatool for any rater, in another shell: cd {workspace}; the rater's server is "
              "recorded, so no --url is needed")  # fmt: skip
        print(f"the ML backend's request log: {backend_log}")
        print("each rater sees only their own project, with run 1's drafts; Ctrl-C stops "
              "the servers and the backend.", flush=True)  # fmt: skip
        while all(p.poll() is None for p in started):
            time.sleep(1)
        gone = [p for p in started if p.poll() is not None]
        print(f"error: a server or the backend stopped by itself (exit {gone[0].returncode}): "
              f"see the logs in {demo}", file=sys.stderr)  # fmt: skip
        return 1
    except Stopping:
        print("\nstopping the Label Studio servers and the ML backend...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut it short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in started:
            stop_process_group(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lsvenv", required=True, help="the Label Studio environment")
    parser.add_argument("--demo", default="demo", help="the demo folder (with workspace/)")
    parser.add_argument("--raters", nargs="+", default=["rater1", "rater2"])
    parser.add_argument("--port", type=int, default=8080, help="the first rater's port")
    parser.add_argument("--backend-port", type=int, default=9090)
    parser.add_argument("--password", default="datatool-demo")
    parser.add_argument("--secret", default="datatool-demo", help="the demo tokens come from it")
    args = parser.parse_args(argv)
    if not (Path(args.demo) / "workspace" / ".datatool").is_dir():
        print("error: no demo workspace: run 'make demo' first", file=sys.stderr)
        return 2
    if not (Path(args.lsvenv) / "bin" / "label-studio").exists():
        print(f"error: no Label Studio in {args.lsvenv}: run 'make labelstudio'", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with foreground():
        try:
            return run_demo(args)
        except Stopping:
            return 0


if __name__ == "__main__":
    sys.exit(main())
