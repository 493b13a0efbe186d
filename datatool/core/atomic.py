"""Atomic file writes: a temp file in the target's folder, then ``os.replace``. Readers see
the old file or the new one, never half of one; a killed writer leaves at most a hidden
``.NAME.*`` temp file beside the target."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_counter = itertools.count()
# A workspace's own folders and files, whatever the umask: no one but the owner (and the
# group, to read) can see pseudonymised data, and no one else can change it.
PRIVATE_DIR = 0o750
PRIVATE_FILE = 0o640


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``x.nii.gz``, else the last suffix: what writers pick a format by."""
    name = path.name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return path.name[-len(double) :]
    return path.suffix


@contextmanager
def atomic_path(path: Path, make_parents: bool = True) -> Iterator[Path]:
    """Yields a temp path beside ``path`` with the same suffix (for writers that only take a
    path, such as SimpleITK); it replaces ``path`` when the block ends without error. The
    name is unique to this process, thread and call, so concurrent writers never share one."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(
        f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_counter)}{full_suffix(path)}"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(
    path: Path, data: bytes, mode: int | None = None, make_parents: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically; ``mode`` is set whatever the umask says."""
    with atomic_path(path, make_parents) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)


def make_private_dirs(path: Path, mode: int = PRIVATE_DIR) -> None:
    """Make the folder ``path`` and its missing parents with ``mode``, whatever the umask
    (folders that exist already are left as they are)."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:  # made meanwhile by another process: theirs, as it is
            continue
        os.chmod(folder, mode)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)
