"""The ``sendmap`` command line: run, batch, synth, calibrate, info, --version.

Bad input or config ends with a one-paragraph message on stderr and exit code 2; a run that fails at any point
(bad config, bad input, a stage's error, Ctrl-C, SIGTERM) leaves its output folder with no summary.json and the
store marked ``status: failed``. Text goes out through the terminal's encoding: where it cannot show ±, Å, ⁻¹, ×,
→ ..., ASCII stand-ins are printed (:func:`ascii_text`). Python warnings (numpy, matplotlib) are not shown.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import SendmapInputError, Terminated

EXIT_BAD_INPUT = 2
EXIT_TERMINATED = 128 + signal.SIGTERM

ASCII_STAND_INS = {
    "±": "+/-", "Å": "A", "×": "x", "→": "->", "←": "<-", "−": "-", "–": "-", "—": "-", "µ": "u", "μ": "u",
    "σ": "sigma", "χ": "chi", "φ": "phi", "θ": "theta", "λ": "lambda", "Δ": "d", "·": "*", "≈": "~", "≤": "<=",
    "≥": ">=", "≠": "!=", "°": " deg", "²": "^2", "³": "^3", "⁻": "^-", "¹": "1", "⁰": "0", "⁴": "4", "⁵": "5",
    "⁶": "6", "⁷": "7", "⁸": "8", "⁹": "9", "…": "...", "‘": "'", "’": "'", "“": '"', "”": '"', "√": "sqrt",
    "∞": "inf", "█": "#", "▏": "|", "▎": "|", "▍": "|", "▌": "|", "▋": "|", "▊": "|", "▉": "|",
}
"""ASCII for the characters sendmap's messages use (tqdm's bar blocks too), where the terminal cannot show them."""


def ascii_text(text: str) -> str:
    """``text`` with :data:`ASCII_STAND_INS` replaced and anything else non-ASCII as ``?``
    (``"0.3294 ± 0.0051 1/Å, e⁻/Å²"`` → ``"0.3294 +/- 0.0051 1/A, e^-/A^2"``)."""
    out = []
    for i, ch in enumerate(text):
        if ord(ch) < 128:
            out.append(ch)
            continue
        rep = ASCII_STAND_INS.get(ch, "?")
        if ch in "¹⁰⁴⁵⁶⁷⁸⁹" and (i == 0 or text[i - 1] not in "⁻¹²³⁰⁴⁵⁶⁷⁸⁹"):
            rep = "^" + rep  # a superscript number on its own: Q⁴ → Q^4 (after ⁻ it follows "^-")
        out.append(rep)
    return "".join(out)


def _ascii_errors(exc: UnicodeEncodeError):
    """codecs error handler "sendmap_ascii": the characters a stream's encoding cannot encode, as ASCII."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    start = exc.start  # the run may start after a superscript the encoding could take (latin-1 has ¹²³)
    return ascii_text(exc.object[max(0, start - 1):exc.end])[len(ascii_text(exc.object[max(0, start - 1):start])):], \
        exc.end


codecs.register_error("sendmap_ascii", _ascii_errors)


def make_streams_safe(*streams) -> None:
    """Where a text stream's encoding (``PYTHONIOENCODING=ascii``, a C locale, a latin-1 terminal) cannot encode
    sendmap's characters (±, Å, ⁻¹, ×, →), switch its error handling to the ASCII stand-ins: every print, log
    line, error message and progress bar then comes out readable instead of ending in a UnicodeEncodeError."""
    for stream in streams or (sys.stdout, sys.stderr):
        enc = getattr(stream, "encoding", None) or "ascii"
        try:
            "±Å⁻¹×→".encode(enc)
            continue
        except (UnicodeEncodeError, LookupError):
            pass
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="sendmap_ascii")


@contextlib.contextmanager
def _quiet_python_warnings():
    """No numpy/matplotlib warning reaches the terminal: their display is dropped in this process (inside the
    stages they are counted in summary.json ``internal_warnings`` instead) and PYTHONWARNINGS=ignore is set for
    the worker processes it starts. The warning filters are not changed, and a ``python -W ...`` or
    PYTHONWARNINGS of the user's turns all this off (warnings shown as Python shows them)."""
    import warnings

    if sys.warnoptions or "PYTHONWARNINGS" in os.environ:
        yield
        return
    os.environ["PYTHONWARNINGS"] = "ignore"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda *a, **k: None
            yield
    finally:
        os.environ.pop("PYTHONWARNINGS", None)


