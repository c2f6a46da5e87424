"""The report stage: tables (CSV) and figures (PNG + PDF) from the result store.

Size: one concern, the figures' scheduling (which to redraw, their helper processes, the early send of the
classify stage's maps); the plotting itself is in :mod:`sendmap.report.figures`.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from .tables import dose_text, write_tables  # noqa: F401 - (write_report writes them; dose_text: figure captions)


def figure_specs(group, n: int, window=None) -> list[tuple[str, str, tuple, dict]]:
    """Every figure of the report as ``(name, plotting function of .figures, args, kwargs)``, the most expensive
    first, with its inputs read from the result store ``group`` (``n``: the Q exponent of I·Q^n; ``window``: the
    (low, high) Q range in 1/Å where the SRO peak is sought, marked on the profiles). Nothing is drawn here."""
    dose = dose_text(group.attrs.get("dose"))
    step = float(group.attrs["calibration"]["scan_step_nm"])
    cls = np.asarray(group["maps/class"])
    peak = np.asarray(group["maps/peak_q"])
    q = np.asarray(group["profiles/q"])
    mean = np.asarray(group["statistics/class_mean_iqn"])
    sem = np.asarray(group["statistics/class_sem_iqn"])
    classes = group.attrs.get("statistics", {}).get("classes", {})
    fits = {name: {"mu": c["fit_mu"], "sigma": c["fit_sigma"], "count": c["count_with_peak"],
                   "amplitude": c.get("fit_amplitude")} for name, c in classes.items() if "fit_mu" in c}
    mixtures = [{"region": r["region"], "n": r["positions_with_peak"], **{k: r["mixture"][k] for k in ("weight", "mean", "sigma")},
                 "err_median": r.get("peak_q_err_median")}
                for r in group.attrs.get("statistics", {}).get("regions", []) if r.get("mixture")]
    present = [k for k in range(len(CLASS_NAMES)) if np.isfinite(mean[k]).any()]
    profiles = {CLASS_NAMES[k]: mean[k] for k in present}
    sems = {CLASS_NAMES[k]: sem[k] for k in present}
    try:
        from ..science.phases import reference_ticks

        ticks = reference_ticks(["LiF", "Li2O", "Li (bcc)", "Cu", "Li2CO3"], q_max=float(q[-1]), min_intensity=20.0)
    except Exception:  # the phase library is optional for figures
        ticks = None
    # the fits' bin width (their amplitudes are counts per such bin): the histograms are drawn on it
    bin_width = float(dict(dict(group.attrs.get("config") or {}).get("statistics") or {}).get("bin_width") or 0.0025)
    bf = np.asarray(group["features/virtual_bf"])
    adf = np.asarray(group["features/virtual_adf"])
    return [
        ("overview", "plot_overview", (peak, cls, CLASS_NAMES, q, profiles, fits, n, step, dose),
         dict(bf=bf, reference_ticks=ticks, sem=sems, window=window, mixtures=mixtures or None, bin_width=bin_width)),
        *_map_specs(peak, cls, step, dose),
        ("histograms", "plot_histograms", (peak, cls, CLASS_NAMES, fits, dose),
         dict(mixtures=mixtures or None, bin_width=bin_width)),
        ("class_profiles", "plot_class_profiles", (q, profiles, n, dose),
         dict(reference_ticks=ticks, sem=sems, window=window)),
        ("virtual_images", "plot_virtual_images", (bf, adf, step, dose), {}),
    ]


def _map_specs(peak, cls, step: float, dose) -> list[tuple[str, str, tuple, dict]]:
    """The specs of :data:`EARLY_FIGURES` (``peak``: maps/peak_q in 1/Å, ``cls``: maps/class, ``step``: the scan
    step in nm, ``dose``: the caption's dose text), as :func:`figure_specs` lists them."""
    return [("peak_map", "plot_peak_map", (peak, step, dose), {}),
            ("class_map", "plot_class_map", (cls, CLASS_NAMES, step, dose), {})]


EARLY_FIGURES = ("peak_map", "class_map")
"""Figures drawn from the classify stage's maps alone (maps/peak_q, maps/class, the calibration's scan step and
the dose): :func:`send_early_figures` sends them to the figure helpers as soon as that stage has written them,
so they are drawn while statistics and the report's tables run."""

EARLY_FIGURE_STAGE = "classify"
"""The stage after which :func:`send_early_figures` is called (it writes every input of :data:`EARLY_FIGURES`)."""


def early_figure_specs(group) -> list[tuple[str, str, tuple, dict]]:
    """The specs of :data:`EARLY_FIGURES` from the result store ``group``, equal to those of
    :func:`figure_specs` (the same arrays and numbers, so the same digests)."""
    return _map_specs(np.asarray(group["maps/peak_q"]), np.asarray(group["maps/class"]),
                      float(group.attrs["calibration"]["scan_step_nm"]), dose_text(group.attrs.get("dose")))


def send_early_figures(group, out_dir: Path, formats: tuple, helpers: "FigureHelpers | None",
                       reuse: bool = True) -> list[str]:
    """Send those of :data:`EARLY_FIGURES` that must be drawn (:func:`figures_to_draw`) to ``helpers`` (if
    started and not yet sent their figures), after removing them from the figure manifest (a run killed while
    they are drawn must not leave a new file under an old digest). :func:`write_figures` later sends only the
    figures whose digests differ from those sent here, and collects these with the rest. Returns the names
    sent."""
    if helpers is None or not len(helpers):
        return []
    fdir = Path(out_dir) / "figures"
    todo, digests = figures_to_draw(early_figure_specs(group), fdir, tuple(formats), reuse)
    if not todo:
        return []
    names = [spec[0] for spec in todo]
    write_figure_manifest(fdir, {k: v for k, v in _read_manifest(fdir).items() if k not in names})
    helpers.send_early(todo, str(fdir), tuple(formats), {name: digests[name] for name in names})
    return names


def write_figures(group, out_dir: Path, n: int, formats=("png", "pdf"), window=None, processes: int = 2,
                  reuse: bool = True, helpers: "FigureHelpers | None" = None, meanwhile=None) -> list[Path]:
    """Every figure of the report into ``<out_dir>/figures`` (see :func:`render_figures` for ``processes`` and
    ``meanwhile``, which is called once in any case).

    With ``reuse``, a figure whose inputs (every array and number it is drawn from), formats, and drawing code
    (the figure modules, sendmap and matplotlib versions) are those of the files already there is not drawn again
    (:func:`figures_to_draw`): after a classification change the virtual images stay as they are.
    """
    fdir = Path(out_dir) / "figures"
    sent = getattr(helpers, "report", None)  # (send_report_figures: sent when statistics ended)
    if sent is not None and sent["request"] == (n, tuple(formats), window, reuse):
        names, digests, redo = sent["names"], sent["digests"], sent["redo"]
        drawn = collect_figures(helpers, sent["specs"], fdir, tuple(formats), meanwhile)
    else:
        if sent is not None:  # sent for other settings (not the pipeline's case): their files are drawn again here
            helpers.report = None
            with contextlib.suppress(Exception):
                helpers.collect()
        specs, digests, redo, todo = _report_todo(group, fdir, n, tuple(formats), window, reuse, helpers)
        names = [spec[0] for spec in specs]
        drawn = render_figures(todo, fdir, tuple(formats), processes=processes, helpers=helpers, meanwhile=meanwhile)
    write_figure_manifest(fdir, digests)
    kept = [fdir / f"{name}.{fmt}" for name in names if name not in redo for fmt in formats]
    return drawn + kept


def _report_todo(group, fdir: Path, n: int, formats: tuple, window, reuse: bool, helpers) -> tuple:
    """(every figure's spec, {name: digest}, the names to redraw, the specs to draw now: those not sent early)
    for :func:`write_figures`; writes the figure manifest without the figures to redraw."""
    specs = figure_specs(group, n, window)
    todo, digests = figures_to_draw(specs, fdir, formats, reuse)
    redo = {spec[0] for spec in todo}
    # first forget the figures about to be redrawn: a run killed while drawing must not leave a new file under
    # an old digest (which a later run with the old inputs would wrongly keep)
    write_figure_manifest(fdir, {k: v for k, v in digests.items() if k not in redo})
    early = getattr(helpers, "early", {})  # (send_early_figures: being drawn already)
    return specs, digests, redo, [spec for spec in todo if early.get(spec[0]) != digests[spec[0]]]


REPORT_FIGURE_STAGE = "statistics"
"""The stage after which :func:`send_report_figures` is called: it writes the last inputs of every figure (the
report stage itself writes only tables)."""


def send_report_figures(group, out_dir: Path, cfg, helpers: "FigureHelpers | None", reuse: bool = True) -> list[str]:
    """Send the report's figures that must be drawn to ``helpers`` as soon as :data:`REPORT_FIGURE_STAGE` has
    written their inputs, so that they are drawn while the pipeline ends that stage and the report stage starts
    and writes its tables: :func:`write_figures` (with the same ``helpers`` and settings) then only collects
    them. Nothing is sent where the helpers were sent their figures or closed, or where nothing is to be drawn.
    Returns the names of the figures sent (those of :func:`send_early_figures` not among them)."""
    if helpers is None or not len(helpers) or not cfg.output.figures:
        return []
    fdir, formats = Path(out_dir) / "figures", tuple(cfg.output.formats)
    n, window = cfg.profiles.n, cfg.peaks.window
    specs, digests, redo, todo = _report_todo(group, fdir, n, formats, window, reuse, helpers)
    if not todo and not helpers.early_specs:  # nothing to draw: the report draws nothing either
        return []
    theirs = _split_formats(todo, formats) if len(helpers) > 1 else todo
    helpers.send(_share(theirs, len(helpers)), str(fdir), formats)
    helpers.report = {"request": (n, formats, window, reuse), "names": [spec[0] for spec in specs],
                      "digests": digests, "redo": redo, "specs": theirs}
    return [spec[0] for spec in todo]


FIGURE_MANIFEST = ".figures.json"
"""In ``<out_dir>/figures``: the input digest of every figure there (see :func:`figures_to_draw`)."""


def _figure_digest(spec, formats: tuple) -> str:
    """SHA-256 of everything a figure depends on: its plotting function and arguments (arrays by content), the
    formats, the source of the figure modules (every module of :mod:`sendmap.report` but this one), and the sendmap
    and matplotlib versions."""
    import hashlib
    import pickle

    from .. import __version__
    from . import __file__ as _pkg

    h = hashlib.sha256()
    h.update(pickle.dumps((spec, formats, __version__, _matplotlib_version()), protocol=5))
    for path in sorted(p for p in Path(_pkg).parent.glob("*.py") if p.name != "build.py"):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _matplotlib_version() -> str:
    """matplotlib's installed version (from its package metadata: the main process, whose figures the helpers draw,
    does not import matplotlib), looked up once per process: ~4 ms a lookup, eight figure digests per re-run."""
    from importlib.metadata import version

    return version("matplotlib")


def figure_digests(specs, formats: tuple) -> dict[str, str]:
    """{name: digest} of every figure of ``specs`` (see :func:`_figure_digest`)."""
    return {spec[0]: _figure_digest(spec, formats) for spec in specs}


def figures_to_draw(specs, fdir: Path, formats: tuple, reuse: bool = True) -> tuple[list, dict]:
    """(specs of the figures that must be drawn, {name: digest} of all): a figure is kept where ``reuse``, its
    digest equals the manifest's and every one of its files exists."""
    digests = figure_digests(specs, formats)
    old = _read_manifest(fdir) if reuse else {}
    todo = [spec for spec in specs if old.get(spec[0]) != digests[spec[0]]
            or not all((Path(fdir) / f"{spec[0]}.{fmt}").exists() for fmt in formats)]
    return todo, digests


def _read_manifest(fdir: Path) -> dict:
    """{name: digest} of the figure manifest in ``fdir`` ({} where there is none or it cannot be read)."""
    import json

    try:
        old = json.loads((Path(fdir) / FIGURE_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def write_figure_manifest(fdir: Path, digests: dict) -> None:
    import json

    from ..engine.store import write_text_atomic

    Path(fdir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(fdir) / FIGURE_MANIFEST, json.dumps(digests, indent=1, sort_keys=True) + "\n")


def _render(specs, fdir: str, formats: tuple) -> list[str]:
    """Draw and save figures (a module-level function, so a spawned process can run it). Nothing to draw imports
    nothing (matplotlib costs ~0.6 s CPU: the main process, whose figures the helpers draw, needs none)."""
    if not specs:
        return []
    from . import figures as F

    out = []
    for spec in specs:
        name, func, args, kwargs = spec[:4]
        fmts = tuple(f for f in (spec[4] if len(spec) > 4 else formats) if f in formats)  # (a split spec's own)
        fig = getattr(F, func)(*args, **kwargs)
        out += [str(p) for p in F.save_figure(fig, Path(fdir) / name, fmts)]
    return out


FIGURE_COST = {"overview": 5.0, "overview.png": 2.9, "overview.pdf": 2.4}
"""Relative CPU cost of drawing a figure (build, PNG, PDF; others 1): the overview ≈ 1.07 s (build 0.18, PNG 0.40,
PDF 0.29 s on the 240 × 360 scan), the rest 0.18-0.26 s each on the 148 × 148 benchmark scan; ``name.fmt``: a
figure split by format (:data:`SPLIT_FIGURES`), built and saved in one format. Used to share the figures among the
helper processes."""

SPLIT_FIGURES = ("overview",)
"""Figures drawn as one spec per format where two or more processes draw (:func:`_split_formats`): each builds the
figure and saves one format, so the dearest figure's PNG and PDF are written at once (on a re-run the overview
alone set the report's wall time: 1.07 s; split, ~0.6 s, for 0.18 s more CPU)."""


def _split_formats(specs, formats: tuple) -> list:
    """``specs`` with each figure of :data:`SPLIT_FIGURES` replaced by one spec per format ((name, func, args,
    kwargs, (format,)))."""
    out = []
    for spec in specs:
        if spec[0] in SPLIT_FIGURES and len(spec) == 4 and len(formats) > 1:
            out += [(*spec, (fmt,)) for fmt in formats]
        else:
            out.append(spec)
    return out


def _cost(spec) -> float:
    """:data:`FIGURE_COST` of a spec (``name.fmt`` for a spec split by format)."""
    key = spec[0] if len(spec) < 5 or len(spec[4]) != 1 else f"{spec[0]}.{spec[4][0]}"
    return FIGURE_COST.get(key, FIGURE_COST.get(spec[0], 1.0))

_HELPER_CODE = "import sys; from sendmap.report.build import _serve; _serve(sys.argv[1] == 'warm')"


def _warm_up() -> None:
    """Import matplotlib and the figure module and draw a small figure to PNG and PDF in memory: the first use
    of the fonts and of fontTools costs ~0.3 s, paid while the helper waits for its figures."""
    import io

    from . import figures as F, savefig

    fig = F.plot_histograms(np.array([[0.3, 0.31]]), np.array([[1, 1]]), ["crystal", "sei_type1"], {}, "warm-up")
    with F.style_context():
        savefig._write_png(fig, io.BytesIO(), "warm-up")
        savefig._write_pdf(fig, io.BytesIO(), "warm-up")


def _draw_group(group, fdir: str, formats: tuple) -> tuple[str, object]:
    """("ok", saved paths) or ("error", the traceback): one group of specs, drawn here."""
    import traceback

    try:
        return "ok", _render(group, fdir, formats)
    except Exception:  # noqa: BLE001 - sent back to the main process, which draws the group itself
        return "error", traceback.format_exc()


def _draw_in_child(group, fdir: str, formats: tuple) -> tuple[int, int]:
    """(pid, read end of its pipe) of a child forked from this process that draws ``group`` and sends its
    :func:`_draw_group` result pickled through the pipe (:func:`_child_result`)."""
    import os
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw, send the result, leave without running the parent's exit handlers
        try:
            os.close(r)
            with os.fdopen(w, "wb") as fh:
                pickle.dump(_draw_group(group, fdir, formats), fh)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _child_result(child: tuple[int, int]) -> tuple[str, object]:
    """The :func:`_draw_group` result of a child of :func:`_draw_in_child` (waited for)."""
    import os
    import pickle

    pid, r = child
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    return pickle.loads(data) if data else ("error", f"figure process {pid} died (wait status {status})")


def _serve(warm: bool) -> None:
    """Main of a figure helper process (:class:`FigureHelpers`): warm up (``warm``), read pickled messages on
    stdin: any number of ("early", specs, folder, formats), each drawn here at once, then (groups of specs,
    folder, formats): draw group 0 here and every other non-empty group in a forked child (no second
    matplotlib import: ~1 s CPU saved per group); write the list of each :func:`_draw_group` result, the early
    ones first, then the groups in order, pickled to stdout."""
    import os
    import pickle

    if warm:
        _warm_up()
    pending = []  # a result, or a child drawing it
    msg = pickle.load(sys.stdin.buffer)
    while len(msg) == 4 and msg[0] == "early":
        pending.append(_draw_group(*msg[1:]))  # (here: a forked child costs ~0.15-0.3 s more CPU)
        msg = pickle.load(sys.stdin.buffer)
    groups, fdir, formats = msg
    pending += [_draw_in_child(group, fdir, formats) if group else ("ok", []) for group in groups[1:]]
    first = [_draw_group(groups[0], fdir, formats)] if groups else []
    n_early = len(pending) - max(len(groups) - 1, 0)
    results = [p if isinstance(p[0], str) else _child_result(p) for p in pending]
    results = results[:n_early] + first + results[n_early:]
    pickle.dump(results, sys.stdout.buffer)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # without the interpreter's teardown (~0.1 s with matplotlib loaded), for which the main process waits


def _fork_helpers() -> bool:
    """Whether a helper forks its extra drawers (Linux: fork after importing matplotlib's Agg and PDF backends is
    safe there; elsewhere one process per drawer, as multiprocessing's own default of spawn suggests)."""
    import os

    return sys.platform.startswith("linux") and hasattr(os, "fork")


class FigureHelpers:
    """Helper Python processes that draw the report's figures, ``n`` at a time, started early (e.g. when
    classification starts): a helper imports matplotlib and (``warm``) warms its fonts (~1 s CPU) while the main
    process classifies, then draws the figures it is sent. On Linux one helper process does this and forks the
    other ``n`` − 1 drawers once it has the figures (:func:`_serve`); elsewhere ``n`` processes each import
    matplotlib. Plain ``python -c`` subprocesses fed pickled specs on stdin (multiprocessing would re-import the
    caller's main script). ``close()`` ends any not used."""

    def __init__(self, n: int = 2, warm: bool = True):
        import subprocess

        self.n = n
        self._sent: list = []
        self.early: dict = {}
        """{name: digest} of the figures sent by :meth:`send_early` (drawn by the first helper)."""
        self.early_specs: list = []
        """Their specs (drawn by the caller where the helper fails)."""
        self.report: dict | None = None
        """What :func:`send_report_figures` sent (the request, figure names, digests, names to redraw, specs)."""
        self._writer = None  # the thread writing the first helper's figures after early ones (send)
        self.procs = [subprocess.Popen([sys.executable, "-c", _HELPER_CODE, "warm" if warm else "cold"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                      for _ in range(1 if _fork_helpers() else n)]

    def __len__(self) -> int:
        """How many groups of figures they draw at once (0 once sent or closed)."""
        return self.n if self.procs else 0

    def send_early(self, specs, fdir: str, formats: tuple, digests: dict) -> None:
        """Send ``specs`` (figures whose inputs are final, with their {name: digest}) to the first helper, which
        draws them at once (after its warm-up); their paths come first out of :meth:`collect`. Before
        :meth:`send`; nothing where the helpers were sent their figures or closed."""
        import pickle

        if not self.procs or not specs:
            return
        proc = self.procs[0]
        try:
            proc.stdin.write(pickle.dumps(("early", list(specs), fdir, formats)))
            proc.stdin.flush()
        except OSError:  # it died early: its error comes out of collect()
            pass
        self.early.update(digests)
        self.early_specs += list(specs)

    def send(self, groups, fdir: str, formats: tuple) -> None:
        """Send the ``len(self)`` groups of specs (each helper takes its groups, once)."""
        import pickle

        self._sent, self.procs = self.procs, []
        per_proc = [list(groups)] if len(self._sent) == 1 else [[g] for g in groups]
        for i, (proc, mine) in enumerate(zip(self._sent, per_proc)):
            data = pickle.dumps((mine, fdir, formats))
            if i == 0 and self.early_specs:  # it may be drawing them still: written by a thread (a pipe holds
                # 64 kB; the overview's arrays are more), so that the caller goes on (the tables) meanwhile
                import threading

                self._writer = threading.Thread(target=_write_and_close, args=(proc, data), daemon=True)
                self._writer.start()
            else:
                _write_and_close(proc, data)

    def collect(self) -> list[list[str]]:
        """Each group's saved paths, in the order sent, those of :meth:`send_early` first (RuntimeError if one
        failed)."""
        import pickle

        out = []
        self._join_writer()
        procs, self._sent = self._sent, []
        for i, proc in enumerate(procs):
            res, err = proc.communicate()
            results = pickle.loads(res) if proc.returncode == 0 else [("error", err.decode(errors="replace"))]
            failed = [payload for status, payload in results if status != "ok"]
            if failed:
                self.procs = procs[i + 1:]  # close() ends the others
                raise RuntimeError(str(failed[0])[-2000:])
            out += [payload for _, payload in results]
        return out

    def _join_writer(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self._join_writer()  # (a write to a killed helper fails at once)
        for proc in self.procs:
            proc.communicate()
        self.procs = []


def _write_and_close(proc, data: bytes) -> None:
    """Write ``data`` to a helper's stdin and close it (a helper that died early: its error comes out of
    :meth:`FigureHelpers.collect`)."""
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except OSError:
        pass
    proc.stdin = None  # sent and closed: communicate() must not flush it


FIGURE_HELPER_STAGES = ("classify", "statistics", "report")
"""When one of these stages runs, the report's figure helper processes start (they import matplotlib and warm
their fonts, ~1 s CPU, while classification and statistics run in the main process)."""


def start_figure_helpers(cfg) -> FigureHelpers | None:
    """:class:`FigureHelpers` drawing two figures at a time, or None (no figures, one core, the synchronous
    scheduler, or the processes cannot start: the report then draws its figures itself)."""
    import os

    if not cfg.output.figures or cfg.compute.scheduler == "synchronous" or (os.cpu_count() or 1) < 2:
        return None
    try:
        return FigureHelpers(2)
    except OSError:
        return None


def likely_rerun(cfg, force: bool = False, until: str | None = None) -> bool:
    """Whether ``sendmap run`` is likely a re-run that goes on to the report without recomputing the heavy stages:
    the output's store is complete (its ``zarr.json``, read as JSON) with another config, no ``--force``, and the
    run goes on to the report. A guess, made before the pipeline's own imports."""
    import json
    from pathlib import Path

    from .. import STORE_NAME

    if force or until not in (None, FIGURE_HELPER_STAGES[-1]):
        return False
    try:
        meta = json.loads((Path(cfg.output_dir()) / STORE_NAME / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or attrs.get("status") != "complete":
        return False
    return attrs.get("config") != cfg.resolved()  # (the same config: most likely nothing to run at all)


def start_figure_helpers_for_rerun(cfg, force: bool = False, until: str | None = None,
                                   likely: bool | None = None) -> FigureHelpers | None:
    """:func:`start_figure_helpers` at once, before the pipeline's own imports (~0.25 s), where the run is likely
    to redraw figures without recomputing the heavy stages (:func:`likely_rerun`, or ``likely`` where the caller
    has asked it already). A guess: :func:`sendmap.pipeline.run_pipeline` ends these helpers where a stage before
    classification must run after all (they would compete with its blocks), and starts others when classification
    starts, as on a first run."""
    if likely is None:
        likely = likely_rerun(cfg, force, until)
    return start_figure_helpers(cfg) if likely else None


def _share(specs, n: int) -> list[list]:
    """Specs split into ``n`` groups of about equal cost (:data:`FIGURE_COST`), dearest first, each group in
    the order of ``specs``."""
    groups, load = [[] for _ in range(n)], [0.0] * n
    for i in sorted(range(len(specs)), key=lambda i: -_cost(specs[i])):
        j = load.index(min(load))
        groups[j].append(i)
        load[j] += _cost(specs[i])
    return [[specs[i] for i in sorted(g)] for g in groups]


def render_figures(specs, fdir: Path, formats: tuple, processes: int = 2, helpers: FigureHelpers | None = None,
                   meanwhile=None) -> list[Path]:
    """Draw every figure of ``specs``, shared by cost (:data:`FIGURE_COST`). With ``helpers`` (started early,
    :class:`FigureHelpers`) they draw them all; else with ``processes`` ≥ 2 (and ≥ 2 cores) one helper started
    now draws part while this process draws the rest (matplotlib holds the GIL: threads would not help). The
    files are the same, byte for byte, as drawing them all here; if a helper fails, its figures are drawn here
    (with a warning). ``meanwhile()`` (e.g. writing the tables) is called once the helpers have their figures,
    before this process draws or waits (first where there are no helpers)."""
    import os

    meanwhile = meanwhile or (lambda: None)

    def draw_here(group):
        meanwhile()
        return [Path(p) for p in _render(group, str(fdir), formats)]

    early = helpers is not None and len(helpers) and bool(getattr(helpers, "early_specs", None))
    if not specs and not early:  # nothing to draw: the helpers (if any) are not needed
        return draw_here([])
    mine = []
    if helpers is None or not len(helpers):
        if processes < 2 or (os.cpu_count() or 1) < 2 or len(specs) < 2:
            return draw_here(specs)
        mine, theirs = _share(_split_formats(specs, formats), 2)
        try:
            helpers = FigureHelpers(1, warm=False)
        except OSError:  # no process can be started: draw them all here
            return draw_here(specs)
    else:
        theirs = _split_formats(specs, formats) if len(helpers) > 1 else specs
    helpers.send(_share(theirs, len(helpers)), str(fdir), formats)
    return collect_figures(helpers, theirs, fdir, formats, meanwhile, mine)


def collect_figures(helpers: "FigureHelpers", theirs, fdir: Path, formats: tuple, meanwhile=None,
                    mine=()) -> list[Path]:
    """After ``helpers`` were sent ``theirs`` (specs): call ``meanwhile()``, draw ``mine`` here, and collect the
    helpers' files (those of :meth:`FigureHelpers.send_early` with them); if a helper failed, draw its figures
    here (with a warning)."""
    (meanwhile or (lambda: None))()
    drawn = _render(list(mine), str(fdir), formats)
    try:
        drawn += [p for group in helpers.collect() for p in group]
    except Exception as exc:  # a helper failed: draw its figures here (and say so, once)
        import warnings

        helpers.close()
        warnings.warn(f"figure helper process failed ({str(exc).strip().splitlines()[-1:]}); drawing here")
        drawn += _render(list(getattr(helpers, "early_specs", [])) + list(theirs), str(fdir), formats)
    return [Path(p) for p in drawn]


def write_report(group, out_dir: Path, cfg, log, reuse: bool = True, helpers: FigureHelpers | None = None) -> None:
    paths: list = []
    if cfg.output.figures:
        # the tables are written while the helper processes draw (a helper draws half the figures, except where the
        # user asked for one process)
        paths += write_figures(group, out_dir, cfg.profiles.n, tuple(cfg.output.formats), window=cfg.peaks.window,
                               processes=1 if cfg.compute.scheduler == "synchronous" else 2, reuse=reuse,
                               helpers=helpers, meanwhile=lambda: paths.extend(write_tables(group, out_dir)))
    else:
        paths += write_tables(group, out_dir)
    log(f"[sendmap] report: {len(paths)} files in {out_dir}/figures and {out_dir}/tables")
