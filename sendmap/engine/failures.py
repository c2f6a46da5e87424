"""What a failed run leaves behind and says: the ``error`` text, the store marked ``failed`` (nothing looks complete),
and write errors of the output folder turned into one paragraph (exit code 2).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import SendmapInputError
from .lock import OutputLock
from .store import STORE_NAME, now_iso, open_store, set_attrs


def failure_text(exc: BaseException) -> str:
    """What a failed run records as its ``error`` (store attrs; the CLI prints the same)."""
    from ..errors import Terminated

    if isinstance(exc, Terminated):
        return "stopped by SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, SystemExit):
        return f"stopped (exit code {exc.code})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, SendmapInputError) else text


def mark_failed(out_dir: Path, exc: BaseException) -> None:
    """After a failure at any point (before the run starts, in a stage, an interrupt): nothing in ``out_dir``
    may look complete. Removes ``summary.json`` and marks the result store (if there is one) ``status: failed``
    with ``error``; the finished stages' results stay and are reused by the next run. Leaves a folder that
    another live run holds (its lock) alone, and never creates anything. Best effort: never raises."""
    try:
        out_dir = Path(out_dir)
        if not out_dir.is_dir() or OutputLock(out_dir).held_by_other():
            return
        (out_dir / "summary.json").unlink(missing_ok=True)
        if (out_dir / STORE_NAME / "zarr.json").is_file():
            group = open_store(out_dir, mode="r+")
            set_attrs(group, status="failed", error=failure_text(exc), failed_at=now_iso(),
                      failed_stage=getattr(exc, "sendmap_stage", None))
    except Exception:  # noqa: BLE001 - a read-only or broken folder: the error being reported matters more
        pass


OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
"""Write errors that are the output folder's condition (not a bug): reported in one paragraph, exit code 2."""


def _is_output_error(exc: OSError, out_dir: Path) -> bool:
    """A full disk anywhere, or a permission/read-only error on a file of the output folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    if exc.errno not in OUTPUT_ERRNOS:
        return False
    name = getattr(exc, "filename", None)
    return name is None or os.path.abspath(str(name)).startswith(os.path.abspath(str(out_dir)))


def output_error(exc: OSError, out_dir: Path, stage: str | None):
    """A :class:`SendmapOutputError` for a write that failed: what, where, how much space is left, what to do."""
    from ..errors import SendmapOutputError

    import shutil

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    what = f"the {stage} stage's results" if stage else "the results"
    try:
        free = f"; {shutil.disk_usage(out_dir).free / 1e6:.0f} MB free there"
    except OSError:
        free = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = f"the disk is full{' (quota)' if exc.errno == errno.EDQUOT else ''}{free}"
        todo = "free some space or set output.dir to another disk, then run again"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
        todo = "set output.dir to a writable folder"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
        todo = "make it writable or set output.dir to a writable folder"
    else:
        why = exc.strerror or str(exc)
        todo = "set output.dir to a writable folder"
    resume = (": finished stages are reused and the finished blocks of ingest and profiles are not redone"
              if stage else "")
    return SendmapOutputError(f"cannot write {what} to the output folder {out_dir}: {why}{where}. "
                              f"Nothing there is marked complete; {todo}{resume}.")