def _raise_terminated(signum, frame):
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def _sigterm_ends_the_run():
    """SIGTERM (``kill``, a batch system's time limit) ends the run through the same path as Ctrl-C, so its
    output is marked failed, instead of the process vanishing mid-write with ``status: running``."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _output_dir_of_unloadable_config(config: str, overrides: list[str]) -> Path | None:
    """Where a config that does not validate would have written (its YAML's output.dir after the overrides,
    relative to its folder), to mark that output failed; None where that cannot be told."""
    import yaml

    from .config import _resolve, apply_overrides

    try:
        path = Path(config)
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for text in overrides:  # each that parses (the one at fault may be any of them)
            try:
                data = apply_overrides(data, [text])
            except SendmapInputError:
                pass
        out = (data.get("output") or {}).get("dir", "results")
        return _resolve(path.parent.resolve(), str(out)) if isinstance(out, (str, os.PathLike)) else None
    except Exception:  # noqa: BLE001 - unreadable, not YAML, not a mapping: nothing to mark
        return None


def _early_figure_helpers(args):
    """The report's figure helpers (:class:`sendmap.report.build.FigureHelpers`), started before the config is
    validated, where ``sendmap run`` looks like a re-run of a complete store (its output folder read from the YAML
    and the ``--set`` overrides alone: importing and validating the config takes ~0.3 s of the re-run's start);
    else None. A guess, confirmed or ended in :func:`_run_loaded`. The helpers import matplotlib and warm up its fonts
    (~1 s of CPU on the second core); on a re-run after a classification change they are otherwise the last thing
    the figures wait for."""
    if args.force or args.until not in (None, "report") or (os.cpu_count() or 1) < 2:
        return None
    try:
        import yaml

        path = Path(args.config)
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out = (data.get("output") or {}).get("dir", "results")
        for text in args.set or []:
            key, _, raw = text.partition("=")
            if key.strip() in ("output.figures", "compute.scheduler") or key.strip() == "output":
                return None  # (whether helpers draw at all: left to the validated config)
            if key.strip() == "output.dir":
                out = yaml.safe_load(raw)
        output = (data.get("output") or {})
        if output.get("figures") is False or (data.get("compute") or {}).get("scheduler") == "synchronous":
            return None
        out = Path(str(out)).expanduser()
        out = out if out.is_absolute() else path.parent / out  # (as Config.output_dir: the config's folder)
        meta = json.loads((out / "sendmap.zarr" / "zarr.json").read_text(encoding="utf-8"))
        if meta.get("attributes", {}).get("status") != "complete":
            return None
        from .report.build import FigureHelpers

        return FigureHelpers(2)
    except Exception:  # noqa: BLE001 - unreadable, not YAML, no store, no process: no early helpers
        return None


def _cmd_run(args) -> int:
    early = _early_figure_helpers(args)
    from .config import load_config

    cfg = None
    try:
        cfg = load_config(args.config, args.set)
        return _run_loaded(cfg, args, early)
    except BaseException as exc:
        if early is not None:
            early.close()
        out = cfg.output_dir() if cfg is not None else _output_dir_of_unloadable_config(args.config, args.set)
        if out is not None and out.is_dir() and not exc.__class__.__name__ == "OutputBusyError":
            from .engine.failures import mark_failed

            mark_failed(out, exc)
        raise


def _run_loaded(cfg, args, early=None) -> int:
    from .report.build import likely_rerun, start_figure_helpers_for_rerun

    if args.no_progress:
        cfg.compute.progress = False
    # on a likely re-run from classification on, the figure helpers warm up while the pipeline's modules import
    # (``early``: started before the config was read, _early_figure_helpers; kept where the config confirms it)
    rerun = likely_rerun(cfg, args.force, args.until)
    if early is not None and not (rerun and cfg.output.figures and cfg.compute.scheduler != "synchronous"):
        early.close()
        early = None
    helpers = early if early is not None else start_figure_helpers_for_rerun(cfg, args.force, args.until,
                                                                               likely=rerun)
    try:
        from .pipeline import run_pipeline
    except BaseException:
        if helpers is not None:
            helpers.close()
        raise
    summary = run_pipeline(cfg, force=args.force, until=args.until, figure_helpers=helpers)
    out = cfg.output_dir()
    if args.until:
        print(f"[sendmap] stopped after {args.until} (--until); timing {summary['timing_s']}")
        return 0
    print(f"[sendmap] done: {out / 'summary.json'}")
    if cfg.output.figures:
        print(f"[sendmap] figures: {out / 'figures'}")
    for name, c in summary["classes"].items():
        mu = c.get("fit_mu")
        extra = f", SRO peak {mu:.4f} ± {c['fit_sigma']:.4f} 1/Å" if mu is not None else ""
        print(f"  {name:12s} {c['count']:6d} positions{extra}")
    if summary["reused_stages"]:
        print(f"[sendmap] reused: {', '.join(summary['reused_stages'])}")
    warns = summary.get("warnings") or []
    if warns:
        print(f"[sendmap] {len(warns)} warning{'s' if len(warns) > 1 else ''} (summary.json 'warnings'):")
        for w in warns:
            print(f"  [{w.get('stage')}] {w.get('message')}")
    return 0


def _cmd_batch(args) -> int:
    from .batch import run_batch

    _, code = run_batch(Path(args.folder), args.set, force=args.force, out=Path(args.out) if args.out else None,
                        timeout=args.timeout)
    return code


def _cmd_info(args) -> int:
    from .info import describe

    print(json.dumps(describe(Path(args.path)), indent=1, default=str))
    return 0


def _cmd_synth(args) -> int:
    from .synth.make import synth_main

    return synth_main(args)


def _cmd_calibrate(args) -> int:
    from .calibrant import calibrate_file, format_report

    res = calibrate_file(args.file, args.phase, scan_shape=tuple(args.scan_shape) if args.scan_shape else None,
                         q_guess=args.q_guess, mask_file=args.mask, beam_energy_kv=args.beam_energy_kv,
                         detector_pixel_um=args.detector_pixel_um, n_sectors=args.sectors,
                         fit_drift=not args.no_drift)
    print(json.dumps(res, indent=1, ensure_ascii=False) if args.json else format_report(res))
    return 0


def _cmd_export(args) -> int:
    from .exports import export

    for f in export(args.result, args.to, args.out):
        print(f)
    return 0


def build_parser(synth_arguments: bool = True) -> argparse.ArgumentParser:
    """The argument parser. ``synth_arguments=False`` leaves out the options of ``synth`` (importing the
    synthesiser costs ≈ 1 s, a third of a re-run that reuses every stage)."""
    p = argparse.ArgumentParser(prog="sendmap", description="SEND / 4D-STEM maps of battery interfaces: SRO peaks and SEI classes.")
    p.add_argument("--version", action="version", version=f"sendmap {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="the whole job from a YAML config")
    r.add_argument("config", help="YAML config file")
    r.add_argument("--set", action="append", default=[], metavar="section.key=value", help="override a config key (repeatable)")
    r.add_argument("--force", action="store_true", help="recompute every stage")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--until", metavar="STAGE", default=None,
                   choices=["ingest", "calibrate", "profiles", "peaks", "classify", "statistics", "report"],
                   help="stop after this stage (its outputs are kept and reused by the next full run)")
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("batch", help="run every *.yaml config of a folder, continuing past failures",
                       description="Run every *.yaml config of FOLDER (sorted by name), each as its own `sendmap run` "
                                   "process, continuing past failures; print a table of what succeeded, failed (and "
                                   "why) and was reused, and write it as batch.csv and batch.json (with each run's log "
                                   "in logs/) into --out. Exit code 1 if any config failed, 2 if FOLDER holds none.")
    b.add_argument("folder", help="folder of YAML configs")
    b.add_argument("--set", action="append", default=[], metavar="section.key=value",
                   help="override a key in every config (repeatable)")
    b.add_argument("--force", action="store_true", help="recompute every stage of every config")
    b.add_argument("--out", default=None, metavar="DIR", help="where the table and logs go (default FOLDER/batch)")
    b.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a config's run after this long (it is then reported as failed)")
    b.set_defaults(func=_cmd_batch)

    s = sub.add_parser("synth", help="write a synthetic SEND dataset with ground truth and a config")
    if synth_arguments:
        from .synth.make import add_synth_arguments

        add_synth_arguments(s)
    s.set_defaults(func=_cmd_synth)

    c = sub.add_parser("calibrate", help="Q per pixel, centre and ellipse from the rings of a polycrystalline standard",
                       description="Measure Q per pixel (1/Å per px, Q = 1/d), the pattern centre and the elliptical "
                                   "distortion on the rings of a polycrystalline standard (gold by default), with each "
                                   "ring's residual. FILE: one pattern (TIFF, 2-D .npy) or any dataset sendmap reads "
                                   "(its mean pattern is used).")
    c.add_argument("file", help="calibration pattern or dataset")
    c.add_argument("--phase", default="au", help="standard, a phase of the library (default: au)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    c.add_argument("--scan-shape", nargs=2, type=int, metavar=("RY", "RX"), default=None,
                   help="scan shape, for raw formats that need it")
    c.add_argument("--q-guess", type=float, default=None, metavar="Q_PX",
                   help="first guess of Q per pixel (1/Å per px) if the automatic indexing needs help")
    c.add_argument("--mask", default=None, metavar="FILE", help="mask file (.npy/.tif/.png), nonzero = excluded pixel")
    c.add_argument("--beam-energy-kv", type=float, default=200.0, help="accelerating voltage, kV (default 200; "
                   "only reported, with the camera length)")
    c.add_argument("--detector-pixel-um", type=float, default=None,
                   help="physical detector pixel size, µm: also report the camera length")
    c.add_argument("--sectors", type=int, default=36, help="azimuthal sectors for the centre/ellipse fit (default 36)")
    c.add_argument("--no-drift", action="store_true",
                   help="one centre for every ring (default: ring centres may drift as c + k·r², as on a tilted "
                        "detector; the centre reported is the one at r = 0)")
    c.set_defaults(func=_cmd_calibrate)

    i = sub.add_parser("info", help="describe a dataset file or a result store")
    i.add_argument("path")
    i.set_defaults(func=_cmd_info)

    e = sub.add_parser("export", help="results as HyperSpy signals, a py4DSTEM-readable EMD file or a CSV table",
                       description="Write the maps (peak_q, peak_q_err, class) and profiles (iqn, mean) of a result "
                                   "folder with calibrated axes: --to hspy (one HyperSpy signal per array), emd (one "
                                   "EMD 1.0 file py4DSTEM/emdfile read), csv (one row per position).")
    e.add_argument("result", help="result folder (output.dir) or its sendmap.zarr")
    e.add_argument("--to", default="hspy", choices=["hspy", "zspy", "emd", "csv"])
    e.add_argument("--out", default=None, metavar="DIR", help="where the files go (default RESULT/export)")
    e.set_defaults(func=_cmd_export)

    return p


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(synth_arguments="synth" in args_in)
    make_streams_safe()
    args = parser.parse_args(args_in)
    try:
        with _quiet_python_warnings(), _sigterm_ends_the_run():
            return int(args.func(args) or 0)
    except SendmapInputError as exc:
        print(f"sendmap: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one paragraph
        return EXIT_BAD_INPUT
    except Terminated:
        print("sendmap: stopped by SIGTERM; the output is marked failed (finished stages are reused next time)",
              file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("sendmap: interrupted", file=sys.stderr)
        return 130


def _non_daemon_threads() -> bool:
    """Whether a thread other than the main one that the interpreter would wait for at exit is alive."""
    import threading

    return any(t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate())


def end_process(code: int):
    """End the process with exit status ``code`` as the interpreter would, without its teardown: flush stdout and
    stderr, run the ``atexit`` handlers (logging's, multiprocessing's, ...), then :func:`os._exit`. The teardown
    that is left out (clearing every module, freeing every object of numpy, numba, zarr and pydantic one by one)
    took 0.13-0.46 s of wall time at the end of a gmm re-run (0.2 s on the quiet 256² bench file, ~8 % of it); it
    writes nothing: every file sendmap writes is closed (and renamed into place) before its command returns. Where
    a non-daemon thread is still running, the normal exit waits for it instead (``sys.exit``)."""
    import atexit

    code = int(code or 0)
    if _non_daemon_threads():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):  # (a handler may have printed)
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run_command() -> None:
    """The ``sendmap`` command (console script, ``python -m sendmap.cli``): :func:`main` on the process's own
    arguments, then :func:`end_process` with its exit status (an uncaught exception exits as Python does)."""
    end_process(main())


if __name__ == "__main__":  # pragma: no cover
    run_command()
