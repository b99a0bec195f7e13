"""What protects a run directory while the pipeline writes into it: one writer at a time, SIGTERM handled like
Ctrl-C, and operating-system failures (a full disk, a read-only folder) told in one line naming the path.

:func:`corelib.runs.pipeline.run` holds :func:`run_lock` and :func:`sigterm_as_interrupt` for the whole run;
``python -m corelib`` prints :func:`describe_os_error` for an ``OSError`` instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

#: The lock file in a run directory; its content (pid, start time, command) only informs the message of a
#: second writer: the lock itself is the ``flock`` held on it, released by the kernel when its holder dies.
LOCK_NAME = ".corelib-run.lock"

#: Exit status of a process ended by SIGTERM (128 + 15), as the shell reports it.
SIGTERM_EXIT = 128 + signal.SIGTERM


class RunDirError(ValueError):
    """The run directory cannot be used: another run holds it, or it cannot be written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a job scheduler's or ``kill``'s stop): handled as Ctrl-C, exit status 143."""

    exit_code = SIGTERM_EXIT


@contextlib.contextmanager
def run_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory ``root`` for this process; a second run on it stops at once.

    Raises
    ------
    RunDirError
        Another process holds it (named by its pid and start), or the folder cannot be written.
    """
    import fcntl

    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunDirError(describe_os_error(err)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, started, command = [*os.pread(fd, 4096, 0).decode(errors="replace").split("\n"), "", ""][:3]
            raise RunDirError(
                f"run directory {root} is in use by pid {pid or '?'} (since {started or '?'}: {command or '?'}). "
                "Wait for it to finish or stop it, or give this run another run_name / run_dir."
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.pwrite(fd, f"{os.getpid()}\n{started}\n{' '.join(sys.argv)}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new holder)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``) while the block runs, so that a killed
    pipeline records its attempt and shuts its kernel down as Ctrl-C does. Outside the main thread (where
    Python cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_writable(root: str | os.PathLike) -> None:
    """Raise :class:`RunDirError` when the run directory ``root`` (existing) cannot be written."""
    if not os.access(root, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_mount(root) else errno.EACCES
        raise RunDirError(describe_os_error(OSError(code, os.strerror(code), str(root))))


def _read_only_mount(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system failure, naming the path and what to do."""
    where = err.filename or "the run directory"
    if err.errno == errno.ENOSPC:
        return (
            f"no space left on device: {where}. Free space there, or set run_dir to a folder on another disk; "
            "finished steps are kept and reused."
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot write to {where} ({err.strerror}): the run directory must be writable. Set run_dir "
            "(or run_name) to a folder you can write to, or fix its permissions."
        )
    return f"{err.strerror or err}: {where}"
