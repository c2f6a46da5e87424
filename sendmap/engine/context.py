"""What a stage is given and what it is: :class:`Context` (the config, the store, the log, the run's warnings) and
:class:`Stage` (a node of the stage graph, :data:`sendmap.pipeline.STAGES`); the resume record of a block stage;
Python warnings kept off the terminal while a stage runs.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..io import Dataset
from .store import STORE_NAME, set_attrs


@dataclass
class Context:
    cfg: Config
    out_dir: Path
    group: object  # zarr.Group
    dataset: Dataset | None
    input_info: dict
    log: Callable[[str], None] = print
    stage_key: str | None = None
    """Cache key of the stage being run (block stages key their resume record with it)."""
    resume: bool = True
    """Block stages may resume from the finished blocks of a killed run (False with ``--force``)."""
    stage_info: dict = field(default_factory=dict)
    """What the stage being run reports for its ``stages`` entry (block stages: ``blocks``, ``blocks_resumed``)."""
    figure_helpers: object = None
    """:class:`sendmap.report.build.FigureHelpers` started when classification starts, for the report."""
    stage: str | None = None
    """Name of the stage being run (recorded with its warnings)."""
    warnings: list = field(default_factory=list)
    """Run warnings so far, each {"stage", "code", "message"}: those of reused stages (from the store) and new ones."""
    _warn_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def warn(self, message: str, code: str) -> None:
        """Record a run warning: something the user must know about the results that is not an error (a peak
        at the window's edge, a dose too low for classes, a mask hiding most of the detector, ...).

        Logged at once as ``[sendmap] warning: MESSAGE``, kept in the store's root attrs ``warnings`` (so a
        reused stage's warnings stay with its results, and are dropped when the stage is recomputed) and copied
        into ``summary.json`` ``warnings``: a list of ``{"stage": ..., "code": ..., "message": ...}``.
        ``code``: a short stable snake_case name scripts and tests can match (e.g. ``"peak_at_window_edge"``);
        ``message``: one sentence naming what was found, what it means and the config key to change."""
        rec = {"stage": self.stage or "run", "code": str(code), "message": str(message)}
        with self._warn_lock:
            self.warnings.append(rec)
            if self.group is not None:
                set_attrs(self.group, warnings=self.warnings)
        self.log(f"[sendmap] warning: {message}")

    @property
    def store_path(self) -> str:
        return str(self.out_dir / STORE_NAME)


@dataclass(frozen=True)
class Stage:
    """One stage of :data:`STAGES`: ``run(ctx)`` reads its inputs from the store and writes its outputs there;
    ``sections``: the config sections in its cache key; ``revision``: raise it when a change of the code alters
    what the stage stores (arrays, their layout or meaning), so that stores written before the change are
    recomputed from this stage on, not reused (within one sendmap version, whose number is in the key too)."""

    name: str
    sections: tuple[str, ...]
    run: Callable[[Context], None]
    doc: str
    revision: int = 1
    key_sections: Callable[[Config, dict], dict] | None = None
    """Adjusts the stage's config sections for its cache key (adds what else decides its results, leaves out what
    does not, e.g. a path); None: the sections as they are."""


def block_progress(ctx: Context, stage: str, plan: dict, arrays: list[str]):
    """The resume record of a block stage (:mod:`sendmap.engine.resume`) whose blocks write ``arrays`` of the store: used
    when the stage key and ``plan`` match those of a killed run and its arrays are there (stray temporary chunk
    files removed), else discarded. Logs how many blocks are done."""
    from .resume import BlockProgress
    from .store import remove_stray_temps

    progress = BlockProgress(ctx.out_dir, stage, ctx.stage_key, plan, enabled=ctx.resume)
    if progress.resumed:
        if all(a in ctx.group for a in arrays):
            for a in arrays:
                remove_stray_temps(Path(ctx.store_path, a))
            ctx.log(f"[sendmap] {stage}: resuming, {len(progress.done)}/{len(plan['blocks'])} blocks done")
        else:
            progress.clear()
            progress.done, progress.arrays, progress.resumed = set(), {}, False
    return progress


@contextlib.contextmanager
def python_warnings_recorded(ctx: Context):
    """Python warnings shown while a stage runs (in any of its threads) are kept off the terminal.

    A numpy ``RuntimeWarning`` ("Mean of empty slice", "All-NaN slice", ...) or a matplotlib ``UserWarning`` means
    a case sendmap's code does not guard yet; the user can do nothing with it. They are counted per stage, by
    category, message and the line that raised them, in the store's attrs ``internal_warnings`` and in
    summary.json (``{stage: {"RuntimeWarning: Mean of empty slice (sendmap/science/stats.py:134)": 1}}``; with
    Python's default filters a warning is shown, so counted, once per line). A ``UserWarning`` of sendmap's own
    code (e.g. "figure helper process failed; drawing here") is a message for the user: it becomes a run warning
    (:meth:`Context.warn`, code ``"python_warning"``). Only the display is replaced: the warning filters stay, so
    ``python -W error`` (or pytest's ``-W error::RuntimeWarning``) still turns them into errors.
    """
    import warnings

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the sendmap package (this is engine/)
    counts: dict = {}
    lock = threading.Lock()

    def count(message, category, filename, lineno, file=None, line=None):
        fname = os.path.abspath(str(filename))
        if fname.startswith(pkg) and issubclass(category, UserWarning):
            ctx.warn(str(message), "python_warning")
            return
        where = (os.path.relpath(fname, os.path.dirname(pkg)) if fname.startswith(pkg)
                 else "/".join(fname.split(os.sep)[-2:]))
        key = f"{category.__name__}: {(str(message).splitlines() or [''])[0][:200]} ({where}:{lineno})"
        with lock:
            counts[key] = counts.get(key, 0) + 1

    with warnings.catch_warnings():  # restores the display (and the filters) afterwards
        warnings.showwarning = count
        try:
            yield
        finally:
            if counts and ctx.stage:
                internal = dict(ctx.group.attrs.get("internal_warnings", {}))
                internal[ctx.stage] = counts
                with contextlib.suppress(OSError):
                    set_attrs(ctx.group, internal_warnings=internal)
