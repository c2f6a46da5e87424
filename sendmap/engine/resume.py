"""Chunk-level resume of the block stages (ingest, profiles) after a run was killed.

A block stage writes each block's chunk files directly (:func:`sendmap.engine.store.write_region_direct`, a temporary
name renamed into place, so a chunk file is either whole or absent). As blocks finish, the stage records them
here together with its running reductions (sums, maxima, per-position maps): one small file per stage,
``<output.dir>/.sendmap-resume/<stage>.rec``, replaced atomically after every finished block. The record carries the
stage's cache key and its block plan (shapes, chunks, blocks). The next run of that stage with the same key
and plan skips the recorded blocks and starts from the recorded reductions; with any other key or plan (or
``--force``) the record is discarded and the stage starts over. The stage still counts as done only once its
entry in the store's ``stages`` attribute is written, after all its arrays; the record is then deleted.

Records are written at most every :data:`RECORD_INTERVAL_S`; a block whose chunks were written but that was
not yet recorded when the run died is simply written again (same bytes). Nothing is fsync'ed: a killed process loses nothing the kernel has accepted; a power cut may
(zarr itself does not fsync either).

Fault injection for tests: ``SENDMAP_KILL_AFTER_BLOCKS=<stage>:<n>`` makes the process SIGKILL itself right
after a record of that stage holding n or more blocks is written (with ``SENDMAP_RESUME_INTERVAL_S=0``: after
the n-th block).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

RESUME_DIR = ".sendmap-resume"

KILL_ENV = "SENDMAP_KILL_AFTER_BLOCKS"

RECORD_INTERVAL_S = 0.25
"""Least time between two writes of a record. A write costs ≈ 1-3 ms (2 MB of reductions for a 256² detector)
and ingest finishes a 32 MB block every ≈ 40 ms: writing after every block would add ≈ 5 % to it. After a
kill, at most this much time's worth of finished blocks is written again."""

INTERVAL_ENV = "SENDMAP_RESUME_INTERVAL_S"
"""Overrides :data:`RECORD_INTERVAL_S` (tests set 0: a record after every block)."""


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
        self.path = Path(out_dir) / RESUME_DIR / f"{stage}.rec"
        self.meta = {"stage": stage, "key": key, "plan": json.loads(_jsonable_plan(plan))}
        self.done: set[tuple] = set()
        self.arrays: dict[str, np.ndarray] = {}
        self.n_recorded = 0
        self.resumed = False
        self.interval = float(os.environ.get(INTERVAL_ENV, RECORD_INTERVAL_S))
        self._last = -float("inf")
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
            meta, arrays = _read(self.path)
            if meta.get("stage") != self.meta["stage"] or meta.get("key") != self.meta["key"] \
                    or meta.get("plan") != self.meta["plan"]:
                raise ValueError("another key or plan")
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
    def record(self, blocks, arrays: dict[str, np.ndarray], force: bool = False) -> None:
        """Mark ``blocks`` finished (their chunk files are written) and save ``arrays`` (the reductions
        including those blocks) with them, atomically: at once the first time, then at most every
        :data:`RECORD_INTERVAL_S` (unless ``force``); blocks finished in between are saved with the next."""
        with self._lock:
            for b in blocks:
                self.done.add(tuple(int(v) for v in b))
            now = time.monotonic()
            if not force and now - self._last < self.interval:
                return
            self._last = now
            meta = dict(self.meta, done=sorted(self.done), updated=time.time())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            try:
                _write(tmp, meta, arrays)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, self.path)
            self.n_recorded = len(self.done)
            _maybe_kill(self.stage, self.n_recorded)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # only when empty
        except OSError:
            pass


MAGIC = b"SENDMAP-RESUME-1\n"


def _write(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """One file: a magic line, the length of a JSON header (meta and each array's dtype, shape, byte offset),
    the header, then the arrays' bytes as they are in memory (no archive, no checksum, no copy: ≈ 1 ms for the
    2 MB of a 256² ingest's reductions)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    table, offset = {}, 0
    for k, v in arrays.items():
        table[k] = {"dtype": v.dtype.str, "shape": list(v.shape), "offset": offset}
        offset += v.nbytes
    head = json.dumps({"meta": meta, "arrays": table}).encode()
    with open(path, "wb") as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        for v in arrays.values():
            f.write(memoryview(v).cast("B") if v.nbytes else b"")


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    raw = Path(path).read_bytes()
    if not raw.startswith(MAGIC):
        raise ValueError(f"{path} is not a sendmap resume record")
    n = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    head = json.loads(raw[start:start + n])
    body = start + n
    arrays = {}
    for k, a in head["arrays"].items():
        dt = np.dtype(a["dtype"])
        count = int(np.prod(a["shape"], dtype=np.int64))
        end = body + a["offset"] + count * dt.itemsize
        if end > len(raw):
            raise ValueError(f"{path} is truncated")
        arrays[k] = np.frombuffer(raw, dt, count, body + a["offset"]).reshape(a["shape"]).copy()
    return head["meta"], arrays


def _maybe_kill(stage: str, n: int) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name == stage and count.isdigit() and n >= int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def clear_resume_record(out_dir: Path, stage: str) -> None:
    """Delete a stage's resume record (the stage is complete)."""
    p = Path(out_dir) / RESUME_DIR / f"{stage}.rec"
    p.unlink(missing_ok=True)
    try:
        p.parent.rmdir()
    except OSError:
        pass


def read_record(out_dir: Path, stage: str) -> dict | None:
    """The metadata of a stage's resume record (key, plan, done blocks), or None (for ``sendmap info``, tests)."""
    try:
        return _read(Path(out_dir) / RESUME_DIR / f"{stage}.rec")[0]
    except (OSError, KeyError, ValueError):
        return None
