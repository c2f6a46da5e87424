"""The output folder's lock: one sendmap run writes to an output folder at a time.

An advisory POSIX record lock (``fcntl.lockf``) on ``<output.dir>/.sendmap.lock``, held by the running process
for the whole run. The kernel releases it when that process ends, however it ends (SIGKILL, out of memory, a
crash), and a killed run that stays a zombie (a container whose PID 1 does not reap children) holds nothing:
so a lock is never stale, and no pid has to be trusted. The file's text (pid and host of the holder) only
names the other run in the refusal message; the file itself is left in place (deleting it while another process
waits on it would let two runs hold locks on two different files).

POSIX record locks belong to a process, not to an open file: children forked by the run (dask process workers)
do not inherit them, and they are not released while the run lives. Within one process a second lock of the
same folder is refused by :data:`_HELD`.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from ..errors import SendmapInputError

LOCK_NAME = ".sendmap.lock"

class OutputBusyError(SendmapInputError):
    """Another sendmap run is writing to the output folder (its lock is held)."""


_HELD: set[str] = set()
"""Folders this process holds a lock on (POSIX locks do not conflict within one process)."""


class OutputLock:
    """``with OutputLock(out_dir):`` holds the output folder's lock, or raises :class:`SendmapInputError` naming
    the pid and host of the run that holds it.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with OutputLock(d):
    ...     try:
    ...         OutputLock(d).__enter__()
    ...     except SendmapInputError as e:
    ...         print("refused")
    refused
    """

    def __init__(self, out_dir: Path | str):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self):
        key = str(self.path.resolve())
        if key in _HELD:
            raise OutputBusyError(f"another sendmap run (pid {os.getpid()}, this process) is writing to "
                                    f"{self.path.parent}; wait for it to finish or use another output.dir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise SendmapInputError(f"cannot lock the output folder {self.path.parent} ({exc.strerror}); "
                                        f"use another output.dir") from None
            raise OutputBusyError(f"another sendmap run ({holder}) is writing to {self.path.parent}; wait for it "
                                    f"to finish or use another output.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}".encode(), 0)
        self._fd = fd
        _HELD.add(key)
        self._key = key
        return self

    def held_by_other(self) -> bool:
        """Another process (a live run) holds this folder's lock. Never releases a lock this process holds
        (closing any descriptor of the file would: POSIX record locks), so that case is answered from
        :data:`_HELD`."""
        if not self.path.is_file() or str(self.path.resolve()) in _HELD:
            return False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # (releases the probe's lock, if it got one)
        return False

    def __exit__(self, *exc):
        if self._fd is not None:
            _HELD.discard(self._key)
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # releases the lock
            self._fd = None


def _read_holder(fd: int) -> str:
    """'pid N on host H' from the lock file's text (best effort: the holder may not have written it yet)."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, host = text.partition(" ")
    if not pid:
        return "pid unknown"
    return f"pid {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")
