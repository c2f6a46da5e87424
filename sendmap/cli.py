"""The ``sendmap`` command line: run, synth, info, --version.

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
    from .pipeline import run_pipeline

    cfg = load_config(args.config, args.set)
    if args.no_progress:
        cfg.compute.progress = False
    summary = run_pipeline(cfg, force=args.force, until=args.until)
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
    return 0


def _cmd_info(args) -> int:
    from .info import describe

    print(json.dumps(describe(Path(args.path)), indent=1, default=str))
    return 0


def _cmd_synth(args) -> int:
    from .synth.make import synth_main

    return synth_main(args)


def build_parser() -> argparse.ArgumentParser:
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

    s = sub.add_parser("synth", help="write a synthetic SEND dataset with ground truth and a config")
    from .synth.make import add_synth_arguments

    add_synth_arguments(s)
    s.set_defaults(func=_cmd_synth)

    i = sub.add_parser("info", help="describe a dataset file or a result store")
    i.add_argument("path")
    i.set_defaults(func=_cmd_info)

    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
