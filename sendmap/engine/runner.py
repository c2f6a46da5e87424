"""The runner: the stages of a stage graph (:data:`sendmap.pipeline.STAGES`) in order, each one whose cache key changed
(and every one after it), under the output lock, with timing, warnings, resume records and the summary.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..config import Config
from ..report.build import (EARLY_FIGURE_STAGE, FIGURE_HELPER_STAGES, REPORT_FIGURE_STAGE, send_early_figures,
                             send_report_figures, start_figure_helpers)
from ..stages.settings import scan_step_nm
from .context import Context, python_warnings_recorded
from .failures import _is_output_error, failure_text, mark_failed, output_error
from .lock import OutputBusyError, OutputLock
from .resume import clear_resume_record
from .store import annotate_arrays, array_metadata, now_iso, open_store, set_attrs, write_coordinates, write_json_atomic


def stage_keys(cfg: Config, input_fp: dict, stages) -> dict[str, dict]:
    """Cache key of every stage of ``stages``: sendmap version + the stage's revision + its config sections (as its
    ``key_sections`` adjusts them) + the digest of the code it can run (:func:`sendmap.engine.codehash.
    stage_code_digest`) + the previous stage's key."""
    from .codehash import stage_code_digest

    keys = {}
    prev = json.dumps(input_fp, sort_keys=True)
    for st in stages:
        sections = {s: cfg.section(s) for s in st.sections}
        if st.key_sections is not None:
            sections = st.key_sections(cfg, sections)
        blob = json.dumps({"stage": st.name, "version": __version__, "revision": st.revision, "sections": sections,
                           "code": stage_code_digest(st.run.__name__, st.run.__module__), "previous": prev},
                          sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        keys[st.name] = {"key": key, "sections": sections}
        prev = key
    return keys


def run_pipeline(cfg: Config, stages, force: bool = False, log: Callable[[str], None] = print, until: str | None = None,
                 figure_helpers=None) -> dict:
    """Run every stage of ``stages`` (a tuple of :class:`~sendmap.engine.context.Stage`, in order) whose cache key
    changed (all with ``force``); return the summary dict.

    ``until``: stop after that stage. Its outputs are kept (and reused by the next run); the store stays
    ``status: partial`` and no ``summary.json`` is written, since the results are not complete.
    ``figure_helpers``: :class:`~sendmap.report.build.FigureHelpers` the caller started early
    (:func:`~sendmap.report.build.start_figure_helpers_for_rerun`); used if the first stage to run is one of
    :data:`~sendmap.report.build.FIGURE_HELPER_STAGES`, else ended at once; ended in any case when the run ends.
    """
    out_dir = cfg.output_dir()
    try:
        from ..stages.input import preflight

        dataset, input_info = preflight(cfg)
        if out_dir.exists() and not out_dir.is_dir():
            from ..errors import SendmapOutputError

            raise SendmapOutputError(f"output.dir {out_dir} is a file, not a folder: set output.dir to a folder "
                                     f"(new or existing) for the results")
        for key, value in input_info["calibration_from_file"].items():
            log(f"calibration.{key} = {value:.6g} taken from the file (the config leaves it out)")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe = out_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise output_error(exc, out_dir, None) from None
        try:
            return _run_locked(cfg, stages, out_dir, dataset, input_info, force, log, until, figure_helpers)
        except OSError as exc:
            if _is_output_error(exc, out_dir):
                raise output_error(exc, out_dir, getattr(exc, "sendmap_stage", None)) from None
            raise
    except OutputBusyError:
        raise  # another run's folder: not ours to mark
    except BaseException as exc:
        mark_failed(out_dir, exc)
        raise
    finally:
        if figure_helpers is not None:
            figure_helpers.close()  # (nothing left to end where they drew the figures)


def _first_stage_to_run(stages, keys: dict, done: dict, force: bool) -> str | None:
    """The first stage whose key differs from the finished one's (every stage after it runs too)."""
    return next((st.name for st in stages if force or (done.get(st.name) or {}).get("key") != keys[st.name]["key"]),
                None)


def _run_locked(cfg: Config, stages, out_dir: Path, dataset, input_info: dict, force: bool, log, until,
                figure_helpers=None) -> dict:
    with OutputLock(out_dir):
        summary_path = out_dir / "summary.json"
        summary_path.unlink(missing_ok=True)  # a stale summary must not stand for an unfinished run
        group = open_store(out_dir, mode="a")
        keys = stage_keys(cfg, {"fingerprint": input_info["fingerprint"], "bytes": input_info["bytes"]}, stages)
        done = dict(group.attrs.get("stages", {}))
        set_attrs(group, sendmap_version=__version__, config=cfg.resolved(), input=input_info, status="running",
                  created=group.attrs.get("created", now_iso()), error=None, failed_stage=None, failed_at=None)
        ctx = Context(cfg, out_dir, group, dataset, input_info, log)
        # warnings of the stages that may be reused stay with their results; those of a run's preamble do not
        ctx.warnings = [w for w in group.attrs.get("warnings", []) if isinstance(w, dict) and w.get("stage") in done]
        if figure_helpers is not None and _first_stage_to_run(stages, keys, done, force) in FIGURE_HELPER_STAGES:
            ctx.figure_helpers = figure_helpers
        elif figure_helpers is not None:  # a heavier stage runs first: they would compete with its blocks
            figure_helpers.close()
        try:
            return _run_stages(ctx, stages, keys, done, force, until)
        finally:
            if ctx.figure_helpers is not None:
                ctx.figure_helpers.close()  # unused (e.g. --until) or failed: end them


def _run_stages(ctx: Context, stages, keys: dict, done: dict, force: bool, until) -> dict:
    cfg, out_dir, group, log = ctx.cfg, ctx.out_dir, ctx.group, ctx.log
    summary_path = out_dir / "summary.json"
    reused, timing = [], {}
    first, invalid = _first_stage_to_run(stages, keys, done, force), False
    for st in stages:
        if not invalid and st.name != first:
            reused.append(st.name)
            timing[st.name] = 0.0
            if st.name == until:
                break
            continue
        if not invalid:  # this stage and every later one are recomputed: their old warnings go
            later = {s.name for s in stages[[s.name for s in stages].index(st.name):]}
            ctx.warnings = [w for w in ctx.warnings if w.get("stage") not in later]
            internal = {k: v for k, v in dict(group.attrs.get("internal_warnings", {})).items() if k not in later}
            set_attrs(group, warnings=ctx.warnings, internal_warnings=internal)
        invalid = True  # every later stage reruns too
        done.pop(st.name, None)
        set_attrs(group, stages=done)
        log(f"[sendmap] {st.name}: {st.doc}")
        if st.name in FIGURE_HELPER_STAGES and ctx.figure_helpers is None:
            ctx.figure_helpers = start_figure_helpers(cfg)
        ctx.stage_key, ctx.resume, ctx.stage_info, ctx.stage = keys[st.name]["key"], not force, {}, st.name
        t0 = time.perf_counter()
        try:
            with python_warnings_recorded(ctx):
                st.run(ctx)
        except BaseException as exc:
            with contextlib.suppress(AttributeError):
                exc.sendmap_stage = st.name  # (OSError: the output error's message; any: failed_stage)
            try:
                set_attrs(group, status="failed", error=failure_text(exc), failed_stage=st.name)
            except OSError:  # e.g. the disk is full: the status stays "running", which is not complete either
                pass
            raise
        finally:
            ctx.stage = None
        _send_figures(ctx, st.name, force, until in (None, stages[-1].name))
        metas = array_metadata(Path(ctx.store_path))  # (one scan of the store's metadata for both)
        annotate_arrays(Path(ctx.store_path), metas=metas)  # dimension names, units, long names (sendmap/schema.py)
        write_coordinates(group, Path(ctx.store_path), scan_step_nm(cfg), metas=metas)
        timing[st.name] = round(time.perf_counter() - t0, 3)
        done[st.name] = {"key": keys[st.name]["key"], "config": keys[st.name]["sections"], "completed": now_iso(),
                         "seconds": timing[st.name], "sendmap_version": __version__, **ctx.stage_info}
        set_attrs(group, stages=done)
        clear_resume_record(out_dir, st.name)  # only now: a kill before this line resumes from the record
        if st.name == until:
            break
    summary = build_summary(group, timing, reused)
    if until and until != stages[-1].name:
        set_attrs(group, status="partial")
        return summary
    summary["status"] = "complete"
    write_json_atomic(summary_path, summary)
    set_attrs(group, status="complete", completed=now_iso(), error=None, failed_stage=None, failed_at=None)
    return summary


def _send_figures(ctx: Context, stage: str, force: bool, to_report: bool) -> None:
    """When the stage ``stage`` has written its outputs (before their metadata are annotated: ~0.05 s that the
    figure helpers need not wait for) and the run goes on to the report: after classify, the figures of its maps
    alone (drawn while statistics runs); after statistics, the report's other figures (drawn while the report
    writes its tables)."""
    if ctx.figure_helpers is None or not to_report:
        return
    formats = tuple(ctx.cfg.output.formats)
    if stage == EARLY_FIGURE_STAGE:
        send_early_figures(ctx.group, ctx.out_dir, formats, ctx.figure_helpers, reuse=not force)
    elif stage == REPORT_FIGURE_STAGE:
        try:
            send_report_figures(ctx.group, ctx.out_dir, ctx.cfg, ctx.figure_helpers, reuse=not force)
        except Exception:  # noqa: BLE001 - the report stage reads the same inputs and reports the error there
            pass


def build_summary(group, timing: dict, reused: list) -> dict:
    """summary.json: classes, calibration, dose, layers, peaks, timing, the run's ``warnings`` (list of
    {"stage", "code", "message"}, see :meth:`Context.warn`) and ``internal_warnings`` (Python warnings raised
    inside sendmap's stages, counted: see :func:`python_warnings_recorded`)."""
    stats = group.attrs.get("statistics", {})
    calib = dict(group.attrs.get("calibration", {}))
    return {"warnings": list(group.attrs.get("warnings", [])),
            "internal_warnings": dict(group.attrs.get("internal_warnings", {})),
            "classes": stats.get("classes", {}),
            "calibration": {"q_pixel_size": calib.get("q_pixel_size"), "ellipse": calib.get("ellipse"),
                            "probe": calib.get("probe"), "masked_fraction": calib.get("masked_fraction"),
                            "descan": calib.get("descan"), "n_hot": calib.get("n_hot"), "n_dead": calib.get("n_dead")},
            "dose": group.attrs.get("dose"), "layers": stats.get("layers", {}), "regions": stats.get("regions", []), "peaks": group.attrs.get("peaks"),
            "timing_s": timing, "reused_stages": reused, "input": group.attrs.get("input"),
            "sendmap_version": __version__, "store": str(Path(group.store.root) if hasattr(group.store, "root") else "")}
