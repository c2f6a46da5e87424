"""CPU time of one stage alone (calibrate, classify, statistics, ...), on a copy of a finished store, and where it goes.

``python benchmarks/stage_cpu.py FOLDER STAGE [--set KEY=VALUE ...] [--reps N] [--profile] [--sort cumtime]
[--work DIR]``

FOLDER holds a ``config.yaml`` and the ``results/sendmap.zarr`` of a finished run (a bench folder after its first
run; only read). The store is copied to ``--work`` (default ``results/stage_cpu``; the calibrate stage reads the
detector data, so they are copied too: ~0.4 GB for the 128² bench file), the later stages' modules are imported and
one numba kernel run first (as in a whole run, where ingest's blocks have done both), then ``sendmap.stages.STAGE``
runs ``1 + N`` times in this process: run 0 pays what the stage pays in a whole run (its kernels loaded from numba's
cache, memory touched the first time), the others show the stage warm. Prints ``time.process_time`` (every thread)
and the wall time per run; on a shared machine compare CPU, alternating the versions. ``--profile``: cProfile of the
last run timed by ``time.thread_time`` (the main thread; ``--set compute.scheduler=synchronous`` runs block stages'
blocks there too).
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("stage")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="tottime", help="cProfile order (tottime, cumtime)")
    ap.add_argument("--work", type=Path, default=Path("results/stage_cpu"))
    args = ap.parse_args()

    import zarr

    from sendmap.config import load_config
    from sendmap.engine.context import Context
    from sendmap.engine.execute import LATER_STAGE_MODULES
    from sendmap.science.frames import frame_statistics

    work = args.work / args.folder.resolve().name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(args.folder / "results" / "sendmap.zarr", work / "sendmap.zarr")
    cfg = load_config(args.folder / "config.yaml", args.set)
    cfg.compute.progress = False
    g = zarr.open_group(str(work / "sendmap.zarr"), mode="r+")
    ctx = Context(cfg, work, g, None, {}, log=lambda s: None)
    for name in LATER_STAGE_MODULES:  # what a whole run has done by then
        importlib.import_module(name)
    frame_statistics(np.zeros((2, 4, 4), np.uint16), np.ones((4, 4), bool), np.ones((4, 4), bool))
    stage = getattr(importlib.import_module(f"sendmap.stages.{args.stage}"), f"stage_{args.stage}")
    prof = None
    for rep in range(1 + args.reps):
        prof = cProfile.Profile(time.thread_time) if args.profile and rep == args.reps else None
        c0, w0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        stage(ctx)
        if prof:
            prof.disable()
        print(f"run {rep}: cpu {time.process_time() - c0:.3f} s, wall {time.perf_counter() - w0:.3f} s", flush=True)
    if prof:
        pstats.Stats(prof, stream=sys.stdout).sort_stats(args.sort).print_stats(30)
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
