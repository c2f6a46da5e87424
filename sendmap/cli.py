"""The ``sendmap`` command line: run, batch, synth, calibrate, info, --version.

Bad input or config ends with a one-paragraph message on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import SendmapInputError

EXIT_BAD_INPUT = 2


def _cmd_run(args) -> int:
    from .config import load_config
    from .report.build import start_figure_helpers_for_rerun

    cfg = load_config(args.config, args.set)
    if args.no_progress:
        cfg.compute.progress = False
    # on a likely re-run from classification on, the figure helpers warm up while the pipeline's modules import
    helpers = start_figure_helpers_for_rerun(cfg, args.force, args.until)
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
    if summary.get("warnings"):
        n = len(summary["warnings"])
        print(f"[sendmap] {n} warning{'s' if n > 1 else ''}, listed under 'warnings' in {out / 'summary.json'}")
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

    return p


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(synth_arguments="synth" in args_in)
    args = parser.parse_args(args_in)
    try:
        return int(args.func(args) or 0)
    except SendmapInputError as exc:
        print(f"sendmap: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sendmap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
