"""Atomic writes: a file appears complete or not at all (temporary file, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Name of a temporary file of :func:`atomic_path`: ``.<final name>.<writer pid>-<random>.tmp<suffix>``.
TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.[^.]+)?$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path`` and rename it onto ``path`` only if the block succeeds.

    Parameters
    ----------
    path
        Final destination. Parent folders are created.
    mode
        ``"w"`` (text) or ``"wb"`` (binary).

    Yields
    ------
    The open temporary file; the final file gets the permissions of a plain ``open`` (``0o666`` less the
    umask), and its data reach the disk (fsync) before the rename.
    """
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for writers that want a file name (``AnnData.write_h5ad``, ``np.savez``).

    The temporary file (see :data:`TEMP_NAME`) keeps ``path``'s suffix so that libraries choosing a format
    by suffix behave. When the block succeeds the file gets the permissions of a plain ``open`` (``0o666``
    less the umask; safetensors, for one, writes ``0o600``), is flushed to disk (fsync) and renamed onto
    ``path``; when the block fails it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what open() gives under the current umask
    try:
        yield tmp
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers left under ``root``.

    A temporary file of :func:`atomic_path` carries its writer's process id (:data:`TEMP_NAME`); it is
    stale when no process with that id runs on this machine. A file of a live writer (another notebook or
    pipeline writing into the same run directory) is left alone.

    Returns
    -------
    The files removed.
    """
    stale = [
        p
        for p in Path(root).rglob(".*.tmp*")
        if (m := TEMP_NAME.match(p.name)) and p.is_file() and not _process_exists(int(m["pid"]))
    ]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def _process_exists(pid: int) -> bool:
    """Whether a process with this id runs here (POSIX signal 0 only checks; elsewhere assume it does)."""
    if os.name != "posix":
        return True  # os.kill would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True
