"""Chunk-level resume of the block stages (ingest, profiles) after a run was killed.

A block stage writes each block's chunk files directly (:func:`sendmap.store.write_region_direct`, a temporary
name renamed into place, so a chunk file is either whole or absent). As blocks finish, the stage records them
here together with its running reductions (sums, maxima, per-position maps): one small ``.npz`` per stage in
``<output.dir>/.sendmap-resume/``, replaced atomically after every finished block. The record carries the
stage's cache key and its block plan (shapes, chunks, blocks). The next run of that stage with the same key
and plan skips the recorded blocks and starts from the recorded reductions; with any other key or plan (or
``--force``) the record is discarded and the stage starts over. The stage still counts as done only once its
entry in the store's ``stages`` attribute is written, after all its arrays; the record is then deleted.

A block whose chunks were written but that was not yet recorded when the run died is simply written again
(same bytes). Nothing is fsync'ed: a killed process loses nothing the kernel has accepted; a power cut may
(zarr itself does not fsync either).

Fault injection for tests: ``SENDMAP_KILL_AFTER_BLOCKS=<stage>:<n>`` makes the process SIGKILL itself right
after the n-th block of that stage is recorded.
"""
from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

RESUME_DIR = ".sendmap-resume"

KILL_ENV = "SENDMAP_KILL_AFTER_BLOCKS"


def _jsonable_plan(plan: dict) -> str:
    return json.dumps(plan, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


class BlockProgress:
    """The finished blocks of one stage run and its running reductions, kept across a killed run.

    ``BlockProgress(out_dir, stage, key, plan, enabled)``: loads the record left by an earlier run of the same
    stage when its key and plan match (and ``enabled``), else removes it. ``done``: set of finished blocks
    (tuples); ``arrays``: the reductions saved with them (empty on a fresh start). ``record(blocks, arrays)``
    adds blocks and replaces the saved reductions; ``clear()`` deletes the record (stage complete).
    """

    def __init__(self, out_dir: Path, stage: str, key: str | None, plan: dict, enabled: bool = True):
        self.stage = stage
        self.path = Path(out_dir) / RESUME_DIR / f"{stage}.npz"
        self.meta = {"stage": stage, "key": key, "plan": json.loads(_jsonable_plan(plan))}
        self.done: set[tuple] = set()
        self.arrays: dict[str, np.ndarray] = {}
        self.n_recorded = 0
        self.resumed = False
        self._lock = threading.Lock()
        if enabled and key is not None:
            self._load()
        else:
            self.clear()
        self.resumed = bool(self.done)
        """True where this run continues a killed one (fixed at the start; ``done`` grows as blocks finish)."""

    # ----------------------------------------------------------------------------------------------- reading
    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                if meta.get("stage") != self.meta["stage"] or meta.get("key") != self.meta["key"] \
                        or meta.get("plan") != self.meta["plan"]:
                    raise ValueError("another key or plan")
                arrays = {k: np.array(z[k]) for k in z.files if k != "__meta__"}
        except FileNotFoundError:
            return
        except Exception:  # another key/plan, or unreadable: start over
            self.clear()
            return
        self.done = {tuple(b) for b in meta.get("done", [])}
        self.arrays = arrays

    def is_done(self, block) -> bool:
        return tuple(int(v) for v in block) in self.done

    # ----------------------------------------------------------------------------------------------- writing
    def record(self, blocks, arrays: dict[str, np.ndarray]) -> None:
        """Mark ``blocks`` finished (their chunk files are written) and save ``arrays`` (the reductions
        including those blocks) with them, atomically."""
        with self._lock:
            for b in blocks:
                self.done.add(tuple(int(v) for v in b))
            meta = dict(self.meta, done=sorted(self.done), updated=time.time())
            buf = io.BytesIO()
            np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            try:
                tmp.write_bytes(buf.getbuffer())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, self.path)
            self.n_recorded += len(blocks)
            _maybe_kill(self.stage, self.n_recorded)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # only when empty
        except OSError:
            pass


def _maybe_kill(stage: str, n: int) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name == stage and count.isdigit() and n >= int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def clear_resume_record(out_dir: Path, stage: str) -> None:
    """Delete a stage's resume record (the stage is complete)."""
    p = Path(out_dir) / RESUME_DIR / f"{stage}.npz"
    p.unlink(missing_ok=True)
    try:
        p.parent.rmdir()
    except OSError:
        pass


def read_record(out_dir: Path, stage: str) -> dict | None:
    """The metadata of a stage's resume record (key, plan, done blocks), or None (for ``sendmap info``, tests)."""
    try:
        with np.load(Path(out_dir) / RESUME_DIR / f"{stage}.npz", allow_pickle=False) as z:
            return json.loads(str(z["__meta__"]))
    except (OSError, KeyError, ValueError):
        return None
